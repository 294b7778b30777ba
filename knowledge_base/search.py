"""How the two rankings combine, and how our filters become Chroma's.

Reciprocal rank fusion: each list contributes 1 / (c + rank) per item. It needs no score calibration between
cosine similarities and BM25 scores, which live on unrelated scales; c = 60 is the value from Cormack et al.
(SIGIR 2009), and the benchmark (bench/kb_bench.py) measures the fusion against each side alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

RRF_C = 60
# A query naming an identifier (snake_case, CamelCase, GGML_OP_X) is asking for that exact name: MiniLM splits
# it into word pieces and ranks look-alikes, BM25 matches it whole, so the lexical ranking counts for more.
IDENTIFIER_LEXICAL_WEIGHT = 3.0
_IDENTIFIER = re.compile(r"\b(?:[A-Za-z]+_[A-Za-z0-9_]+|[a-z]+[A-Z][A-Za-z0-9]*|[A-Z][a-z]+[A-Z][A-Za-z0-9]*)\b")


def lexical_weight(query: str) -> float:
    return IDENTIFIER_LEXICAL_WEIGHT if _IDENTIFIER.search(query) else 1.0


def fuse(*rankings: Sequence[tuple[str, float]], k: int, c: int = RRF_C,
         weights: Sequence[float] | None = None) -> list[tuple[str, float]]:
    """The k best ids by (weighted) reciprocal rank fusion of rankings given best first."""
    scores: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights or [1.0] * len(rankings)):
        for rank, (cid, _) in enumerate(ranking, start=1):
            scores[cid] = scores.get(cid, 0.0) + weight / (c + rank)
    return sorted(scores.items(), key=lambda item: -item[1])[:k]


def to_chroma_where(where: Mapping[str, Any]) -> dict[str, Any] | None:
    """{kind: str|list, repo, source, ...} → Chroma's where clause (None when there is nothing to filter)."""
    clauses = []
    for key, value in where.items():
        if value is None or value == [] or value == "":
            continue
        if isinstance(value, (list, tuple, set)):
            values = list(value)
            clauses.append({key: values[0]} if len(values) == 1 else {key: {"$in": values}})
        else:
            clauses.append({key: value})
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}
