"""The competitor analyst: what forks and the target's sibling backends (its other implementations of the same
operations) do that the target does not. The reference experiment found most of its wins here, not in papers.

Findings cite fork diffs and fork-only code in the target's hot paths, and backend-gap documents (an op or a
fusion implemented elsewhere and missing on the CPU). The queries and the hot paths are the target's.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from ..protocols import KnowledgeStore
from ..records import in_paths
from .findings import finding, llm_findings

ROLE = "competitor_analyst"
DEPTH = 5  # how much deeper than needed a query reads before the relevance filter
# When a target names no queries of its own: what any performance fork changes.
GENERIC_QUERIES = (
    "faster hot loop",
    "SIMD vectorized implementation",
    "avoid redundant work in the inner loop",
    "memory access pattern cache locality",
    "branch misprediction fast path",
)


def relevant(chunk: dict[str, Any], hot_paths: Sequence[str], hot_symbols: Collection[str]) -> bool:
    """A fork chunk matters when it is in the target's hot files, or when it is a hot function of the target's
    wherever the fork keeps it (a fork may move a function into another file)."""
    if not hot_paths and not hot_symbols:
        return True
    return in_paths(chunk.get("path", ""), hot_paths) or (chunk.get("symbol") or "") in hot_symbols


def analyze(kb: KnowledgeStore, facts: Sequence[str], *, hot_paths: Sequence[str], llm=None, k: int = 4,
            round_: int = 0, queries: Sequence[str] | None = None, hot_symbols: Collection[str] = (),
            say=lambda _: None, about: dict[str, Any] | None = None, summaries=None) -> list[dict[str, Any]]:
    """Findings about the forks' changes to the target's hot code and the backend gaps; a later round
    (`round_`) reads deeper down the same rankings."""
    findings = []
    hot_symbols = set(hot_symbols)
    for query in queries or GENERIC_QUERIES:
        lo, hi = k * round_, k * (round_ + 1)
        # Relevance is by path or by symbol, which no store filter expresses: read deeper and keep what matters.
        diffs = [c for c in kb.query(query, k=hi * DEPTH, where={"kind": ["fork-diff", "fork-code"]})
                 if relevant(c, hot_paths, hot_symbols)][lo:hi]
        if diffs:
            # The diff travels with the finding: the porting engine moves these hunks onto the current tree, in
            # LLM mode too.
            hunks = [{k: c.get(k, "") for k in ("id", "repo", "revision", "commit", "path", "symbol", "text")}
                     for c in diffs if c.get("kind") == "fork-diff"]
            if llm is not None:
                found = llm_findings(llm, ROLE, query, diffs, say=say, about=about, cache=summaries)
                if found and hunks:
                    found[0]["fork_hunks"] = hunks
                findings += found
            else:
                where = "; ".join(f"{c.get('repo')} {c.get('path')} {c.get('symbol') or ''}".strip() for c in diffs[:3])
                findings.append(finding(ROLE, query, f"The fork differs from upstream here: {where}.", diffs,
                                        {"fork_hunks": hunks}))
        gaps = kb.query(query, k=hi, where={"kind": "backend-gap"})[lo:]
        if gaps:
            names = "; ".join(c.get("snippet", "")[:120] for c in gaps[:2])
            # The gap documents travel too: each becomes a hypothesis carrying the other backend's code.
            carried = [{k: c.get(k, "") for k in ("id", "gap", "ops", "backends", "path", "symbol")} for c in gaps]
            findings.append(finding(ROLE, query, f"Other backends implement what the CPU lacks: {names}", gaps,
                                    {"backend_gaps": carried}))
    return findings
