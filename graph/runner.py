"""A run: its directory, its dependencies, the checkpointed graph, and what it leaves behind.

runs/<id>/ holds everything needed to show, resume and replay it: meta.json (options, status, parent),
checkpoints.sqlite (LangGraph's, one thread per run), ledger.sqlite (every experiment), and on completion
results.tsv, best.json, patches/ (the kept patch stack, `git am`-able onto the baseline) and report.png.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..config import Paths
from ..errors import ReadfirstError, RunFolderRefused
from ..sandbox.readback import read_bytes_inside
from ..sources import git

Say = Callable[[str], None]

MAX_META = 16 << 20  # a meta.json holds options, a summary and the budget's record: far below this


class RunNotFound(ReadfirstError):
    pass


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def run_dir(paths: Paths, run_id: str) -> Path:
    d = paths.runs / run_id
    if not d.is_dir() or "/" in run_id or run_id.startswith("."):
        raise RunNotFound(f"no run {run_id!r} in {paths.runs} (see `readfirst runs`)")
    return d


def read_meta(directory: Path, *, strict: bool = False) -> dict[str, Any]:
    """A run's meta.json. A listing shows an unreadable one as status "unknown"; what continues a run
    (`strict`: resume, trace fork) stops instead, since its mode, source and target would be guessed."""
    try:
        # a run folder may come from someone else: no symlink out of it is followed, a FIFO is not waited on
        meta = json.loads(read_bytes_inside(directory, "meta.json", limit=MAX_META))
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        return meta
    except (OSError, ValueError, RecursionError) as e:
        if strict:
            raise ReadfirstError(f"{directory / 'meta.json'} cannot be read ({type(e).__name__}: {str(e)[:200]}): "
                                 f"the run's mode, source and target are not known, so it cannot be continued; "
                                 f"its ledger and traces are still there to read") from e
        return {"run_id": directory.name, "status": "unknown"}


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    tmp = directory / "meta.json.tmp"
    tmp.unlink(missing_ok=True)  # a symlink left there (a folder from elsewhere) is not written through
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(meta, indent=2, default=str))
    os.replace(tmp, directory / "meta.json")


def refuse_unless_plain(database: Path, error: type[ReadfirstError] = RunFolderRefused) -> None:
    """A run folder's SQLite database and its -wal and -shm files: each a plain file or absent, checked before
    SQLite opens them. A run folder may come from someone else, and SQLite follows a symlink (reading, or with
    WAL writing, a file elsewhere) and waits for ever, deaf to SIGTERM, on opening a FIFO."""
    for path in (database, database.with_name(f"{database.name}-wal"), database.with_name(f"{database.name}-shm")):
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(mode):
            raise error(f"{path} is not a plain file (a symlink, a FIFO or a device), so run "
                        f"{database.parent.name}'s {database.name} is not opened")


def spec_of(meta: dict[str, Any]) -> dict[str, Any]:
    """The target spec a run was made with (readfirst.targets); runs made before specs existed were llama.cpp."""
    if meta.get("target_spec"):
        return dict(meta["target_spec"])
    return {"name": "llama.cpp", "source": meta.get("source", "llama.cpp"), "ref": meta.get("ref"),
            "options": {"model": meta.get("model"), "quant": meta.get("quant", "Q4_0")}}


def open_checkpointer(directory: Path):
    """LangGraph's SQLite checkpointer for a run (imported here: listing runs should not pay for LangGraph), with
    the serializer that revives plain data only: a run folder may come from someone else."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    from .checkpoint_serde import PlainDataSerializer
    path = directory / "checkpoints.sqlite"
    refuse_unless_plain(path)
    conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return SqliteSaver(conn, serde=PlainDataSerializer(path)), conn


def execute(deps, directory: Path, run_id: str, *, options, meta: dict[str, Any]) -> dict[str, Any]:
    """Run (or resume, when `options` is None) the graph to its end; export what the run produced.

    `deps` is a workflow.RunDeps, `options` a workflow.RunOptions."""
    from .workflow import build_graph
    saver, conn = open_checkpointer(directory)
    with closing(conn):
        graph = build_graph(deps, checkpointer=saver)
        config = {"configurable": {"thread_id": run_id}, "recursion_limit": 10_000}
        initial = None if options is None else {"run_id": run_id, "options": asdict(options),
                                                 "started_at": deps.clock()}
        if options is None and not graph.get_state(config).values:
            # stopped (a kill, a crash) before its first step was saved: nothing to continue, so it starts
            # with the options it was created with
            if not meta.get("options"):
                raise ReadfirstError(f"run {run_id} stopped before its first step and its options were not "
                                     f"saved: start it again")
            initial = {"run_id": run_id, "options": dict(meta["options"]), "started_at": deps.clock()}
        meta.update(status="running", pid=os.getpid())
        write_meta(directory, meta)
        try:
            graph.invoke(initial, config, durability="sync")
        except KeyboardInterrupt:
            meta.update(status="interrupted")
            write_meta(directory, meta)
            raise
        except BaseException as e:
            meta.update(status="failed", error=f"{type(e).__name__}: {e}"[:2000])
            write_meta(directory, meta)
            raise
        state = graph.get_state(config).values
    summary = export(deps, directory, state)
    meta.update(status="finished", finished_at=time.time(), summary=summary)
    write_meta(directory, meta)
    return summary


def export(deps, directory: Path, state: dict[str, Any]) -> dict[str, Any]:
    ledger = deps.ledger
    rows = ledger.rows()
    metric = deps.target.objective.metric
    ledger.export_tsv(directory / "results.tsv", metric=metric)
    best = state.get("best", {})
    baseline = state.get("baseline", {})
    patches = directory / "patches"
    patches.mkdir(exist_ok=True)
    for old in patches.glob("*.patch"):
        old.unlink()
    patch_files: list[str] = []
    if best and baseline and best.get("commit") != baseline.get("commit"):
        git(deps.target.repository, "format-patch", "-q", "-o", str(patches),
            f"{baseline['commit']}..{best['commit']}")
        patch_files = [str(p) for p in sorted(patches.glob("*.patch"))]
    (directory / "best.json").write_text(json.dumps({"baseline": baseline, "best": best}, indent=2, default=str))
    kept = [r for r in rows if r["decision"] == "keep" and r["id"] in set(best.get("stack", []))]
    total = None
    if kept:
        total = 1.0
        for r in kept:
            total *= 1 + (r["speedup"] or 0)
        total -= 1
    from .report import write_plot
    from .report_data import by_class
    plot = write_plot(rows, state, directory / "report.png", metric=metric,
                      lower_is_better=deps.target.objective.direction == "lower")
    setup = ((state.get("profile") or {}).get("details") or {}).get("setup") or \
        next((r["bench_setup"] for r in rows if r.get("bench_setup")), {})
    return {"run_id": state.get("run_id", directory.name), "experiments": len(rows),
            "kept": [r["id"] for r in kept], "best_speedup": total,
            # the final stack re-measured against the baseline (workflow.confirm), beside the estimate above
            "confirmation": state.get("confirmation"),
            "best_interval": [kept[-1]["ci_low"], kept[-1]["ci_high"]] if len(kept) == 1 else None,
            "stop_reason": state.get("stop_reason", ""), "best_patches": patch_files,
            "target": deps.target.name, "objective": metric, "best_variant": best.get("variant"),
            "results_tsv": str(directory / "results.tsv"), "report": str(plot) if plot else None,
            "calibration": state.get("calibration", ""), "facts": (state.get("profile") or {}).get("facts", []),
            "measured_on": setup, "by_class": by_class(rows, [r["id"] for r in kept]),
            # what other processes did to this process's measurements (a Ray node's are its own)
            **({"host_load": deps.target.load_watch.report()} if hasattr(deps.target, "load_watch") else {}),
            **attribution(rows, kept, state.get("candidate_stats") or {})}


def attribution(rows: list[dict[str, Any]], kept: list[dict[str, Any]], stats: dict[str, Any]) -> dict[str, Any]:
    """Which source paid: candidates, experiments and kept wins per source kind (paper, fork, backend-gap,
    profile, llm), and why candidates were dropped before any experiment or discarded at the build."""
    def count(items) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in items:
            kind = r.get("source_kind") or "llm"
            out[kind] = out.get(kind, 0) + 1
        return out
    builds = [r for r in rows if (r.get("verdict") or {}).get("gate") == "build"]
    return {"candidates_by_source": dict(stats.get("candidates_by_source") or {}),
            "experiments_by_source": count(rows), "kept_by_source": count(kept),
            "dropped_by_reason": {**(stats.get("dropped") or {}),
                                  **({"build failure": len(builds)} if builds else {})},
            "needs_llm": list(stats.get("needs_llm") or []),
            # each drop with the function it concerns and its rule (a hunk deleting a moved function: "moved")
            "dropped_candidates": list(stats.get("dropped_candidates") or [])}


def list_runs(paths: Paths) -> list[dict[str, Any]]:
    if not paths.runs.is_dir():
        return []
    runs = []
    for d in sorted(paths.runs.iterdir()):
        if d.is_dir():
            # the folder's name is what every command takes; a meta.json may name anything
            meta = {**read_meta(d), "run_id": d.name}
            if meta.get("status") == "running" and meta.get("pid") is not None and not _alive(meta["pid"]):
                meta["status"] = "crashed"
            runs.append(meta)
    return runs


def _alive(pid: Any) -> bool:
    """Whether the process a meta.json names runs; a pid that names no one process (a string, 0 or -1, which
    signal a group, one too large for the kernel) is none."""
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 2**31:
        return False
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False
