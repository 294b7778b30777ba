"""What the roles are told about the target, in the target's own words.

Every prompt word specific to a project (its language, what bounds it, its sibling backends) comes from
Target.describe(); nothing here names one. A target that says nothing gets neutral wording, so a Python or Rust
project is never told about another project's hardware.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Said when a target names nothing that bounds it: the general rule of a performance engineer.
GENERIC_BOUND = ("Respect the facts: a change aimed at what does not bound the measured workload (compute, memory "
                 "traffic, synchronization, I/O) cannot help much, however clever.")


def prompt_context(described: Mapping[str, Any] | None) -> dict[str, str]:
    """The template values {codebase, bound, siblings, siblings_where} for a target's describe() dict."""
    d = described or {}
    return {"codebase": codebase(d), "bound": str(d.get("bound") or GENERIC_BOUND).strip(),
            "siblings": _siblings(d), "siblings_where": _siblings_where(d)}


def codebase(d: Mapping[str, Any]) -> str:
    """"the C project lz4-block (LZ4's block compressor)": its language, name and own description."""
    language = str(d.get("language") or "").strip()
    name = str(d.get("name") or "").strip()
    about = str(d.get("about") or d.get("description") or "").strip().rstrip(".")
    text = " ".join(w for w in ("the", language, "project" if name else "code base", name) if w)
    return text + (f" ({about})" if about else "")


def _sibling_map(d: Mapping[str, Any]) -> Mapping[str, str]:
    siblings = d.get("siblings")
    return siblings if isinstance(siblings, Mapping) else {}


def _siblings(d: Mapping[str, Any]) -> str:
    """A sentence for the implementer's rules: the other implementations of the same code, when there are any."""
    siblings = _sibling_map(d)
    if not siblings:
        return ""
    lacks = d.get("hot_part") or "the code you change"
    return (f"Other backends of the target ({', '.join(siblings)}) often implement what {lacks} lacks: read them "
            "for the algorithm.")


def _siblings_where(d: Mapping[str, Any]) -> str:
    siblings = _sibling_map(d)
    if not siblings:
        return ""
    lacks = d.get("hot_part") or "the code you change"
    return (f"The target's other backends ({', '.join(str(p) for p in siblings.values())}) are in its own tree: read "
            f"them for what {lacks} lacks.")
