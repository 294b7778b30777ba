"""The offline policy: real experiments without an LLM.

Two sources of candidates, each a real experiment reported as what it is:
- fork hunks: a fork-diff chunk from the knowledge base that touches the target's hot paths, moved onto the
  current best tree by anchoring its upstream side (context and removed lines) in the file and replacing it with
  the fork's side; only hunks whose anchor is found exactly once become candidates;
- the target's variants (Target.variants): for llama.cpp, ggml build options and runtime settings; for a
  readfirst.toml project, the variants its file lists.
Each cites the finding it comes from. Sources are interleaved so a short budget samples both.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

Hypothesis = dict[str, Any]


def hypothesis_key(kind: str, change: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps([kind, change], sort_keys=True).encode()).hexdigest()[:16]


def _hypothesis(kind: str, title: str, rationale: str, change: dict[str, Any], cites: list[str]) -> Hypothesis:
    key = hypothesis_key(kind, change)
    return {"id": f"H{key[:8]}", "key": key, "kind": kind, "title": title, "rationale": rationale,
            "change": change, "citations": cites, "source": "offline"}


def variant_candidates(variants: Sequence[dict[str, Any]], *, cite: str) -> list[Hypothesis]:
    """The target's own offline candidates (build and runtime variants), as hypotheses citing the profile."""
    return [_hypothesis(v["kind"], v["title"], v.get("rationale", ""), {"variant": v["change"]}, [cite])
            for v in variants]


def hunk_sides(chunk_text: str) -> tuple[list[str], list[str]] | None:
    """(upstream lines, fork lines) of a fork-diff chunk: its body after the comment and @@ header lines."""
    lines = chunk_text.split("\n")
    body = [ln for ln in lines[2:]] if len(lines) > 2 and lines[1].startswith("@@") else None
    if not body:
        return None
    old, new = [], []
    for ln in body:
        tag, text = (ln[:1], ln[1:]) if ln else (" ", "")
        if tag in (" ", "-"):
            old.append(text)
        if tag in (" ", "+"):
            new.append(text)
        if tag not in (" ", "-", "+", "\\"):
            return None
    if old == new or not any(s.strip() for s in old):
        return None  # nothing to anchor on (a pure addition), or no change
    return old, new


def anchored_patch(path: str, current: str, old: list[str], new: list[str]) -> str | None:
    """Replace the one place where `old` stands in `current` with `new`; a unified diff, or None."""
    lines = current.split("\n")
    n = len(old)
    hits = [i for i in range(len(lines) - n + 1) if lines[i:i + n] == old]
    if len(hits) != 1:
        return None
    i = hits[0]
    after = lines[:i] + new + lines[i + n:]
    diff = difflib.unified_diff([ln + "\n" for ln in lines], [ln + "\n" for ln in after], f"a/{path}", f"b/{path}")
    text = "".join(diff)
    return f"diff --git a/{path} b/{path}\n{text}" if text else None


def fork_candidates(findings: Sequence[dict[str, Any]], read_file: Callable[[str], str | None]) -> list[Hypothesis]:
    """Fork hunks cited by findings that anchor exactly once in the current best tree."""
    out, seen = [], set()
    for f in findings:
        for hunk in f.get("fork_hunks", []):
            if hunk["id"] in seen or not hunk.get("path"):
                continue
            seen.add(hunk["id"])
            sides = hunk_sides(hunk.get("text", ""))
            current = read_file(hunk["path"]) if sides else None
            if current is None:
                continue
            patch = anchored_patch(hunk["path"], current, *sides)
            if patch is None:
                continue
            where = f"{hunk['path']} {hunk.get('symbol') or ''}".strip()
            out.append(_hypothesis("patch", f"port the fork's change to {where}",
                                   f"{f['claim']} This hunk applies to the current tree.",
                                   {"patch": patch, "chunk": hunk["id"]}, [f["id"]]))
    return out


def interleave(*lists: Sequence[Hypothesis]) -> list[Hypothesis]:
    out = []
    for i in range(max((len(x) for x in lists), default=0)):
        out += [x[i] for x in lists if i < len(x)]
    return out


def propose(findings: Sequence[dict[str, Any]], *, variants: Sequence[dict[str, Any]], tried: set[str],
            profile_finding: str, read_file: Callable[[str], str | None]) -> list[Hypothesis]:
    """Ranked hypotheses for the next wave, none already tried: fork hunks, then the target's variants kind by
    kind (build, runtime), interleaved so that a short budget samples every source."""
    offered = variant_candidates(variants, cite=profile_finding)
    kinds = list(dict.fromkeys(h["kind"] for h in offered))
    ranked = interleave(fork_candidates(findings, read_file), *([h for h in offered if h["kind"] == k] for k in kinds))
    return [h for h in ranked if h["key"] not in tried]
