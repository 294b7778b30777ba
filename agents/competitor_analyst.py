"""The competitor analyst: what forks (ik_llama.cpp) and sibling backends (CUDA, Metal, Vulkan) do that the
target does not. The reference experiment found most of its wins here, not in papers.

Findings cite fork diffs and fork-only code in the target's hot paths, and backend-gap documents (an op or a
fusion implemented elsewhere and missing on the CPU). The queries and the hot paths are the target's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..protocols import KnowledgeStore
from .findings import finding, llm_findings

ROLE = "competitor_analyst"
# When a target names no queries of its own: what any performance fork changes.
GENERIC_QUERIES = (
    "faster hot loop",
    "SIMD vectorized implementation",
    "avoid redundant work in the inner loop",
    "memory access pattern cache locality",
    "branch misprediction fast path",
)


def analyze(kb: KnowledgeStore, facts: Sequence[str], *, hot_paths: Sequence[str], llm=None, k: int = 4,
            round_: int = 0, queries: Sequence[str] | None = None, say=lambda _: None) -> list[dict[str, Any]]:
    """Findings about the forks' changes under `hot_paths` and the backend gaps; a later round (`round_`) reads
    deeper down the same rankings."""
    findings = []
    for query in queries or GENERIC_QUERIES:
        lo, hi = k * round_, k * (round_ + 1)
        where: dict[str, Any] = {"kind": ["fork-diff", "fork-code"]}
        if hot_paths:
            where["path"] = list(hot_paths)
        diffs = kb.query(query, k=hi, where=where)[lo:]
        if diffs:
            if llm is not None:
                findings += llm_findings(llm, ROLE, query, diffs, say=say)
            else:
                where = "; ".join(f"{c.get('repo')} {c.get('path')} {c.get('symbol') or ''}".strip() for c in diffs[:3])
                # The diff text travels with the finding: the offline policy turns these hunks into patches.
                hunks = [{"id": c["id"], "path": c.get("path", ""), "symbol": c.get("symbol", ""),
                          "text": c.get("text", "")} for c in diffs if c.get("kind") == "fork-diff"]
                findings.append(finding(ROLE, query, f"The fork differs from upstream here: {where}.", diffs,
                                        {"fork_hunks": hunks}))
        gaps = kb.query(query, k=hi, where={"kind": "backend-gap"})[lo:]
        if gaps:
            names = "; ".join(c.get("snippet", "")[:120] for c in gaps[:2])
            findings.append(finding(ROLE, query, f"Other backends implement what the CPU lacks: {names}", gaps))
    return findings
