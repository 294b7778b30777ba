"""readfirst: read papers, forks and sibling backends first, then run measured experiments."""

__version__ = "0.1.0"
