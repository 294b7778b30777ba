"""One self-contained HTML page per run (`readfirst report RUN --html FILE`, `trace export --html`, and
report.html beside the ledger at the end of every run, an interrupted one too).

What the run asked and on what (target, machine, CPUs, build configuration, noise floor, budget spent); the
experiment table, each row linking to its section (hypothesis, cited chunks, checks, A/B samples, patch, the
step that ran it); the running best; where the time went (per node, per step, per experiment); and the trace's
timeline. Plots are matplotlib figures inlined as SVG. No script, no request: the page is one file that opens
anywhere, offline.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import report
from .report_data import by_class, collect, source_kind
from .runner import read_meta
from .trace_html import CSS as TRACE_CSS
from .trace_html import timeline

CSS = TRACE_CSS + """
nav a{margin-right:1em}.partial{color:#b60;font-weight:bold}tr.keep td{background:#efe}
section.exp{border-top:1px solid #ccc;margin-top:1.5em}.plot svg{max-width:100%;height:auto}
.num{text-align:right;font-variant-numeric:tabular-nums}.snippet{font-size:12px;color:#444;white-space:pre-wrap}
"""
NODE_COLOURS = {"profile": "tab:red", "research": "tab:purple", "competitors": "tab:orange",
                "hypothesize": "tab:olive", "experiment": "tab:blue", "decide": "tab:grey"}


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _pre(text: Any) -> str:
    if not isinstance(text, str):
        text = json.dumps(text, indent=2, default=str, sort_keys=True)
    return f"<pre>{esc(text)}</pre>"


def _table(head: list[str], rows: list[list[str]], cls: list[str] | None = None) -> str:
    """A table of already-escaped cells."""
    body = "".join(f"<tr class='{(cls or [''] * len(rows))[i]}'>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>"
                   for i, r in enumerate(rows))
    return "<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + f"</tr>{body}</table>"


def _pairs(items: list[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in items) + "</table>"


def _seconds(x: float | None) -> str:
    return "" if x is None else f"{x:.1f}s"


def _plot(fig, name: str) -> str:
    return "" if fig is None else f"<div class=plot id='plot-{esc(name)}'>{report.svg(fig, name)}</div>"


def _objective(data: dict[str, Any]) -> dict[str, Any]:
    """The target's objective as the trace recorded it; a run without a trace has only the ledger's metric."""
    trace = data["trace"]
    recorded = ((trace.info.get("target") or {}).get("objective") if trace is not None else None) or {}
    metric = recorded.get("metric") or next((r["objective"] for r in data["rows"] if r.get("objective")), None) \
        or (data["meta"].get("summary") or {}).get("objective") or "tg"
    return {"metric": metric, "direction": recorded.get("direction") or "higher", "unit": recorded.get("unit", ""),
            "min_effect": recorded.get("min_effect")}


def _spent(data: dict[str, Any]) -> tuple[float | None, float]:
    """Seconds and dollars the run spent: the trace's figures, else the run's wall-clock and the ledger's LLM."""
    meta, trace = data["meta"], data["trace"]
    if trace is not None:
        figures = trace.summary()
        return figures["duration_s"], figures["cost_usd"]
    took = (meta.get("finished_at") - meta["created_at"]) if meta.get("finished_at") and meta.get("created_at") \
        else None
    return took, sum(float((r.get("llm") or {}).get("usd") or 0) for r in data["rows"])


def _project(data: dict[str, Any]) -> str:
    """The project's own name (a readfirst.toml's name, not "config", the kind of target it is)."""
    meta, trace = data["meta"], data["trace"]
    traced = ((trace.info.get("target") or {}).get("name") if trace is not None else None)
    return str(meta.get("project") or (traced if isinstance(traced, str) and traced else None)
               or meta.get("target") or (meta.get("target_spec") or {}).get("name") or "the target")


def _setup(data: dict[str, Any], objective: dict[str, Any]) -> str:
    meta, state, figures = data["meta"], data["state"], data["figures"]
    summary = meta.get("summary") or {}
    options = state.get("options") or meta.get("options") or {}
    profile = state.get("profile") or {}
    baseline = state.get("baseline") or {}
    measured_on = summary.get("measured_on") or (profile.get("details") or {}).get("setup") or \
        next((r["bench_setup"] for r in data["rows"] if r.get("bench_setup")), {})
    seconds, usd = _spent(data)
    queries = profile.get("queries") or {}
    question = (f"make {esc(_project(data))} "
                f"better on <b>{esc(objective['metric'])}</b> ({esc(objective['direction'])} is better"
                + (f", {esc(objective['unit'])}" if objective["unit"] else "") + ")")
    if queries:
        question += "<br>reading about: " + "; ".join(esc(q) for qs in queries.values() for q in qs)
    best = figures["best_speedup"]
    budget = [f"{figures['experiments']} of {options.get('budget_experiments', '?')} experiments"]
    if seconds is not None:
        budget.append(f"{seconds / 60:.1f} of {options.get('budget_minutes', '?')} minutes")
    budget.append(f"${usd:.4f} of ${options.get('budget_usd', '?')}")
    build = next((r["build"].get("config") for r in data["rows"] if (r.get("build") or {}).get("config")), None)
    items = [
        ("question", question),
        ("target", esc(" ".join(str(x) for x in (meta.get("target"), meta.get("source"), meta.get("ref") or "")
                                if x))),
        ("machine", esc(measured_on.get("cpu", ""))),
        ("CPU set", esc(", ".join(f"{k} {measured_on[k]}" for k in ("cpus", "threads") if measured_on.get(k)))),
        ("baseline", esc(f"{str(baseline.get('commit', ''))[:12]} {json.dumps(baseline.get('variant', ''))}"
                         + (f" — {baseline['note']}" if baseline.get("note") else ""))),
        ("build configuration", esc(json.dumps(build)) if build else ""),
        ("best", esc(json.dumps((state.get("best") or {}).get("variant") or summary.get("best_variant") or ""))),
        ("noise floor", esc(state.get("calibration") or summary.get("calibration") or "not calibrated")),
        ("busy machine", esc(report.host_load_text(meta.get("host_load") or summary.get("host_load")))),
        ("budget spent", esc("; ".join(budget))),
        ("outcome", esc(f"{figures['experiments']} experiments, {len(figures['kept'])} kept "
                        f"({', '.join(figures['kept']) or 'none'}); best "
                        + ("baseline" if best is None else f"{best:+.1%}"))
         + (" <span class=partial>(partial: the run did not finish; figures from its ledger)</span>"
            if figures["partial"] else "")),
        ("confirmation", esc(report.confirmation_text(state.get("confirmation") or summary.get("confirmation")))),
        ("stopped", esc(figures["stop_reason"] or state.get("stop_reason") or meta.get("status", ""))),
        ("facts", "<br>".join(esc(f) for f in profile.get("facts") or summary.get("facts") or [])),
    ]
    if state.get("_unreadable"):
        items.append(("checkpoints", esc(f"could not be read: {state['_unreadable']}")))
    items.append(("dropped candidates", _dropped(summary.get("dropped_candidates")
                                                 or (state.get("candidate_stats") or {}).get("dropped_candidates"))))
    return _pairs([(k, v) for k, v in items if v])


def _dropped(items: list[dict[str, Any]] | None) -> str:
    """Each candidate dropped before any experiment, by the function it concerns, with its rule and detail."""
    if not items:
        return ""
    lines = [esc(f"{d.get('what', '')}: {d.get('reason', '')}" + (f" ({d['detail']})" if d.get("detail") else ""))
             for d in sorted(items, key=lambda d: (d.get("reason", ""), d.get("what", "")))]
    return f"<details><summary>{len(lines)}</summary>{'<br>'.join(lines)}</details>"


def _experiment_rows(data: dict[str, Any]) -> str:
    rows = data["rows"]
    kept = set(data["figures"]["kept"])
    cells, classes = [], []
    for r in rows:
        verdict = r.get("verdict") or {}
        took = sum(v for v in (r.get("durations") or {}).values() if isinstance(v, (int, float)))
        cells.append([f"<a href='#exp-{esc(r['id'])}'>{esc(r['id'])}</a>", esc(r.get("wave", "")), esc(r["kind"]),
                      esc(source_kind(r)), esc(r["title"]),
                      esc(r["decision"] + (" (in the best)" if r["id"] in kept else "")),
                      f"<span class=num>{esc(report.speedup_text(r))}</span>",
                      esc(" · ".join(x for x in (verdict.get("gate"), verdict.get("stopped")) if x)),
                      esc(r["reason"]), f"<span class=num>{_seconds(took)}</span>"])
        classes.append("keep" if r["decision"] == "keep" else "")
    return _table(["id", "wave", "kind", "source", "hypothesis", "decision", "estimate [95% CI]", "stopped at",
                   "why", "time"], cells, classes)


def _classes(data: dict[str, Any]) -> str:
    """The wins per machine class of a Ray run, and the nodes whose own noise kept them out of verdicts; empty
    for a run measured on the driver's machine alone."""
    classes = by_class(data["rows"], data["figures"]["kept"])
    nodes = data["meta"].get("ray_nodes") or []
    if not classes and not nodes:
        return ""
    cells = []
    for machine_class, entry in classes.items():
        stack = entry["stack_speedup"]
        cells.append([esc(machine_class), esc(", ".join(entry["nodes"])), str(entry["experiments"]),
                      esc(", ".join(f"{k['id']} {report.speedup_text(k)}" for k in entry["kept"]) or "none"),
                      f"<span class=num>{'' if stack is None else f'{stack:+.1%}'}</span>"])
    out = _table(["class", "nodes", "experiments", "kept there", "the kept stack there"], cells) if cells else ""
    if nodes:
        out += _table(["node", "machine", "class", "its own A/A noise", "used for verdicts"],
                      [[esc(n["ray_node_id"][:12]), esc(f"{n.get('hostname')} · {n.get('cpu')}"),
                        esc(n.get("class") or ""), esc(n.get("text") or ""),
                        esc("yes" if n.get("used") else f"no: {n.get('excluded')}")] for n in nodes])
    return out


def _time(data: dict[str, Any]) -> str:
    trace, rows = data["trace"], data["rows"]
    parts = []
    colours = {**NODE_COLOURS, "wait": "lightgrey"}
    if trace is not None and trace.steps:
        per_step = [(f"#{s.step} {s.node}", _step_parts(s)) for s in trace.ordered()]
        totals: dict[str, dict[str, float]] = {}
        for s, (_, split) in zip(trace.ordered(), per_step):
            totals[s.node] = {k: totals.get(s.node, {}).get(k, 0.0) + v for k, v in split.items()}
        whole = sum(sum(t.values()) for t in totals.values()) or 1.0
        by_node = [(f"{node} {split[node] / whole:.0%}" + (f" (+{split['wait'] / whole:.0%} waiting)"
                                                          if split["wait"] >= 0.005 * whole else ""), split)
                   for node, split in sorted(totals.items(), key=lambda kv: -kv[1][kv[0]])]
        parts.append(_plot(report.time_figure(by_node, colours, "time per node (all its steps)"), "nodes"))
        parts.append(_plot(report.time_figure(per_step, colours, "time per step"), "steps"))
    per_experiment = [(r["id"], {part: (r.get("durations") or {}).get(part, 0.0)
                                 for part, _ in report.EXPERIMENT_PARTS}) for r in rows]
    parts.append(_plot(report.time_figure(per_experiment, dict(report.EXPERIMENT_PARTS),
                                          "time per experiment: implement, build, checks, measurement, waiting "
                                          "for the machine"), "experiments"))
    return "".join(parts) or "<p>nothing timed yet</p>"


def _step_parts(step: Any) -> dict[str, float]:
    """A step's seconds: its node's work, and its waits for the machine lock (step_end's waited_s) apart."""
    took = step.duration_s or 0.0
    waited = (step.end or {}).get("waited_s")
    waited = min(max(float(waited), 0.0), took) if isinstance(waited, (int, float)) else 0.0
    return {step.node: took - waited, "wait": waited}


def _durations_text(durations: dict[str, Any] | None) -> str:
    return ", ".join(f"{report.PART_LABELS.get(k, k)} {v:.1f}s" for k, v in (durations or {}).items()
                     if isinstance(v, (int, float)) and (v or k != "wait"))


def _experiment(data: dict[str, Any], r: dict[str, Any], metric: str, steps_of: dict[str, int]) -> str:
    hypothesis = r.get("hypothesis") or {}
    verdict = r.get("verdict") or {}
    head = (f"<h3>{esc(r['id'])}: {esc(r['title'])} — {esc(r['decision'])} "
            f"{esc(report.speedup_text(r))}</h3>")
    facts = [("kind", esc(r["kind"])), ("source", esc(source_kind(r) or hypothesis.get("source", ""))),
             ("rationale", esc(hypothesis.get("rationale", ""))), ("why", esc(r["reason"])),
             ("stopped at", esc(" · ".join(x for x in (verdict.get("gate"), verdict.get("stopped")) if x))),
             ("pairs", esc(verdict.get("pairs_used", ""))),
             ("time", esc(_durations_text(r.get("durations"))))]
    if r["id"] in steps_of:
        facts.append(("trace", f"<a href='#step-{steps_of[r['id']]}'>step {steps_of[r['id']]}</a>"))
    parts = [head, _pairs([(k, v) for k, v in facts if v])]
    cites = data["citations"].get(r["id"]) or []
    if cites:
        parts.append("<h4>cited</h4>" + _table(
            ["finding", "kind", "chunk (repo, path, lines)", "what it says"],
            [[esc(c.get("finding")) + (f"<br><span class=k>{esc(c['claim'])}</span>" if c.get("claim") else ""),
              esc(c.get("kind")), esc(c.get("origin")), f"<div class=snippet>{esc(c.get('snippet'))}</div>"]
             for c in cites]))
    build = r.get("build") or {}
    if build:
        parts.append("<h4>build</h4>" + _pairs([
            ("result", esc(f"{'ok' if build.get('ok') else 'failed'} ({build.get('stage')}), "
                           f"{build.get('duration_s')}s" + (", reused" if build.get("reused") else ""))),
            ("configuration", esc(json.dumps(build.get("config")))),
            ("log", f"<details><summary>tail</summary>{_pre(build.get('log_tail', ''))}</details>")]))
    checks = (r.get("checks") or {}).get("results") or []
    if checks:
        parts.append("<h4>checks</h4>" + _table(
            ["check", "passed", "reason", "time", "evidence"],
            [[esc(c.get("name")), esc("yes" if c.get("passed") else "no"), esc(c.get("reason")),
              esc(_seconds(c.get("duration_s"))),
              f"<details><summary>evidence</summary>{_pre(c.get('evidence'))}</details>" if c.get("evidence")
              else ""] for c in checks]))
    samples = report.samples_figure(r, metric)
    if samples is not None:
        effects = verdict.get("effects") or {}
        parts.append("<h4>A/B samples</h4>" + _plot(samples, f"samples-{r['id']}") + _table(
            ["metric", "estimate", "95% interval", "pairs"],
            [[esc(m), esc(f"{e.get('estimate', 0):+.2%}"), esc(f"[{e.get('low', 0):+.2%}, {e.get('high', 0):+.2%}]"),
              esc(e.get("n_pairs"))] for m, e in sorted(effects.items())]))
    if r.get("patch"):
        parts.append(f"<h4>patch</h4><details><summary>{len(r['patch'].splitlines())} lines</summary>"
                     f"{_pre(r['patch'])}</details>")
    parts.append("<p><a href='#experiments'>back to the table</a></p>")
    return f"<section class=exp id='exp-{esc(r['id'])}'>" + "".join(parts) + "</section>"


def render(data: dict[str, Any]) -> str:
    meta, rows, trace = data["meta"], data["rows"], data["trace"]
    run_id = meta.get("run_id") or data["directory"].name
    objective = _objective(data)
    steps_of = {}
    if trace is not None:
        for s in trace.ordered():
            for i in s.experiment_ids():
                steps_of.setdefault(i, s.step)
    baseline_metrics = (data["state"].get("baseline") or {}).get("metrics") or \
        ((meta.get("summary") or {}).get("baseline") or {}).get("metrics") or {}
    best = report.best_figure(rows, baseline_metrics, metric=objective["metric"],
                              lower_is_better=objective["direction"] == "lower")
    sections = [("setup", "the run", _setup(data, objective)),
                ("experiments", "experiments", _experiment_rows(data) if rows else "<p>no experiment yet</p>"),
                ("best", "running best", _plot(best, "best") or "<p>no experiment yet</p>"),
                *([("classes", "by machine class", classes)] if (classes := _classes(data)) else []),
                ("time", "where the time went", _time(data)),
                ("details", "each experiment", "".join(_experiment(data, r, objective["metric"], steps_of)
                                                       for r in rows) or "<p>no experiment yet</p>")]
    if trace is not None:
        sections.append(("timeline", "timeline (every step, every call)",
                         timeline(trace, frozenset(r["id"] for r in rows))))
    nav = "<nav>" + "".join(f"<a href='#{key}'>{esc(title)}</a>" for key, title, _ in sections) + "</nav>"
    body = "".join(f"<h2 id='{key}'>{esc(title)}</h2>{content}" for key, title, content in sections)
    title = f"readfirst run {run_id}"
    status = esc(meta.get("status", "unknown")) + (" <span class=partial>partial</span>"
                                                   if data["figures"]["partial"] else "")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{CSS}</style>"
            f"</head><body><h1>{esc(title)}</h1><p>status: {status}; written "
            f"{esc(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>{nav}{body}</body></html>\n")


def write_html_report(directory: Path, dest: Path | None = None) -> Path:
    """Write the run's page to `dest` (default: report.html in the run directory)."""
    dest = dest or directory / "report.html"
    page = render(collect(directory, read_meta(directory)))
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(dest)  # a reader never sees half a page
    return dest


def write_after_run(directory: Path, say: Callable[[str], None]) -> Path | None:
    """The end of `readfirst run`, finished or not: the page is written, and a failure to write it is said but
    does not replace the run's own outcome (an interrupt, an error) with its own."""
    try:
        dest = write_html_report(directory)
    except Exception as e:  # noqa: BLE001 - said, with its type; the run's result stands
        say(f"the HTML report could not be written: {type(e).__name__}: {e}")
        return None
    say(f"report: {dest}")
    return dest
