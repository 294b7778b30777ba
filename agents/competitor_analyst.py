"""The competitor analyst: what forks (ik_llama.cpp) and sibling backends (CUDA, Metal, Vulkan) do that this CPU
backend does not. The reference experiment found most of its wins here, not in papers.

Findings cite fork diffs and fork-only code in the CPU backend's hot paths, and backend-gap documents (an op or a
fusion implemented elsewhere and missing on the CPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..protocols import KnowledgeStore
from .findings import finding, llm_findings

ROLE = "competitor_analyst"
HOT_PATHS = "ggml/src/ggml-cpu/*"

FORK_QUERIES = (
    "fused rms_norm multiply CPU kernel",
    "flash attention CPU kernel",
    "softmax CPU vectorized",
    "q4_0 dot product AVX2",
    "matrix multiplication quantized CPU",
    "rope CPU kernel",
    "thread barrier synchronization graph compute",
)


def analyze(kb: KnowledgeStore, facts: Sequence[str], *, llm=None, k: int = 4, round_: int = 0,
            queries: Sequence[str] = FORK_QUERIES, say=lambda _: None) -> list[dict[str, Any]]:
    findings = []
    for query in queries:
        lo, hi = k * round_, k * (round_ + 1)
        diffs = kb.query(query, k=hi, where={"kind": ["fork-diff", "fork-code"], "path": HOT_PATHS})[lo:]
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
