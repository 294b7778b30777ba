"""Findings: what a research role learned, each citing the knowledge-base chunks it rests on.

A finding is plain data: {"id", "role", "query", "claim", "citations": [{"id", "kind", "origin", "snippet"}]}.
Its id derives from its content, so re-running research after a crash yields the same findings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any


def origin_of(chunk: dict[str, Any]) -> str:
    """Where a chunk came from, precisely enough to open it: repo path:lines symbol, or paper id + section."""
    if chunk.get("path"):
        lines = f":{chunk['start_line']}-{chunk['end_line']}" if chunk.get("start_line") else ""
        symbol = f" {chunk['symbol']}" if chunk.get("symbol") else ""
        return f"{chunk.get('repo', '?')} {chunk['path']}{lines}{symbol}"
    if chunk.get("paper_id") or chunk.get("title"):
        section = f" § {chunk['section']}" if chunk.get("section") else ""
        return f"{chunk.get('paper_id', '')} {chunk.get('title', '')}{section}".strip()
    return chunk.get("unit", "?")


def citation(chunk: dict[str, Any]) -> dict[str, Any]:
    return {"id": chunk["id"], "kind": chunk.get("kind", ""), "origin": origin_of(chunk),
            "snippet": (chunk.get("snippet") or chunk.get("text", ""))[:400]}


def finding(role: str, query: str, claim: str, chunks: Sequence[dict[str, Any]] = (),
            extra: dict[str, Any] | None = None) -> dict[str, Any]:
    cites = [citation(c) for c in chunks]
    body = {"role": role, "query": query, "claim": claim, "citations": cites, **(extra or {})}
    fid = "F" + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:10]
    return {"id": fid, **body}


def llm_findings(llm, role: str, query: str, chunks: Sequence[dict[str, Any]], *, say=lambda _: None,
                 about: dict[str, Any] | None = None, cache=None) -> list[dict[str, Any]]:
    """The model's claims about `chunks`, each kept only with the chunks it really cites. `about`: the target's
    describe(); `cache`: a summaries.SummaryCache, so a chunk read before costs no call."""
    from .hypothesize_llm import summarize_findings
    summary = summarize_findings(llm, query, chunks, agent=role, about=about, cache=cache)
    if summary.error:
        say(f"{role}: the model's findings for '{query}' were unusable: {summary.error}")
    out = []
    for item in summary:
        cited = [c for c in chunks if c["id"] in set(item.get("citations", []))]
        if cited:
            out.append(finding(role, query, item["claim"], cited))
    return out


def source_kind(finding_ids, findings) -> str:
    """Where a hypothesis comes from, by what its cited findings cite: a fork's code, another backend, a paper
    (or doc); otherwise the profile alone."""
    by_id = {f["id"]: f for f in findings}
    kinds = {c.get("kind", "") for fid in finding_ids for c in (by_id.get(fid) or {}).get("citations", [])}
    roles = {(by_id.get(fid) or {}).get("role") for fid in finding_ids}
    if kinds & {"fork-diff", "fork-code"} or any((by_id.get(fid) or {}).get("ports") for fid in finding_ids):
        return "fork"
    if "backend-gap" in kinds:
        return "backend-gap"
    if kinds & {"paper", "doc"}:
        return "paper"
    return "profile" if roles else "llm"
