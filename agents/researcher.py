"""The researcher: reads papers and docs on the questions the target's profile raises (its queries), and turns
the answers into findings that cite their chunks. With an LLM it also condenses them into claims; without one, the
claims are the retrieved evidence itself, stated plainly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..protocols import KnowledgeStore
from .findings import finding, llm_findings

ROLE = "researcher"

# When a target names no queries of its own.
GENERIC_QUERIES = (
    "performance optimization of the hot path",
    "SIMD vectorization of inner loops",
    "cache-efficient data layout",
)


def research(kb: KnowledgeStore, facts: Sequence[str], *, llm=None, k: int = 4, round_: int = 0,
             queries: Sequence[str] | None = None, say=lambda _: None, about: dict[str, Any] | None = None,
             summaries=None) -> list[dict[str, Any]]:
    """Findings for the profile's bottlenecks. A later round (`round_`) reads deeper down the same rankings.
    `about`: the target's describe(), for the model; `summaries`: the chunk summaries already paid for."""
    findings = []
    for query in queries or GENERIC_QUERIES:
        chunks = kb.query(query, k=k * (round_ + 1), where={"kind": ["paper", "doc"]})[k * round_:]
        if not chunks:
            continue
        if llm is not None:
            findings += llm_findings(llm, ROLE, query, chunks, say=say, about=about, cache=summaries)
            continue
        titles = "; ".join(f"{c.get('title') or c.get('path') or c.get('unit')}" for c in chunks[:3])
        findings.append(finding(ROLE, query, f"Reading on '{query}': {titles}.", chunks))
    return findings
