"""The offline policy: real experiments without an LLM, each attributed to the source it comes from.

Candidates, by source kind (`source_kind` on every hypothesis, and from there on every ledger row):
- `fork`: the porting engine's patches (agents/porting.py): the fork's definitions of the tree's hot functions,
  and the fork-diff hunks the competitor analyst retrieved, moved onto the current best tree;
- `profile`: the target's variants (Target.variants), which its profile suggests: for llama.cpp, ggml build
  options and runtime settings; for a readfirst.toml project, the variants its file lists;
- `backend-gap`: what another backend implements and the CPU lacks. No offline switch makes a fusion, so these
  are hypotheses for the LLM implementer (carrying the other backend's code); offline they are listed as
  "needs an LLM".
Fork candidates and the rest alternate, so that a short budget spends at least half of itself on what was read.
Whatever could not become a candidate is counted with its reason (no anchor, conflict, signature...).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..protocols import Tree
from . import porting

Hypothesis = dict[str, Any]
MAX_FORK_CANDIDATES = 40   # per wave; the rest wait for the next waves


def hypothesis_key(kind: str, change: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps([kind, change], sort_keys=True).encode()).hexdigest()[:16]


def _hypothesis(kind: str, title: str, rationale: str, change: dict[str, Any], cites: list[str], *,
                source_kind: str, identity: dict[str, Any] | None = None, **extra: Any) -> Hypothesis:
    # `identity` is what the change *is* (a port of this function from that fork): the same port made against a
    # newer best tree has another patch text but is the same hypothesis, tried once.
    key = hypothesis_key(kind, identity if identity is not None else change)
    return {"id": f"H{key[:8]}", "key": key, "kind": kind, "title": title, "rationale": rationale,
            "change": change, "citations": cites, "source": "offline", "source_kind": source_kind, **extra}


def variant_candidates(variants: Sequence[dict[str, Any]], *, cite: str) -> list[Hypothesis]:
    """The target's own offline candidates (build and runtime variants), as hypotheses citing the profile."""
    return [_hypothesis(v["kind"], v["title"], v.get("rationale", ""), {"variant": v["change"]}, [cite],
                        source_kind="profile") for v in variants]


@dataclass
class ForkSources:
    """What the porting engine reads: the current best tree, the tree the run started from, the forks' trees
    (by the name their knowledge-base chunks cite), and which files are hot."""
    current: Tree
    base: Tree
    forks: dict[str, Tree]
    hot_paths: Sequence[str]
    merge_file: porting.MergeFile
    rank: Callable[[str], int] = lambda _: 0


@dataclass
class Proposal:
    hypotheses: list[Hypothesis] = field(default_factory=list)
    # {"source_kind", "what", "reason", "detail", "symbol"}: symbol is the function it concerns, when one
    dropped: list[dict[str, str]] = field(default_factory=list)
    needs_llm: list[Hypothesis] = field(default_factory=list)     # backend gaps with no offline switch
    findings: list[dict[str, Any]] = field(default_factory=list)  # what the porting engine found, to cite

    made_keys: dict[str, list[str]] = field(default_factory=dict)  # source -> hypothesis keys made

    def stats(self, earlier: dict[str, Any] | None = None) -> dict[str, Any]:
        """Plain data for the state and the summary: candidates per source, drops per reason, the LLM's list;
        over the whole run when given the `earlier` stats (a kept port is no candidate against the new best,
        but it was one)."""
        earlier = earlier or {}
        keys = {k: set(v) for k, v in (earlier.get("keys") or {}).items()}
        for source, made in self.made_keys.items():
            keys.setdefault(source, set()).update(made)
        dropped = dict(earlier.get("dropped_what") or {})
        dropped.update({f"{d['source_kind']}:{d['what']}": d["reason"] for d in self.dropped})
        # Each drop with its function and rule, over the run: why the function a user expected was not tried.
        items = {f"{d['source_kind']}:{d['what']}": d for d in earlier.get("dropped_candidates") or []}
        items.update({f"{d['source_kind']}:{d['what']}": dict(d) for d in self.dropped})
        needs = {h["title"]: {"title": h["title"], "where": h.get("where", "")} for h in self.needs_llm}
        needs = {**{n["title"]: n for n in earlier.get("needs_llm") or []}, **needs}
        reasons: dict[str, int] = {}
        for reason in dropped.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        return {"candidates_by_source": {k: len(v) for k, v in keys.items() if v},
                "dropped": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
                "needs_llm": list(needs.values()),
                "keys": {k: sorted(v) for k, v in keys.items()}, "dropped_what": dropped,
                "dropped_candidates": list(items.values())}


def _drop(d: porting.Dropped) -> dict[str, str]:
    return {"source_kind": "fork", "what": d.what, "reason": d.reason, "detail": d.detail, "symbol": d.symbol}


def pair_moves(hunk_dropped: list[dict], functions: Sequence[Hypothesis], function_dropped: list[dict]) -> None:
    """A hunk dropped because the fork moved the function it deletes says what became of the move: the
    function port made from where the fork keeps it now, or why that port was dropped too."""
    ported = {h["where"].split()[-1] for h in functions}
    why = {d["symbol"]: f"{d['reason']}" + (f" ({d['detail']})" if d["detail"] else "") for d in function_dropped}
    for d in hunk_dropped:
        if d["reason"] == "moved" and d.get("symbol"):
            d["detail"] += ("; its function port is proposed" if d["symbol"] in ported else
                            f"; its function port was dropped: {why[d['symbol']]}" if d["symbol"] in why else
                            "; no function port: the fork's definition is the same as the tree's")


def hunk_candidates(findings: Sequence[dict[str, Any]], src: ForkSources) -> tuple[list[Hypothesis], list[dict]]:
    """Fork-diff hunks the findings carry, each moved onto the current tree (tolerant anchor, three-way merge)."""
    out, dropped, seen = [], [], set()
    for f in findings:
        for hunk in f.get("fork_hunks", []):
            unit = hunk.get("commit") or hunk["id"]
            if (unit, hunk.get("path")) in seen or not hunk.get("path"):
                continue
            seen.add((unit, hunk.get("path")))
            made = porting.hunk_port(hunk, current=src.current, base=src.base, forks=src.forks,
                                     merge_file=src.merge_file, hot_paths=src.hot_paths)
            if isinstance(made, porting.Dropped):
                dropped.append(_drop(made))
                continue
            identity = {"hunk": hunk.get("commit") or hunk["id"], "path": made.path}
            out.append(_hypothesis("patch", made.title, f"{f['claim']} The change merges cleanly into the "
                                   f"current tree ({made.changed_lines} lines).",
                                   {"patch": made.patch, "chunk": hunk["id"]}, [f["id"]], source_kind="fork",
                                   identity=identity, where=f"{made.path} {made.symbol}".strip()))
    return out, dropped


def port_finding(ports: porting.Ports, forks: Sequence[str]) -> dict[str, Any] | None:
    """One finding naming what the fork trees define differently, for the port hypotheses to cite."""
    from .findings import finding
    if not ports.candidates:
        return None
    names = sorted({c.symbol for c in ports.candidates})
    claim = (f"{', '.join(forks)} define{'s' if len(forks) == 1 else ''} {len(names)} of the tree's hot functions "
             f"differently with the same signature: {', '.join(names[:12])}{'...' if len(names) > 12 else ''}.")
    return finding("competitor_analyst", "fork functions", claim,
                   extra={"ports": [{"symbol": c.symbol, "fork": c.fork, "fork_path": c.fork_path, "path": c.path}
                                    for c in ports.candidates]})


def function_candidates(src: ForkSources) -> tuple[list[Hypothesis], list[dict], dict[str, Any] | None]:
    ports = porting.function_ports(src.current, list(src.forks.values()), hot_paths=src.hot_paths, rank=src.rank)
    cited = port_finding(ports, sorted(src.forks))
    ranked = sorted(ports.candidates, key=lambda c: (src.rank(c.symbol), c.changed_lines, c.symbol))
    out = []
    for c in ranked:
        helpers = f", bringing along {', '.join(c.helpers)}" if c.helpers else ""
        out.append(_hypothesis(
            "patch", c.title, f"{c.fork} keeps its own {c.symbol} in {c.fork_path}; the tree's is in {c.path}. "
            f"Same signature; {c.changed_lines} lines change{helpers}.", {"patch": c.patch}, [cited["id"]] if cited
            else [], source_kind="fork", identity={"port": c.symbol, "fork": c.fork, "from": c.fork_path,
                                                    "into": c.path}, where=f"{c.path} {c.symbol}"))
    return out, [_drop(d) for d in ports.dropped], cited


def gap_candidates(findings: Sequence[dict[str, Any]]) -> list[Hypothesis]:
    """Backend gaps the competitor analyst retrieved, as hypotheses for the LLM implementer: each carries the
    other backend's code (the gap document's excerpt) as the context to port."""
    out, seen = [], set()
    for f in findings:
        for gap in f.get("backend_gaps", []):
            if gap["id"] in seen or gap.get("gap") == "summary":
                continue
            seen.add(gap["id"])
            what = gap.get("ops", "").replace("GGML_OP_", "").replace(",", " + ")
            title = (f"fuse {what} on the CPU, as the {gap.get('backends', 'other')} backend does" if
                     gap.get("gap") == "fusion" else f"implement {what} on the CPU, as {gap.get('backends')} does")
            out.append(_hypothesis("llm", title, f"{f['claim']} Port the other backend's approach to the CPU "
                                   f"backend's hot path.", {}, [f["id"]], source_kind="backend-gap",
                                   identity={"gap": gap["id"]}, chunk_ids=[gap["id"]],
                                   where=f"{gap.get('path', '')} {gap.get('symbol', '')}".strip()))
    return out


def alternate(first: Sequence[Hypothesis], second: Sequence[Hypothesis]) -> list[Hypothesis]:
    """first[0], second[0], first[1], second[1]...; the longer one's rest at the end."""
    out = []
    for i in range(max(len(first), len(second))):
        out += [x[i] for x in (first, second) if i < len(x)]
    return out


def interleave(*lists: Sequence[Hypothesis]) -> list[Hypothesis]:
    out = []
    for i in range(max((len(x) for x in lists), default=0)):
        out += [x[i] for x in lists if i < len(x)]
    return out


def propose(findings: Sequence[dict[str, Any]], *, variants: Sequence[dict[str, Any]], tried: set[str],
            profile_finding: str, forks: ForkSources | None = None, llm: bool = False,
            history: Sequence[str] = ()) -> Proposal:
    """Ranked hypotheses for the next wave, none already tried: fork candidates alternating with the target's
    variants (themselves interleaved kind by kind: build, runtime), starting with the source that has had fewer
    experiments so far (`history`: the source kinds of the run's experiments), so that one experiment per wave
    still alternates. Backend gaps join the queue when an LLM implements (`llm`), and are listed as needing one
    otherwise."""
    proposal = Proposal()
    fork_made: list[Hypothesis] = []
    if forks is not None:
        functions, dropped, cited = function_candidates(forks)
        hunks, hunk_dropped = hunk_candidates(findings, forks)
        pair_moves(hunk_dropped, functions, dropped)
        proposal.dropped += dropped + hunk_dropped
        if cited:
            proposal.findings.append(cited)
        fork_made = interleave(functions, hunks)
    offered = variant_candidates(variants, cite=profile_finding)
    kinds = list(dict.fromkeys(h["kind"] for h in offered))
    profile_made = interleave(*([h for h in offered if h["kind"] == k] for k in kinds))
    all_gaps = gap_candidates(findings)
    gaps = [h for h in all_gaps if h["key"] not in tried]
    proposal.made_keys = {k: [h["key"] for h in made] for k, made in
                          (("fork", fork_made), ("profile", profile_made), ("backend-gap", all_gaps)) if made}
    fresh = [h for h in fork_made if h["key"] not in tried][:MAX_FORK_CANDIDATES]
    profile_fresh = [h for h in profile_made if h["key"] not in tried]
    fork_first = list(history).count("fork") <= list(history).count("profile")
    ranked = alternate(fresh, profile_fresh) if fork_first else alternate(profile_fresh, fresh)
    if llm:
        ranked = alternate(ranked, gaps) if gaps else ranked
    else:
        proposal.needs_llm = gaps
    proposal.hypotheses = ranked
    return proposal


def dropped_lines(items: Sequence[dict[str, Any]], *, limit: int = 8) -> list[str]:
    """The run's dropped candidates for its printed summary, one line each, moves first (the function a user
    expected, and where it went) and changes that change nothing last (ik_llama.cpp has about 60); the rest are
    counted, all are in --json and on the page."""
    rank = {"moved": 0, "no change": 2}
    ordered = sorted(items, key=lambda d: (rank.get(d.get("reason", ""), 1), d.get("reason", ""), d.get("what", "")))
    lines = [f"  dropped {d.get('what', '')}: {d.get('reason', '')}" + (f" ({d['detail']})" if d.get("detail") else "")
             for d in ordered[:limit]]
    if len(ordered) > limit:
        lines.append(f"  and {len(ordered) - limit} more dropped candidates (run --json, or the run's page)")
    return lines
