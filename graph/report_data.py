"""What a run's report shows, gathered from the run directory as plain data: the ledger (always there once an
experiment ran), the last checkpoint's state (the question, the setup, the findings), and the trace (where the
time went), each optional.

A run's summary is only written when it finishes; an interrupted or crashed run's figures (experiments, keeps,
best) come from its ledger instead, marked partial.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .ledger import LedgerUnreadable, read_rows


def ledger_rows(directory: Path) -> list[dict[str, Any]]:
    """The run's experiments; none when no ledger was created (the run never reached one). A damaged one is
    LedgerUnreadable."""
    path = directory / "ledger.sqlite"
    if not os.path.lexists(path):  # a symlink, even a dangling one, is refused by read_rows
        return []
    return read_rows(path)


def kept_stack(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The keeps that entered the best, in order: the decide step keeps each wave's largest significant win
    (workflow.decide), so a wave with two keeps stacks only one of them."""
    by_wave: dict[Any, dict[str, Any]] = {}
    for r in rows:
        if r.get("decision") != "keep":
            continue
        wave = r.get("wave", 0)
        if wave not in by_wave or (r.get("speedup") or 0) > (by_wave[wave].get("speedup") or 0):
            by_wave[wave] = r
    return [by_wave[w] for w in sorted(by_wave, key=lambda w: (w is None, w))]


def stacked_speedup(kept: list[dict[str, Any]]) -> float | None:
    """Kept patches stack: the total is the product of their improvements, as the run's summary counts it."""
    if not kept:
        return None
    total = 1.0
    for r in kept:
        total *= 1 + (r.get("speedup") or 0)
    return total - 1


def class_results(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per machine class, what an experiment measured there: every class's verdict when the run measured on
    several (sandbox/ray_executor.merge_classes), else the row's own under its node's class or, without one, its
    node's CPU model; nothing for a row measured on the driver's machine."""
    if row.get("per_class"):
        return dict(row["per_class"])
    node = row.get("node") or {}
    if not node:
        return {}
    return {node.get("class") or node.get("cpu") or "?": {
        "decision": row.get("decision"), "speedup": row.get("speedup"), "ci_low": row.get("ci_low"),
        "ci_high": row.get("ci_high"), "node": {k: node.get(k) for k in ("hostname", "cpu", "ray_node_id")}}}


def by_class(rows: list[dict[str, Any]], stack: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """The wins per machine class: the experiments measured on each class, the ones its verdict kept (each with
    the class's own estimate), the nodes, and the run's kept stack (`stack`: its ids, default kept_stack) as that
    class measured it."""
    stack_ids = set(stack) if stack is not None else {r["id"] for r in kept_stack(rows)}
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        for machine_class, result in class_results(r).items():
            entry = out.setdefault(machine_class, {"experiments": 0, "kept": [], "nodes": [], "stack_speedup": None})
            entry["experiments"] += 1
            host = (result.get("node") or {}).get("hostname")
            if host and host not in entry["nodes"]:
                entry["nodes"].append(host)
            if result.get("decision") == "keep":
                entry["kept"].append({"id": r["id"], "title": r.get("title", ""), "speedup": result.get("speedup"),
                                      "ci_low": result.get("ci_low"), "ci_high": result.get("ci_high")})
            if r["id"] in stack_ids and result.get("speedup") is not None:
                entry["stack_speedup"] = (1 + (entry["stack_speedup"] or 0)) * (1 + result["speedup"]) - 1
    return out


def experiment_llm(row: dict[str, Any]) -> dict[str, float]:
    """What one experiment spent on the model: its implementation and every repair (the ledger's `llm` column)."""
    info = row.get("llm") or {}
    parts = [info, *(v for k, v in info.items() if k.startswith("repair_") and isinstance(v, dict))]
    return {"usd": sum(float(p.get("usd") or 0) for p in parts),
            "tokens": sum(int(p.get("tokens") or 0) for p in parts),
            "steps": sum(int(p.get("steps") or 0) for p in parts)}


def llm_costs(rows: list[dict[str, Any]], meta: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Dollars and tokens per experiment and per kept win. The run's whole spend (planning and reading too) is
    the budget's record in meta.json when there is one; the experiments' own share is the ledger's. None: the
    run used no model."""
    per = [experiment_llm(r) for r in rows]
    total = ((meta or {}).get("llm_budget") or {}).get("total") or {}
    implementing = sum(p["usd"] for p in per)
    if not total.get("cost_usd") and not implementing:
        return None
    usd = float(total.get("cost_usd") or implementing)
    tokens = int((total.get("input_tokens") or 0) + (total.get("output_tokens") or 0)) or sum(p["tokens"] for p in per)
    kept = len(kept_stack(rows))
    n = len(rows)
    by_agent = {a: round(float(v.get("cost_usd") or 0), 6)
                for a, v in (((meta or {}).get("llm_budget") or {}).get("by_agent") or {}).items()}
    return {"usd_total": round(usd, 6), "tokens_total": tokens, "experiments": n,
            "usd_per_experiment": round(usd / n, 6) if n else None, "tokens_per_experiment": tokens // n if n else None,
            "usd_implementing": round(implementing, 6), "kept": kept,
            "usd_per_kept_win": round(usd / kept, 6) if kept else None, "by_agent": by_agent}


def run_figures(directory: Path, meta: dict[str, Any], rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Experiments, kept ids, best speedup and stop reason: the summary's when the run finished, else the
    ledger's (`rows`, read when not given) with partial=True."""
    summary = meta.get("summary")
    if isinstance(summary, dict) and summary:
        return {"experiments": summary.get("experiments"), "kept": list(summary.get("kept") or []),
                "best_speedup": summary.get("best_speedup"), "stop_reason": summary.get("stop_reason", ""),
                "confirmed": (summary.get("confirmation") or {}).get("speedup"), "partial": False}
    rows = ledger_rows(directory) if rows is None else rows
    kept = kept_stack(rows)
    return {"experiments": len(rows), "kept": [r["id"] for r in kept], "best_speedup": stacked_speedup(kept),
            "stop_reason": "", "confirmed": None, "partial": True}


def listed(directory: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """A run as a listing shows it: its meta with its figures; a run whose ledger cannot be read is one entry
    with status "damaged" and the sentence saying why (the listing goes on to the next run)."""
    try:
        rows = ledger_rows(directory)  # read even when the summary has the figures: a damaged ledger is said
    except LedgerUnreadable as e:
        return {**meta, "status": "damaged", "damaged": str(e),
                "figures": {"experiments": None, "kept": [], "best_speedup": None, "stop_reason": "",
                            "confirmed": None, "partial": False}}
    return {**meta, "figures": run_figures(directory, meta, rows)}


def last_state(directory: Path) -> dict[str, Any]:
    """The graph state of the run's newest checkpoint (empty when it has none)."""
    from .trace_read import checkpoint_history, state_at
    try:
        history = checkpoint_history(directory, directory.name)
        return (state_at(directory, directory.name, history[-1][0]) or {}) if history else {}
    except Exception as e:  # noqa: BLE001 - a report of a damaged run still shows its ledger; the reason is kept
        return {"_unreadable": f"{type(e).__name__}: {e}"}


def findings_by_id(state: dict[str, Any], trace: Any = None) -> dict[str, dict[str, Any]]:
    """Every finding the run made, by id: the state holds them all (an appending channel); a trace's step
    updates are the fallback for a run whose checkpoints cannot be read."""
    found = {f["id"]: f for f in state.get("findings") or [] if isinstance(f, dict) and f.get("id")}
    if trace is not None:
        for step in trace.ordered():
            update = trace.update(step)
            if not isinstance(update, dict):
                continue
            for f in update.get("findings") or []:
                if isinstance(f, dict) and f.get("id"):
                    found.setdefault(f["id"], f)
    return found


def cited_chunks(row: dict[str, Any], findings: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """What an experiment rests on, as {"finding", "claim", "id", "kind", "origin", "snippet"}: a citation is a
    finding id (resolved to the chunks that finding cites) or already a chunk citation."""
    out: list[dict[str, Any]] = []
    hypothesis = row.get("hypothesis") or {}
    for c in [*(row.get("citations") or hypothesis.get("citations") or []), *(hypothesis.get("evidence") or [])]:
        if isinstance(c, dict):
            out.append({"finding": "", "claim": "", **c})
            continue
        f = findings.get(str(c))
        if f is None:
            out.append({"finding": str(c), "claim": "", "id": "", "kind": "", "origin": "(not in this run's state)",
                        "snippet": ""})
            continue
        chunks = [x for x in f.get("citations") or [] if isinstance(x, dict)] or _port_chunks(f, hypothesis) \
            or [{"origin": "(the finding cites no chunk)"}]
        for chunk in chunks:
            out.append({"finding": f["id"], "claim": f.get("claim", ""), "id": chunk.get("id", ""),
                        "kind": chunk.get("kind", ""), "origin": chunk.get("origin", ""),
                        "snippet": chunk.get("snippet", "")})
    return out


def _port_chunks(finding: dict[str, Any], hypothesis: dict[str, Any]) -> list[dict[str, Any]]:
    """A fork-port finding cites no chunk: the fork's function it ports is what it rests on (the one this
    hypothesis ports, by the function its `where` names; every port when none matches)."""
    ports = [p for p in finding.get("ports") or [] if isinstance(p, dict)]
    symbol = str(hypothesis.get("where") or "").split()[-1:]
    ours = [p for p in ports if [p.get("symbol")] == symbol] or ports
    return [{"kind": "fork function", "origin": f"{p.get('fork', '')}: {p.get('fork_path', '')}, the whole of "
                                                f"{p.get('symbol', '')} (the tree's is in {p.get('path', '')})"}
            for p in ours]


def source_kind(row: dict[str, Any]) -> str:
    """Where the idea came from (paper, fork, backend-gap, profile, llm); ledgers written before the field
    existed have none."""
    return row.get("source_kind") or (row.get("hypothesis") or {}).get("source_kind") or ""


def collect(directory: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Everything the HTML report shows, as plain data."""
    from .trace_read import Trace, has_trace
    rows = ledger_rows(directory)
    state = last_state(directory)
    trace = Trace(directory) if has_trace(directory) else None
    findings = findings_by_id(state, trace)
    return {"directory": directory, "meta": meta, "rows": rows, "figures": run_figures(directory, meta),
            "llm": llm_costs(rows, meta),
            "state": state, "trace": trace,
            "citations": {r["id"]: cited_chunks(r, findings) for r in rows}}
