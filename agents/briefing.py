"""What both LLM roles are told about the run: the measured facts, the noise floor and the keep threshold, the
model, and the ledger (every experiment with its outcome and what it changed).

The planner and the implementer read the same briefing, built here from plain data (the state's profile and
calibration, the target's objective, the ledger's rows), so the implementer never works with less than the
planner saw. It also says what a tried experiment *changed* (files and functions, from its patch), which is how
a hypothesis that restates a tried one is recognized whatever its words.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# A C/C++ function head in a hunk header or an added/removed line: the identifier right before "(".
_FUNCTION_HEAD = re.compile(r"([A-Za-z_]\w*)\s*\(")
_NOT_FUNCTIONS = {"if", "for", "while", "switch", "return", "sizeof", "defined", "static_assert", "__attribute__",
                  "decltype", "alignof", "GGML_UNUSED", "GGML_ASSERT", "UNUSED", "assert"}
_DEFINITION = re.compile(r"^[+-](?:[A-Za-z_][\w:<>,\s\*&]*\s+[\*&]*)([A-Za-z_]\w*)\s*\([^;]*$")


def change_signature(patch: str | None) -> dict[str, list[str]]:
    """The files and functions a patch touches: files from its headers, functions from git's hunk context (the
    enclosing function) and from function definitions on added or removed lines. Plain data, sorted."""
    files: set[str] = set()
    functions: set[str] = set()
    for line in (patch or "").splitlines():
        if line.startswith("+++ b/"):
            files.add(line[6:].strip())
        elif line.startswith("@@"):
            context = line.split("@@", 2)[-1]
            names = [n for n in _FUNCTION_HEAD.findall(context) if n not in _NOT_FUNCTIONS]
            if names:
                functions.add(names[0])
        elif line[:1] in "+-" and not line.startswith(("+++", "---")):
            m = _DEFINITION.match(line)
            if m and m.group(1) not in _NOT_FUNCTIONS:
                functions.add(m.group(1))
    return {"files": sorted(files), "functions": sorted(functions)}


def patch_digest(patch: str | None) -> str:
    """The content of a patch's changes, independent of line numbers, context and whitespace: two patches with
    the same digest make the same edit."""
    changed = [f"{line[0]}{' '.join(line[1:].split())}" for line in (patch or "").splitlines()
               if line[:1] in "+-" and not line.startswith(("+++", "---")) and line[1:].strip()]
    return hashlib.sha256("\n".join(changed).encode()).hexdigest()[:16] if changed else ""


def tried_experiments(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The ledger's experiments as the roles read them: title, kind, source, decision, gate, reason, the effect
    with its interval, what the patch changed, and its digest."""
    out = []
    for r in rows:
        verdict = r.get("verdict") or {}
        hypothesis = r.get("hypothesis") or {}
        signature = change_signature(r.get("patch"))
        if not signature["functions"]:
            # no patch (not implemented, a variant): what the hypothesis said it would change
            signature["functions"] = sorted(str(f) for f in hypothesis.get("functions") or [] if f)
        if not signature["files"]:
            signature["files"] = sorted(str(f) for f in hypothesis.get("files") or [] if f)
        out.append({"id": r.get("id"), "title": r.get("title"), "key": hypothesis.get("key"),
                    "kind": r.get("kind"), "source": r.get("source_kind") or hypothesis.get("source_kind") or "",
                    "decision": r.get("decision"), "gate": verdict.get("gate") or "", "reason": r.get("reason", ""),
                    "speedup": r.get("speedup"), "ci_low": r.get("ci_low"), "ci_high": r.get("ci_high"),
                    **signature, "digest": patch_digest(r.get("patch"))})
    return out


def outcome_line(t: Mapping[str, Any]) -> str:
    """One tried experiment in one line: title, kind and source, decision and gate, effect, what it changed, why."""
    effect = t.get("speedup")
    measured = f" {effect:+.1%}" if isinstance(effect, (int, float)) else ""
    if isinstance(effect, (int, float)) and t.get("ci_low") is not None and t.get("ci_high") is not None:
        measured += f" [{t['ci_low']:+.1%}, {t['ci_high']:+.1%}]"
    gate = t.get("gate")
    decision = str(t.get("decision") or "tried") + (f" at {gate}" if gate and t.get("decision") != "keep" else "")
    kind = "/".join(str(x) for x in (t.get("kind"), t.get("source")) if x)
    functions, files = ", ".join(t.get("functions") or []), ", ".join(t.get("files") or [])
    changed = f"{functions} in {files}" if functions and files else functions or files
    reason = " ".join(str(t.get("reason") or "").split())[:240]
    name = f"{t['id']} {t.get('title')}" if t.get("id") else str(t.get("title"))
    return (f"- {name}" + (f" ({kind})" if kind else "") + f": {decision}{measured}"
            + (f"; changed {changed}" if changed else "") + (f" — {reason}" if reason else ""))


def model_line(profile: Mapping[str, Any]) -> str:
    """The benchmarked model as its benchmark named it (type and quantization, parameters, size), and the
    kernels the profile says hold the time; empty when the profile does not say."""
    details = profile.get("details") or {}
    raw = ((details.get("bench") or {}).get("raw") or [{}])[0] if isinstance(details.get("bench"), Mapping) else {}
    parts = []
    if raw.get("model_type"):
        parts.append(str(raw["model_type"]))
    if raw.get("model_n_params"):
        parts.append(f"{float(raw['model_n_params']) / 1e9:.2f} B parameters")
    if raw.get("model_size"):
        parts.append(f"{float(raw['model_size']) / 2**20:.0f} MiB of weights")
    if raw.get("n_ubatch"):
        parts.append(f"micro-batch {raw['n_ubatch']}")
    hot = [str(s) for s in profile.get("hot_symbols") or []][:6]
    line = ("Model: " + ", ".join(parts) + ".") if parts else ""
    if hot:
        line += (" " if line else "") + "Kernels that hold the time, most first: " + ", ".join(hot) + "."
    return line


def brief(*, profile: Mapping[str, Any], calibration: str, min_effect: float | None,
          rows: Sequence[Mapping[str, Any]], stack: Iterable[str] = ()) -> dict[str, Any]:
    """The briefing as plain data: `facts` (measured, ours), `tried` (the ledger, written partly by models that
    read untrusted text), `stack` (the kept experiments the code already holds)."""
    facts = [str(f) for f in profile.get("facts") or []]
    if model := model_line(profile):
        facts.append(model)
    facts.append(f"Noise floor (A/A calibration of the baseline against itself): {calibration}." if calibration
                 else "Noise floor: not calibrated in this run.")
    if min_effect is not None:
        facts.append(f"Keep threshold: a change is kept only when the lower bound of its 95% interval exceeds "
                     f"{min_effect:+.1%} on the objective; a smaller true win is discarded as noise.")
    return {"facts": facts, "tried": tried_experiments(rows), "stack": list(stack)}


def briefing_text(briefing: Mapping[str, Any], *, limit: int = 12_000) -> tuple[str, str]:
    """(facts, ledger) as prompt text; the ledger newest first, cut at `limit` characters."""
    facts = "\n".join(f"- {f}" for f in briefing.get("facts") or []) or "(none)"
    tried = list(briefing.get("tried") or [])
    lines = [outcome_line(t) for t in reversed(tried)]
    kept = set(briefing.get("stack") or [])
    head = f"Kept so far (already in the code): {', '.join(sorted(kept))}\n" if kept else ""
    text, size = [], len(head)
    for line in lines:
        if size + len(line) > limit:
            text.append(f"[{len(lines) - len(text)} older experiments not shown]")
            break
        text.append(line)
        size += len(line) + 1
    return facts, (head + "\n".join(text)) if tried else ""


def same_change(functions: Iterable[str], tried: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The discarded experiment that changed exactly these functions, if any. A kept one does not count: its
    change is in the code now, and building further on the same function is a new step, not a repeat."""
    wanted = {f.casefold() for f in functions if f}
    if not wanted:
        return None
    for t in tried:
        if t.get("decision") == "keep":
            continue
        if {f.casefold() for f in t.get("functions") or []} == wanted:
            return t
    return None
