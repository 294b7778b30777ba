"""`readfirst trace ...`: list traced runs, show what each step saw and did, replay, fork, export."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from .cli_common import AppContext, app_context, print_table
from .runner import list_runs, new_run_id, read_meta, run_dir
from .trace import TraceError
from .trace_read import Step, Trace, has_trace, state_at

trace_app = typer.Typer(help="Runs step by step: what each agent was given, asked, got back and ran; replay, "
                             "fork and export.", no_args_is_help=True)


def _open(app: AppContext, run_id: str) -> Trace:
    directory = run_dir(app.paths, run_id)
    if not has_trace(directory):
        raise TraceError(f"run {run_id} has no trace (it ran before tracing was on)")
    return Trace(directory)


def _money(x: float | None) -> str:
    return "" if not x else f"${x:.4f}"


@trace_app.command("list")
def list_(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Runs with their status, duration, experiments, best speedup and LLM cost (a run that did not finish:
    its experiments, keeps and best from the ledger, marked partial)."""
    from .report_data import listed
    app = app_context(ctx)
    items = []
    for meta in list_runs(app.paths):
        directory = app.paths.runs / meta["run_id"]
        figures = Trace(directory, checkpoints=False).summary() if has_trace(directory) else {}
        entry = listed(directory, meta)
        done = entry["figures"]
        items.append({"run_id": meta["run_id"], "status": entry.get("status"), "traced": bool(figures),
                      **({"damaged": entry["damaged"]} if "damaged" in entry else {}),
                      "parent": (meta.get("parent") or {}).get("run_id"), "duration_s": figures.get("duration_s"),
                      "steps": figures.get("steps"), "experiments": done["experiments"], "kept": done["kept"],
                      "best_speedup": done["best_speedup"], "partial": done["partial"],
                      "cost_usd": figures.get("cost_usd")})
    if as_json:
        app.emit_json(items)
        return
    table = Table(title=f"runs in {app.paths.runs}")
    for col in ("run", "status", "parent"):  # ids a user copies into show, replay, fork, report: never cut
        table.add_column(col, no_wrap=True)
    for col in ("duration", "steps", "experiments", "kept", "best", "cost"):
        table.add_column(col, overflow="fold")
    for i in items:
        best = i["best_speedup"]
        table.add_row(i["run_id"], str(i["status"]) + (" (partial)" if i["partial"] and i["experiments"] else ""),
                      i["parent"] or "", "" if i["duration_s"] is None else f"{i['duration_s']:.0f}s",
                      "untraced" if not i["traced"] else str(i["steps"]), str(i["experiments"] or 0),
                      str(len(i["kept"])), "" if best is None else f"{best:+.1%}", _money(i["cost_usd"]))
    print_table(app.console, table)


def _step_row(step: Step, t0: float) -> dict[str, Any]:
    return {"step": step.step, "node": step.node, "status": step.status, "start_s": round(step.at - t0, 2),
            "duration_s": step.duration_s, "llm": step.count("llm"), "kb": step.count("kb"),
            "target": step.count("target"), "sandbox": step.count("sandbox"), "cost_usd": step.cost_usd,
            "experiments": step.experiment_ids(), "starts_from": step.starts_from, "ends_at": step.ends_at}


def _outcome(trace: Trace, step: Step) -> str:
    end = step.end or {}
    if "error" in end:
        return f"{end['error']['type']}: {end['error']['message'][:80]}"
    if step.end is None:
        return "no end recorded: still running, or the run stopped inside this step"
    update = trace.update(step) or {}
    for r in update.get("wave_results") or []:
        return f"{r.get('id')} {r.get('decision')}: {r.get('title')}"
    if update.get("stop_reason"):
        return f"stop: {update['stop_reason']}"
    return ", ".join(sorted(update)) or "no change"


@trace_app.command("show")
def show(ctx: typer.Context, run_id: str = typer.Argument(..., help="A run id (see `readfirst trace list`)."),
         step: Optional[int] = typer.Option(None, "--step", help="Show this step in full."),
         node: Optional[str] = typer.Option(None, "--node", help="Only the steps of this node."),
         experiment: Optional[str] = typer.Option(None, "--experiment", help="The step that ran this experiment "
                                                                             "(E001...), in full."),
         as_json: bool = typer.Option(False, "--json")) -> None:
    """A timeline of the run's steps, or one step with everything it saw and did."""
    app = app_context(ctx)
    trace = _open(app, run_id)
    steps = trace.ordered()
    t0 = min((s.at for s in steps), default=0.0)
    if experiment is not None:
        found = [s for s in steps if experiment in s.experiment_ids()]
        if not found:
            raise TraceError(f"no step of run {run_id} ran experiment {experiment}")
        step = found[0].step
    if step is not None:
        _show_step(app, trace, trace.step(step), t0, as_json)
        return
    if node is not None:
        steps = [s for s in steps if s.node == node]
        if not steps:
            raise TraceError(f"run {run_id} has no step of node {node!r} "
                             f"(its nodes: {', '.join(sorted({s.node for s in trace.ordered()}))})")
    if as_json:
        app.emit_json({"run": read_meta(trace.directory), "summary": trace.summary(),
                       "steps": [{**_step_row(s, t0), "outcome": _outcome(trace, s)} for s in steps]})
        return
    table = Table(title=f"run {run_id}: {len(trace.steps)} steps")
    table.add_column("#", no_wrap=True)  # what --step takes
    for col in ("node", "start", "took", "llm", "kb", "target", "sandbox", "cost", "outcome"):
        table.add_column(col, overflow="fold")
    for s in steps:
        r = _step_row(s, t0)
        table.add_row(str(s.step), s.node, f"+{r['start_s']:.1f}s",
                      "?" if s.duration_s is None else f"{s.duration_s:.1f}s", str(r["llm"] or ""), str(r["kb"] or ""),
                      str(r["target"] or ""), str(r["sandbox"] or ""), _money(s.cost_usd),
                      escape(_outcome(trace, s)))
    print_table(app.console, table)


def _show_step(app: AppContext, trace: Trace, step: Step, t0: float, as_json: bool) -> None:
    given = trace.blob(step.payload) if step.payload is not None else state_at(trace.directory, trace.thread_id,
                                                                               step.starts_from)
    calls = [{**c, **{k: trace.blob(c[k]) for k in ("request", "response", "results", "args", "result") if k in c}}
             for c in step.calls]
    if as_json:
        app.emit_json({**_step_row(step, t0), "input_digest": step.input_digest, "input": given,
                       "update": trace.update(step), "error": (step.end or {}).get("error"), "calls": calls})
        return
    out = app.console
    out.print(f"[bold]step {step.step}: {step.node}[/bold] ({step.status}, "
              f"{'?' if step.duration_s is None else f'{step.duration_s:.2f}s'}"
              f"{', ' + _money(step.cost_usd) if step.cost_usd else ''})")
    out.print(f"checkpoint {step.starts_from} → {step.ends_at or '(none)'}; input digest {step.input_digest}")
    if isinstance(given, dict):
        shown = {k: given[k] for k in ("hypothesis", "wave", "options", "best", "research_round", "experiments",
                                       "tried", "stop_reason") if k in given}
        out.print("[bold]given[/bold] (keys: " + ", ".join(sorted(given)) + ")")
        out.print(escape(_text(shown, 3000)))
    if "error" in (step.end or {}):
        out.print(f"[bold red]error[/bold red] {escape(json.dumps(step.end['error']))}")
    elif step.end is not None:
        out.print("[bold]state update[/bold]")
        out.print(escape(_text(trace.update(step), 4000)))
    for c in calls:
        out.print(escape(_describe(c)))


def _text(value: Any, limit: int) -> str:
    text = json.dumps(value, indent=2, default=str)
    return text if len(text) <= limit else text[:limit] + f"\n[... {len(text) - limit} more characters]"


def _describe(c: dict[str, Any]) -> str:
    kind, lead = c["kind"], ("    " if c.get("nested") else "") + f"[{c.get('seq')}] "
    if kind == "llm":
        response = c.get("response") or {}
        text = "\n".join(b.get("text", "") for b in response.get("content", []) if b.get("type") == "text")
        last = ((c.get("request") or {}).get("messages") or [{}])[-1].get("content")
        return (f"{lead}LLM {c.get('agent')} {c.get('model')}: {c.get('input_tokens')}+{c.get('output_tokens')} "
                f"tokens, {_money(c.get('cost_usd'))}, {c.get('latency_s') or 0:.2f}s"
                + (f", tools {c['tool_calls']}" if c.get("tool_calls") else "")
                + (f", error {c['error']}" if c.get("error") else "")
                + f"\n      asked: {str(last)[:600]}\n      answered: {text[:1500]}")
    if kind == "kb" and "ids" in c:
        origins = "; ".join(f"{o.get('path')}:{o.get('start_line')}-{o.get('end_line')} {o.get('symbol') or ''}"
                            for o in c.get("origins") or [])
        return f"{lead}KB read {len(c.get('ids') or [])} cited chunks: {origins}"
    if kind == "kb":
        origins = "; ".join(f"{o.get('kind')} {o.get('repo') or ''} {o.get('path')}:{o.get('start_line')}-"
                            f"{o.get('end_line')} {o.get('symbol') or ''}".strip() for o in c.get("origins") or [])
        return f"{lead}KB {c.get('query')!r} where {c.get('where')} k={c.get('k')}: {origins}"
    if kind == "target":
        result = (c.get("result") or {}).get("data")
        shown = ("ok", "stage", "duration_s", "mean_kld", "samples")
        brief = {k: result[k] for k in shown if k in result} if isinstance(result, dict) else result
        return f"{lead}target.{c.get('method')} {c.get('duration_s')}s → {_text(c.get('error') or brief, 600)}"
    if kind == "sandbox":
        tail = "\n".join((c.get("log_tail") or "").splitlines()[-8:])
        return (f"{lead}sandbox `{c.get('command', '')[:300]}` exit {c.get('exit_code')} {c.get('duration_s')}s"
                f"{' (timed out)' if c.get('timed_out') else ''}; log {c.get('log_path')}\n{tail}")
    if kind == "say":
        return f"{lead}· {c.get('message')}"
    fields = {k: v for k, v in c.items() if k not in ("event", "kind", "step", "seq", "at", "nested")}
    return f"{lead}{kind} {json.dumps(fields, default=str)[:300]}"


@trace_app.command("replay")
def replay_cmd(ctx: typer.Context, run_id: str = typer.Argument(...),
               from_step: Optional[int] = typer.Option(None, "--from", min=1, help="Start at this step's checkpoint."),
               until_step: Optional[int] = typer.Option(None, "--until", min=1, help="Stop after this step."),
               rerun_sandbox: bool = typer.Option(False, "--rerun-sandbox", help="Build and benchmark for real; "
                                                                                 "LLM answers stay recorded."),
               as_json: bool = typer.Option(False, "--json")) -> None:
    """Re-execute the graph from a checkpoint with the recorded LLM answers and sandbox results (no API call,
    no build) and report the first step whose update differs from the recording. Exit 1 when one does."""
    from dataclasses import asdict

    from .trace_replay import replay
    app = app_context(ctx)
    trace = _open(app, run_id)
    target = None
    if rerun_sandbox:
        from .deps import compose_target
        from .runner import spec_of
        _, target = compose_target(app.paths, spec_of(read_meta(trace.directory)), say=app.say)
    try:
        report = replay(trace.directory, from_step=from_step, until_step=until_step, target=target,
                        caches=(app.paths.cache,))
    except sqlite3.DatabaseError as e:  # a run folder is data from anywhere: damaged, it is said, not a traceback
        raise TraceError(f"run {run_id}'s checkpoints or ledger cannot be read ({str(e)[:200]}), so it cannot be "
                         f"replayed; `readfirst trace show {run_id}` still shows what its trace recorded") from e
    if as_json:
        app.emit_json({**asdict(report), "identical": report.identical})
    else:
        steps = report.steps
        span = f"steps {steps[0]['step']}..{steps[-1]['step']}" if steps else "no step"
        served = ", ".join(f"{k} {v}" for k, v in sorted(report.served.items())) or "nothing"
        app.console.print(f"replayed {span} of run {run_id} from checkpoint {report.checkpoint_id}; "
                          f"served from the recording: {served}")
        d = report.divergence
        if d is None and report.rerun_sandbox:
            app.console.print(f"[green]same decisions[/green]: {sum(s['same'] for s in steps)} steps, rebuilt and "
                              f"measured again, gave the recorded updates up to the measured numbers")
        elif d is None:
            app.console.print(f"[green]identical[/green]: {sum(s['same'] for s in steps)} steps gave the recorded "
                              f"updates")
        else:
            app.console.print(f"[bold red]diverges at step {d.step} ({d.node})[/bold red]: {escape(d.reason)}")
            for key, both in d.differences.items():
                app.console.print(f"  {key}:\n    recorded: {escape(_text(both['recorded'], 800))}\n"
                                  f"    replayed: {escape(_text(both['replayed'], 800))}")
    if not report.identical:
        raise typer.Exit(1)


@trace_app.command("fork")
def fork_cmd(ctx: typer.Context, run_id: str = typer.Argument(...),
             from_step: int = typer.Option(..., "--from", min=1, help="Start from this step's checkpoint."),
             budget_experiments: Optional[int] = typer.Option(None, "--budget-experiments", min=1),
             budget_minutes: Optional[float] = typer.Option(None, "--budget-minutes", min=1),
             budget_usd: Optional[float] = typer.Option(None, "--budget-usd", min=0),
             workers: Optional[int] = typer.Option(None, "--workers", min=1),
             n_prompt: Optional[int] = typer.Option(None, "-p", "--n-prompt", min=1,
                                                    help="llama.cpp: prompt tokens per benchmark."),
             n_gen: Optional[int] = typer.Option(None, "-n", "--n-gen", min=1,
                                                 help="llama.cpp: generated tokens per benchmark."),
             threads: Optional[int] = typer.Option(None, "-t", "--threads", min=1,
                                                   help="llama.cpp: threads of a baseline profiled anew."),
             max_runs: Optional[int] = typer.Option(None, "--max-runs", min=6,
                                                    help="Benchmark runs per candidate at most (see `run "
                                                         "--help`)."),
             calibration_pairs: Optional[int] = typer.Option(None, "--calibration-pairs", min=0),
             max_research_rounds: Optional[int] = typer.Option(None, "--max-research-rounds", min=1),
             kinds: list[str] = typer.Option([], "--kind", help="Only these kinds of experiment (repeatable)."),
             prepare_only: bool = typer.Option(False, "--prepare-only", help="Create the run; continue it later "
                                                                             "with `readfirst run --resume`."),
             as_json: bool = typer.Option(False, "--json")) -> None:
    """A new run from an earlier run's checkpoint, with changed options; its meta.json names its parent."""
    from .trace_fork import fork_run
    app = app_context(ctx)
    parent = _open(app, run_id).directory
    target_overrides = {k: v for k, v in dict(n_prompt=n_prompt, n_gen=n_gen, threads=threads).items()
                        if v is not None}
    overrides = {k: v for k, v in dict(budget_experiments=budget_experiments, budget_minutes=budget_minutes,
                                       budget_usd=budget_usd, workers=workers, max_runs=max_runs, calibration_pairs=calibration_pairs,
                                       max_research_rounds=max_research_rounds).items() if v is not None}
    if kinds:
        from .cli_run import _check_kinds
        overrides["kinds"] = list(_check_kinds(kinds))
    meta = fork_run(parent, app.paths.runs / new_run_id(), from_step=from_step, overrides=overrides,
                    target_overrides=target_overrides)
    app.say(f"run {meta['run_id']} forked from {run_id} at step {from_step} ({meta['parent']['node']})")
    if prepare_only:
        if as_json:
            app.emit_json(meta)
        else:
            app.console.print(f"continue it with `readfirst run --resume {meta['run_id']}`")
        return
    # `readfirst run --resume NEW_ID` itself, parsed as the command line would be: every other option keeps its
    # default, and the same paths and console are used.
    from . import cli_run
    holder = typer.Typer()
    cli_run.register(holder)
    args = ["run", "--resume", meta["run_id"], *(["--offline"] if meta["offline"] else []),
            *(["--json"] if as_json else [])]
    typer.main.get_command(holder).main(args=args, standalone_mode=False, obj=app)


@trace_app.command("export")
def export_cmd(ctx: typer.Context, run_id: str = typer.Argument(...),
               html_file: Path = typer.Option(..., "--html", dir_okay=False, help="Where to write the page."),
               as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON.")) -> None:
    """The run's self-contained HTML page (no network needed to view it), the same as `readfirst report RUN
    --html`: the experiments, their plots and where the time went, then the timeline, each step expandable."""
    from .report_html import write_html_report
    app = app_context(ctx)
    trace = _open(app, run_id)
    page = write_html_report(trace.directory, html_file)
    if as_json:
        app.emit_json({"run_id": run_id, "html": str(page), "bytes": page.stat().st_size})
    else:
        app.console.print(f"wrote {page}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.add_typer(trace_app, name="trace")
