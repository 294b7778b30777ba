"""The offline policy: real experiments without an LLM.

Three sources of candidates, each a real experiment reported as what it is:
- fork hunks: a fork-diff chunk from the knowledge base that touches the CPU backend's hot code, moved onto the
  current best tree by anchoring its upstream side (context and removed lines) in the file and replacing it with
  the fork's side; only hunks whose anchor is found exactly once become candidates;
- build configuration: ggml options and link settings a maintainer would try;
- runtime parameters a user would tune: threads, flash attention, micro-batch size.
Each cites the finding it comes from. Kinds are interleaved so a short budget samples all three.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

Hypothesis = dict[str, Any]

BUILD_VARIANTS = (
    ("-DGGML_OPENMP=OFF", "ggml's own thread pool instead of OpenMP (different barrier and wake-up costs)"),
    ("-DGGML_LTO=ON", "link-time optimization across ggml's translation units"),
    ("-DBUILD_SHARED_LIBS=OFF", "static libraries: no PLT indirection on calls between ggml and llama"),
)


def hypothesis_key(kind: str, change: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps([kind, change], sort_keys=True).encode()).hexdigest()[:16]


def _hypothesis(kind: str, title: str, rationale: str, change: dict[str, Any], cites: list[str]) -> Hypothesis:
    key = hypothesis_key(kind, change)
    return {"id": f"H{key[:8]}", "key": key, "kind": kind, "title": title, "rationale": rationale,
            "change": change, "citations": cites, "source": "offline"}


def runtime_candidates(best_options: dict[str, Any], *, cpus: int, cite: str) -> list[Hypothesis]:
    out = []
    for t in sorted({1, max(1, cpus // 2), cpus} - {best_options.get("threads")}):
        out.append(_hypothesis("runtime", f"run with {t} thread{'s' if t > 1 else ''}",
                               "Generation is bandwidth-bound: fewer threads may saturate memory with less "
                               "synchronization; more may hide latency.", {"options": {"threads": t}}, [cite]))
    fa = not best_options.get("flash_attn", True)
    out.append(_hypothesis("runtime", f"flash attention {'on' if fa else 'off'}",
                           "Flash attention changes the attention kernel and its memory traffic.",
                           {"options": {"flash_attn": fa}}, [cite]))
    for ub in (256, 1024):
        if best_options.get("ubatch") != ub:
            out.append(_hypothesis("runtime", f"micro-batch {ub}", "Prompt processing is compute-bound: the "
                                   "micro-batch sets the matmul tile the kernels see.", {"options": {"ubatch": ub}},
                                   [cite]))
    return out


def build_candidates(best_flags: Sequence[str], *, cite: str) -> list[Hypothesis]:
    return [_hypothesis("build", f"build with {flag}", why, {"cmake_flags_add": [flag]}, [cite])
            for flag, why in BUILD_VARIANTS if flag not in best_flags]


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


def propose(findings: Sequence[dict[str, Any]], *, best: dict[str, Any], tried: set[str], profile_finding: str,
            read_file: Callable[[str], str | None], cpus: int | None = None) -> list[Hypothesis]:
    """Ranked hypotheses for the next wave, none already tried."""
    cpus = cpus or os.cpu_count() or 1
    ranked = interleave(fork_candidates(findings, read_file),
                        build_candidates(best.get("config", {}).get("cmake_flags", []), cite=profile_finding),
                        runtime_candidates(best.get("options", {}), cpus=cpus, cite=profile_finding))
    return [h for h in ranked if h["key"] not in tried]
