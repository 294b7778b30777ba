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


def _siblings(d: Mapping[str, Any]) -> str:
    """A sentence for the implementer's rules: the other implementations of the same code, when there are any."""
    return _about_siblings(d, "Other backends of the target ({names}) often implement what {lacks} lacks: read "
                              "them for the algorithm.")


def _siblings_where(d: Mapping[str, Any]) -> str:
    """Where those other implementations are: folders of the target's own tree."""
    return _about_siblings(d, "The target's other backends ({paths}) are in its own tree: read them for what "
                              "{lacks} lacks.")


def _about_siblings(d: Mapping[str, Any], sentence: str) -> str:
    """The sentence with the target's siblings ({names}, {paths}) and what its hot part lacks; "" without any."""
    siblings = d.get("siblings")
    if not isinstance(siblings, Mapping) or not siblings:
        return ""
    return sentence.format(names=", ".join(siblings), paths=", ".join(str(p) for p in siblings.values()),
                           lacks=d.get("hot_part") or "the code you change")
