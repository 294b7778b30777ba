"""The researcher: turns the profile's bottlenecks into knowledge-base queries over papers and docs, and the
answers into findings that cite their chunks. With an LLM it also condenses them into claims; without one, the
claims are the retrieved evidence itself, stated plainly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..protocols import KnowledgeStore
from .findings import finding, llm_findings

ROLE = "researcher"

# What to read for each kind of bottleneck. Memory-bound generation wants fewer bytes and fewer passes; compute-
# bound prompt processing wants better matmul kernels.
MEMORY_BOUND_QUERIES = (
    "operator fusion to reduce memory traffic in LLM inference on CPU",
    "fused RMS norm and multiply kernel",
    "flash attention kernel for the CPU",
    "quantized matrix-vector product memory bandwidth bound decoding",
    "thread synchronization barrier overhead in graph execution",
)
COMPUTE_BOUND_QUERIES = (
    "quantized matrix multiplication kernel tiling for CPU prompt processing",
    "weight repacking interleaved blocks for SIMD dot products",
    "tinyBLAS llamafile matrix multiplication",
)


def research_queries(facts: Sequence[str]) -> list[str]:
    memory_bound = any("memory-bound" in f for f in facts)
    queries = list(MEMORY_BOUND_QUERIES if memory_bound else MEMORY_BOUND_QUERIES[2:] + MEMORY_BOUND_QUERIES[:2])
    return queries + list(COMPUTE_BOUND_QUERIES)


def research(kb: KnowledgeStore, facts: Sequence[str], *, llm=None, k: int = 4, round_: int = 0,
             queries: Sequence[str] | None = None, say=lambda _: None) -> list[dict[str, Any]]:
    """Findings for the profile's bottlenecks. A later round (`round_`) reads deeper down the same rankings."""
    findings = []
    for query in queries or research_queries(facts):
        chunks = kb.query(query, k=k * (round_ + 1), where={"kind": ["paper", "doc"]})[k * round_:]
        if not chunks:
            continue
        if llm is not None:
            findings += llm_findings(llm, ROLE, query, chunks, say=say)
            continue
        titles = "; ".join(f"{c.get('title') or c.get('path') or c.get('unit')}" for c in chunks[:3])
        findings.append(finding(ROLE, query, f"Reading on '{query}': {titles}.", chunks))
    return findings
