"""`readfirst run`, `readfirst runs`, `readfirst report`: the research-driven loop and what it leaves behind."""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import ReadfirstError
from ..knowledge_base.papers import missing_document
from ..sandbox.machine_lock import set_run
from ..targets.llama_cpp.model import validate_gguf
from .cli_common import AppContext, app_context
from .cli_sandbox import _check_quant
from .ledger import Ledger
from .report import confirmation_text, experiment_table, full_reasons, host_load_text
from .runner import execute, list_runs, new_run_id, read_meta, run_dir, write_meta


def run(ctx: typer.Context,
        target: Optional[str] = typer.Option(None, "--target", help="What to optimize: llama.cpp, or config (a "
                                                                   "project its readfirst.toml describes). "
                                                                   "Default: config when --target-config is given "
                                                                   "or the source has a readfirst.toml, else "
                                                                   "llama.cpp."),
        target_config: Optional[Path] = typer.Option(None, "--target-config", dir_okay=False,
                                                     help="A readfirst.toml (the config target)."),
        source: str = typer.Option("llama.cpp", "--source", help="llama.cpp (the pinned sdist), a git URL, or a "
                                                                "local path (a project with a readfirst.toml "
                                                                "at its root is the config target). With "
                                                                "--target-config it replaces the file's "
                                                                "[target] source, which may only name the "
                                                                "file's own folder or one below it."),
        ref: Optional[str] = typer.Option(None, "--ref", help="Git ref with a git URL or repository path."),
        model: Optional[Path] = typer.Option(None, "--model", help="llama.cpp: a real GGUF instead of the "
                                                                   "synthetic model."),
        quant: str = typer.Option("Q4_0", "--quant", callback=_check_quant, help="llama.cpp: the synthetic "
                                                                                 "model's quantization."),
        budget_experiments: int = typer.Option(6, "--budget-experiments", min=1, help="Stop after N experiments."),
        budget_minutes: float = typer.Option(120, "--budget-minutes", min=1, help="Stop after M minutes."),
        budget_usd: float = typer.Option(5.0, "--budget-usd", min=0, help="Stop once the LLM spent X dollars."),
        workers: int = typer.Option(1, "--workers", min=1, help="Experiments per wave (builds in parallel, "
                                                                "each benchmark alone on the machine)."),
        forks: list[str] = typer.Option([], "--fork", help="A fork to read before researching (ik_llama.cpp, a "
                                                           "path or a git URL), against the target's source."),
        fork_subdirs: list[str] = typer.Option([], "--fork-subdir", help="Read only these folders of the forks "
                                                                         "(repeatable; llama.cpp default: "
                                                                         "ggml/src)."),
        as_trees: Optional[bool] = typer.Option(None, "--as-trees/--by-commits",
                                                help="Compare the forks with the source file by file, or by their "
                                                     "git history. Default: history for git forks, file by file "
                                                     "for vendored trees and the pinned sdists."),
        papers: list[str] = typer.Option([], "--papers", help="arXiv query, id or local file to read first."),
        reading_list: bool = typer.Option(True, "--reading-list/--no-reading-list",
                                          help="Read the target's curated reading list first (llama.cpp: papers "
                                               "on CPU inference, offline notes)."),
        backend_gaps: bool = typer.Option(True, "--backend-gaps/--no-backend-gaps",
                                          help="Read what the target's other backends implement and its CPU "
                                               "backend lacks (llama.cpp: CUDA, Metal, Vulkan)."),
        ray_address: Optional[str] = typer.Option(None, "--ray", envvar="READFIRST_RAY_ADDRESS",
                                                  help="Run each experiment on a node of this Ray cluster "
                                                       "(host:port, or auto for the one this machine belongs "
                                                       "to), one experiment per node at a time."),
        ray_token_file: Optional[Path] = typer.Option(None, "--ray-token-file", envvar="READFIRST_RAY_TOKEN_FILE",
                                                      dir_okay=False,
                                                      help="With --ray: the file holding the cluster's token "
                                                           "(deploy/ writes ~/.readfirst-ray-token on each node). "
                                                           "readfirst joins only clusters started with "
                                                           "RAY_AUTH_MODE=token; without this option Ray's own "
                                                           "RAY_AUTH_TOKEN or ~/.ray/auth_token is used."),
        ray_classes: list[str] = typer.Option([], "--ray-class", envvar="READFIRST_RAY_CLASS",
                                              help="With --ray: only nodes carrying this Ray resource (a machine "
                                                   "class, e.g. x86-avx512 as deploy/ tags them). Repeatable: "
                                                   "every experiment is then measured on a node of each class "
                                                   "and kept only when each class keeps it."),
        node_noise_max: Optional[float] = typer.Option(None, "--node-noise-max", min=0.0,
                                                       help="With --ray: a node whose own A/A calibration (the "
                                                            "run's --calibration-pairs, before its first "
                                                            "experiment) shows a pair SD above this many percent "
                                                            "is not used for verdicts. Default: twice the run's "
                                                            "own noise floor."),
        chroma_url: Optional[str] = typer.Option(None, "--chroma-url", envvar="READFIRST_CHROMA_URL",
                                                 help="A Chroma server for the knowledge base (default: embedded, "
                                                      "in the data directory)."),
        offline: bool = typer.Option(False, "--offline", help="No LLM: fork hunks and the target's build and "
                                                              "runtime variants."),
        kinds: list[str] = typer.Option([], "--kind", help="Only these kinds of experiment (repeatable): llm, "
                                                           "patch, build, runtime. Default: all."),
        llm_model: str = typer.Option("claude-sonnet-4-6", "--llm-model", envvar="READFIRST_LLM_MODEL",
                                      help="Anthropic model for the agents."),
        llm_max_reply: Optional[int] = typer.Option(None, "--llm-max-reply", envvar="READFIRST_LLM_MAX_REPLY", min=16,
                                                    help="Cap every model reply at N tokens, whatever a role asks "
                                                         "for (a local model writes tens of tokens per second)."),
        n_prompt: int = typer.Option(512, "-p", "--n-prompt", min=1, help="llama.cpp: prompt tokens per "
                                                                         "benchmark."),
        n_gen: int = typer.Option(128, "-n", "--n-gen", min=1, help="llama.cpp: generated tokens per benchmark."),
        threads: int = typer.Option(2, "-t", "--threads", min=1, help="llama.cpp: benchmark threads."),
        max_runs: int = typer.Option(62, "--max-runs", min=6, help="Benchmark runs per candidate at most, "
                                                                   "warm-ups included. The keep rule is "
                                                                   "sequential: a clear win or loss is decided "
                                                                   "in a block or two of 4 runs, a flat one "
                                                                   "given up as futile; the cap bounds the rest."),
        calibration_pairs: int = typer.Option(8, "--calibration-pairs", min=0, help="A/A pairs of the objective "
                                                                                    "for the noise floor, which "
                                                                                    "every verdict pools (0: "
                                                                                    "skip; verdicts then rest on "
                                                                                    "their own pairs)."),
        resume: Optional[str] = typer.Option(None, "--resume", help="Continue an interrupted run by its id."),
        as_json: bool = typer.Option(False, "--json", help="Print the final summary as JSON.")) -> None:
    """Read, hypothesize, experiment and keep what wins, until the budget is spent.

    Without ANTHROPIC_API_KEY pass --offline: the loop then runs real experiments from fork hunks and the
    target's build and runtime variants. Ctrl-C saves; `--resume RUN_ID` continues where it stopped.
    """
    from ..targets import make_spec
    from . import deps as deps_root  # the composition root; looked up at call time (tests put stand-ins there)
    from .runner import spec_of
    from .trace import start_tracing
    from .workflow import RunDeps, RunOptions
    app = app_context(ctx)
    if model is not None:
        validate_gguf(model)  # before any work starts
    previous = read_meta(run_dir(app.paths, resume), strict=True) if resume else {}
    if previous.get("status") == "finished":  # before the key: a finished run needs none, and is not resumed
        raise ReadfirstError(f"run {resume} has finished; see `readfirst report {resume}`")
    offline = previous.get("offline", offline)  # a resumed run keeps its mode
    if not offline and not os.environ.get("ANTHROPIC_API_KEY"):
        raise ReadfirstError("no ANTHROPIC_API_KEY is set: set it, or pass --offline to run without an LLM")
    for item in papers:
        if (missing := missing_document(item)) is not None:  # not an arXiv search that ends in a connection error
            raise ReadfirstError(f"--papers {missing}")
    if ray_address:
        check_ray_address(ray_address)
    if resume:
        directory = run_dir(app.paths, resume)
        meta = previous
        options = None
        spec = spec_of(meta)
        run_id = resume
        ignored = _ignored_on_resume(ctx)
        app.say(f"resuming run {run_id}" + (f" with the options it started with; ignored: {', '.join(ignored)}"
                                            if ignored else ""))
    else:
        # --source with --target-config replaces the file's own source (which may only name its own folder)
        spec = make_spec(target, source=source, ref=ref, config_file=target_config,
                         source_given=getattr(ctx.get_parameter_source("source"), "name", "DEFAULT") != "DEFAULT",
                         options={"model": str(model.resolve()) if model else None, "quant": quant,
                                  "n_prompt": n_prompt, "n_gen": n_gen, "threads": threads})
        project = spec["name"]
        if spec["name"] == "config":
            from ..targets.config_file import load_config
            project = load_config(spec["config_file"], spec.get("source_override")).name  # a bad file: first
            if ref is not None and not spec.get("source_override"):
                raise ReadfirstError("--ref does not apply to a readfirst.toml project, which builds the ref its "
                                     "[target] names (its folder's HEAD when none): set ref there, or pass "
                                     "--target-config FILE with --source and --ref")
        options = RunOptions(budget_experiments=budget_experiments, budget_minutes=budget_minutes,
                             budget_usd=budget_usd, workers=workers, offline=offline,
                             calibration_pairs=calibration_pairs, max_runs=max_runs, kinds=_check_kinds(kinds))
        run_id = new_run_id()
        directory = app.paths.runs / run_id
        directory.mkdir(parents=True)  # only now: a refused option leaves no run folder behind
        meta = {"run_id": run_id, "created_at": time.time(), "source": source, "ref": ref, "target": spec["name"],
                "project": project,  # what the page names: a readfirst.toml's own name
                "target_spec": spec, "model": str(model) if model else None, "quant": quant, "forks": forks,
                "papers": papers, "as_trees": as_trees, "chroma_url": chroma_url,
                "reading_list": reading_list, "backend_gaps": backend_gaps,
                "fork_subdirs": fork_subdirs or (["ggml/src"] if spec["name"] == "llama.cpp" else []),
                "offline": offline, "status": "starting",
                # a run killed before its first checkpoint resumes with these, and with its own model and budget
                "options": asdict(options), "budget_usd": budget_usd}
        if not offline:
            meta.update(llm_model=llm_model, llm_max_reply=llm_max_reply)
        write_meta(directory, meta)
        app.say(f"run {run_id} → {directory}")
    set_run(run_id)  # named in this process's machine-lock records: another run waiting says who holds it
    try:
        sandbox, tgt = deps_root.compose_target(app.paths, spec, say=app.say)
        kb = deps_root.open_knowledge_base(app.paths, forks=meta.get("forks", []), papers=meta.get("papers", []),
                                           upstream=tgt.describe().get("source") or spec.get("source", source),
                                           subdirs=meta.get("fork_subdirs") or [], say=app.say,
                                           as_trees=meta.get("as_trees"), chroma_url=meta.get("chroma_url"),
                                           hot_paths=deps_root.fork_hot_paths(tgt, spec),
                                           readings=deps_root.target_readings(
                                               tgt, spec, reading_list=meta.get("reading_list", True),
                                               backend_gaps=meta.get("backend_gaps", True)))
        fork_trees = deps_root.open_fork_trees(app.paths, meta.get("forks", []), meta.get("fork_subdirs") or [])
        executor = None
        if ray_address:
            from ..sandbox.ray_executor import RayExecutor
            ray_meta = meta.setdefault("ray", {"classes": ray_classes, "node_noise_max": node_noise_max,
                                               "calibration_pairs": calibration_pairs})  # a resume keeps them
            executor = RayExecutor(ray_address, spec, target=tgt, home=str(app.paths.home),
                                   cache=str(app.paths.cache), classes=ray_meta["classes"],
                                   calibration_pairs=ray_meta["calibration_pairs"],
                                   noise_limit=(ray_meta["node_noise_max"] / 100
                                                if ray_meta["node_noise_max"] is not None else None),
                                   say=app.say, token_file=str(ray_token_file) if ray_token_file else None)
            app.say(f"experiments run on the Ray cluster at {ray_address}: {len(executor.nodes())} nodes"
                    + (f" of the classes {', '.join(ray_meta['classes'])}" if ray_meta["classes"] else ""))
    except BaseException as e:  # the run never started: say so in its meta, not "starting" forever
        meta.update(status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                    error=f"{type(e).__name__}: {e}"[:2000])
        write_meta(directory, meta)
        raise
    ledger = Ledger(directory / "ledger.sqlite")
    deps = RunDeps(target=tgt, ledger=ledger, run_dir=directory, kb=kb, say=app.say, fork_trees=fork_trees,
                   execute=executor)
    if not offline:
        deps = deps_root.with_llm(deps, directory, meta, model=meta.setdefault("llm_model", llm_model),
                                  budget_usd=options.budget_usd if options else meta.get("budget_usd", budget_usd),
                                  max_reply_tokens=meta.setdefault("llm_max_reply", llm_max_reply),
                                  summaries=app.paths.summaries)
        meta["budget_usd"] = options.budget_usd if options else meta.get("budget_usd", budget_usd)
    deps = start_tracing(deps, directory)
    try:
        summary = execute(deps, directory, run_id, options=options, meta=meta)
        if executor is not None:
            summary["ray_nodes"] = executor.node_report()
    except KeyboardInterrupt:
        app.err.print(f"interrupted: progress is saved; continue with `readfirst run --resume {run_id}`")
        raise typer.Exit(130)
    finally:
        ledger.close()
        if executor is not None:
            # the nodes' noise, kept however the run ended; `meta` is what execute and the budget wrote
            meta["ray_nodes"] = executor.node_report()
            write_meta(directory, meta)
            executor.close()
        from .report_html import write_after_run  # finished, interrupted or failed: the page shows what there is
        write_after_run(directory, app.say)
    if as_json:
        app.emit_json(summary)
    else:
        _print_summary(app, summary, Ledger(directory / "ledger.sqlite").rows(), meta)


# What a resumed run takes from the command line; it keeps every other option it started with.
RESUME_TAKES = frozenset({"resume", "as_json", "ray_address", "ray_token_file"})


def _ignored_on_resume(ctx: typer.Context) -> list[str]:
    """The options given on the command line that a resumed run ignores, as the user typed them."""
    ignored = []
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if param.name not in RESUME_TAKES and getattr(source, "name", "") == "COMMANDLINE":
            ignored.append(max(param.opts, key=len))
    return ignored


def check_ray_address(address: str, timeout_s: float = 3.0) -> None:
    """A host:port where nothing answers is one sentence now, not minutes of the cluster library's retries."""
    import socket
    if address == "auto":
        return
    host, _, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise ReadfirstError(f"--ray {address}: not host:port (or auto)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ReadfirstError(f"--ray {address}: nothing answers there ({e.strerror or e}); is the cluster "
                             f"started (`ray start --head`), and is that its address?") from None


def _check_kinds(kinds: list[str]) -> tuple[str, ...]:
    from .workflow import RunOptions
    known = RunOptions.kinds
    unknown = [k for k in kinds if k not in known]
    if unknown:
        raise typer.BadParameter(f"unknown kind {unknown[0]!r}; choose from {', '.join(known)}", param_hint="--kind")
    return tuple(kinds) or known


def _print_reasons(app: AppContext, rows: list[dict]) -> None:
    """The reasons the table shortened, whole, wrapped at the terminal's width (each also in --json)."""
    reasons = full_reasons(rows)
    if reasons:
        app.console.print("reasons in full:")
        for line in reasons:
            app.console.print(line, highlight=False, markup=False)


def _print_summary(app: AppContext, summary: dict, rows: list[dict], meta: dict | None = None) -> None:
    """`meta`: the run's meta.json, whose budget record holds every role's spend: the cost line is then the one
    `report` prints (report_data.llm_costs), not the implementer's share alone."""
    from .cli_common import print_table
    from .report_data import llm_costs
    print_table(app.console, experiment_table(rows, title=f"run {summary['run_id']}", llm=llm_costs(rows, meta)))
    _print_reasons(app, rows)
    print_table(app.console, source_table(summary))
    if summary.get("by_class") or summary.get("ray_nodes"):
        print_table(app.console, class_table(summary))
    best = summary.get("best_speedup")
    app.console.print(f"stopped: {summary['stop_reason']}; {summary['experiments']} experiments, "
                      f"{len(summary['kept'])} kept; best: {'baseline' if best is None else f'{best:+.1%}'}")
    if summary.get("confirmation"):
        app.console.print(confirmation_text(summary["confirmation"]), soft_wrap=True)
        for step in summary["confirmation"].get("steps") or []:
            app.console.print(f"  {step['id']} {step['title'][:60]}: " + confirmation_text(step), soft_wrap=True)
    dropped = summary.get("dropped_by_reason") or {}
    if dropped:
        app.console.print("dropped before or at the build: " + ", ".join(f"{n} {r}" for r, n in dropped.items()))
    from ..agents.offline_policy import dropped_lines
    for line in dropped_lines(summary.get("dropped_candidates") or []):
        app.console.print(line, soft_wrap=True)
    for item in (summary.get("needs_llm") or [])[:5]:
        app.console.print(f"needs an LLM: {item['title']} ({item['where']})", soft_wrap=True)
    if summary.get("calibration"):
        app.console.print(f"noise floor: {summary['calibration']}")
    if host_load_text(summary.get("host_load")):
        app.console.print(f"busy machine: {host_load_text(summary.get('host_load'))}")
    on = summary.get("measured_on") or {}
    if on.get("cpu"):
        app.console.print(f"measured on: {on['cpu']}" + (f", {on['threads']} threads" if on.get("threads") else "")
                          + (f" pinned to CPUs {on['cpus']}" if on.get("cpus") else ""))
    for p in summary.get("best_patches") or []:
        app.console.print(f"patch: {p}", soft_wrap=True)
    page = Path(summary["results_tsv"]).parent / "report.html"
    app.console.print(f"results: {summary['results_tsv']}" + (f"; plot: {summary['report']}" if summary.get("report")
                                                              else "") + f"; page: {page}", soft_wrap=True)


def class_table(summary: dict) -> Table:
    """The wins per machine class (a Ray run), and the nodes whose own noise kept them out of the verdicts."""
    from .report import speedup_text
    excluded = [n for n in summary.get("ray_nodes") or [] if n.get("excluded")]
    caption = "; ".join(f"{n.get('hostname')} ({n['ray_node_id'][:12]}, {n.get('class') or n.get('cpu')}) not "
                        f"used: {n['excluded']}" for n in excluded)
    table = Table(title="by machine class", caption=caption or None)
    for col in ("class", "nodes", "experiments", "kept there", "the kept stack there"):
        table.add_column(col, overflow="fold", no_wrap=col == "class")
    for machine_class, entry in (summary.get("by_class") or {}).items():
        kept = ", ".join(f"{k['id']} {speedup_text(k)}" for k in entry["kept"]) or "none"
        stack = entry.get("stack_speedup")
        table.add_row(machine_class, ", ".join(entry["nodes"]), str(entry["experiments"]), kept,
                      "" if stack is None else f"{stack:+.1%}")
    return table


def source_table(summary: dict) -> Table:
    """Which source paid: candidates, experiments and kept wins per source kind."""
    table = Table(title="by source")
    for col in ("source", "candidates", "experiments", "kept"):
        table.add_column(col, no_wrap=col == "source")
    keys = ("candidates_by_source", "experiments_by_source", "kept_by_source")
    kinds = list(dict.fromkeys(k for key in keys for k in (summary.get(key) or {})))
    for kind in kinds:
        table.add_row(kind, *(str((summary.get(key) or {}).get(kind, 0)) for key in keys))
    return table


def runs(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """List runs with their status, experiments and best speedup.

    A run that did not finish (interrupted, crashed, still running) shows its figures from its ledger, marked
    partial."""
    from .cli_common import print_table
    from .report_data import listed
    app = app_context(ctx)
    items = [listed(app.paths.runs / m["run_id"], m) for m in list_runs(app.paths)]
    if as_json:
        app.emit_json(items)
        return
    table = Table(title=f"runs in {app.paths.runs}")
    table.add_column("run", no_wrap=True)  # what `report`, `trace show`, `--resume` take: never cut
    table.add_column("status", overflow="fold")
    table.add_column("source", no_wrap=True)
    for col in ("experiments", "kept", "best", "stopped"):
        table.add_column(col, overflow="fold")
    for m in items:
        f = m["figures"]
        best = f["best_speedup"]
        table.add_row(m["run_id"], str(m.get("status", "?")) + (" (partial)" if f["partial"] and f["experiments"]
                                                                else ""),
                      str(m.get("source", "")), "" if f["experiments"] is None else str(f["experiments"]),
                      str(len(f["kept"])),
                      "" if best is None else f"{best:+.1%}", f["stop_reason"])
    print_table(app.console, table)


def report(ctx: typer.Context, run_id: str = typer.Argument(..., help="A run id (see `readfirst runs`)."),
           html_file: Optional[Path] = typer.Option(None, "--html", dir_okay=False,
                                                    help="Also write the run's page here (one self-contained "
                                                         "file; report.html in the run directory is written at "
                                                         "the end of every run)."),
           as_json: bool = typer.Option(False, "--json")) -> None:
    """Print a run's experiment table and write its plot; with --html, its page.

    The plot is report.png in the run directory. The page is one self-contained HTML file: the run's setup, the
    experiments with their patches, cited chunks, checks and A/B samples, the running best, and where the time
    went."""
    from .cli_common import print_table
    from .report import write_plot
    from .report_data import ledger_rows, llm_costs, run_figures
    app = app_context(ctx)
    directory = run_dir(app.paths, run_id)
    rows = ledger_rows(directory)
    meta = read_meta(directory)
    summary = meta.get("summary") or {}
    state = {"baseline": summary.get("baseline") or {}}
    metric = next((r["objective"] for r in rows if r.get("objective")), None) or summary.get("objective") or "tg"
    plot = write_plot(rows, state, directory / "report.png", metric=metric)
    page = None
    if html_file is not None:
        from .report_html import write_html_report
        page = write_html_report(directory, html_file)
    figures = run_figures(directory, meta)
    if as_json:
        app.emit_json({"run": meta, "figures": figures, "llm": llm_costs(rows, meta), "experiments": rows,
                       "plot": str(plot) if plot else None,
                       "html": str(page) if page else None})
        return
    partial = ", partial: from the ledger" if figures["partial"] and rows else ""
    print_table(app.console, experiment_table(rows, title=f"run {run_id} ({meta.get('status')}{partial})",
                                              llm=llm_costs(rows, meta)))
    _print_reasons(app, rows)
    if plot:
        app.console.print(f"plot: {plot}", soft_wrap=True)
    if page:
        app.console.print(f"page: {page}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    from .cli_runs import runs_group
    app.add_typer(runs_group(runs), name="runs")
    app.command("report")(report)
