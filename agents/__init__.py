"""The roles: researcher, competitor analyst, implementer, evaluator. Plain functions over plain data."""
