"""`readfirst runs` and `readfirst runs prune`: the runs in the data directory, and removing the ones that are
only litter (failed before they started, unreadable, or older than a given age)."""

from __future__ import annotations

import inspect
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from .cli_common import app_context, print_table
from .runner import list_runs

# A folder whose meta.json is not readable yet may be a run being created this moment: it is left this long.
UNKNOWN_GRACE_S = 120


def runs_group(listing: Callable[..., None]) -> typer.Typer:
    """The `runs` group: without a subcommand it lists (`listing`, the `runs` command's own function)."""
    group = typer.Typer(help=inspect.cleandoc(listing.__doc__ or ""))

    def runs(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
        if ctx.invoked_subcommand is None:
            listing(ctx, as_json)

    runs.__doc__ = listing.__doc__
    group.callback(invoke_without_command=True)(runs)
    group.command("prune")(prune)
    return group


def prune(ctx: typer.Context,
          older_than: Optional[float] = typer.Option(None, "--older-than", min=0, metavar="DAYS",
                                                     help="Also every run (not one still running) created more "
                                                          "than this many days ago."),
          yes: bool = typer.Option(False, "--yes", help="Remove them; without it, only list what would go."),
          as_json: bool = typer.Option(False, "--json")) -> None:
    """Remove the runs that are only litter; a dry run unless --yes.

    Litter: runs that failed before they started, runs whose meta.json cannot be read (status unknown), and
    with --older-than, every run older than that (not one still running)."""
    app = app_context(ctx)
    now = time.time()
    doomed = [c for m in list_runs(app.paths) if (c := _candidate(app.paths.runs / m["run_id"], m, older_than, now))]
    removed, failed = [], []
    if yes:
        for c in doomed:
            try:
                _remove(Path(c["path"]))
                removed.append(c["run_id"])
            except OSError as e:
                failed.append({"run_id": c["run_id"], "error": f"{type(e).__name__}: {e}"})
    if as_json:
        app.emit_json({"dry_run": not yes, "runs": doomed, "removed": removed, "failed": failed})
    else:
        _say_pruned(app, doomed, yes, removed, failed)
    if failed:
        raise typer.Exit(1)


def _candidate(directory: Path, meta: dict[str, Any], older_than: float | None,
               now: float) -> dict[str, Any] | None:
    status = str(meta.get("status"))
    reason = None
    if status in ("failed", "interrupted") and not os.path.lexists(directory / "checkpoints.sqlite"):
        reason = "failed before it started"
    elif status == "unknown" and now - _mtime(directory) > UNKNOWN_GRACE_S:
        reason = "meta.json cannot be read"
    elif older_than is not None and status != "running" and now - _created(directory, meta) > older_than * 86400:
        reason = f"older than {older_than:g} days"
    if reason is None:
        return None
    return {"run_id": directory.name, "status": status, "reason": reason, "path": str(directory),
            "bytes": _size(directory)}


def _created(directory: Path, meta: dict[str, Any]) -> float:
    created = meta.get("created_at")
    return float(created) if isinstance(created, (int, float)) else _mtime(directory)


def _mtime(directory: Path) -> float:
    return os.lstat(directory).st_mtime


def _size(directory: Path) -> int:
    """Bytes the folder holds, counting no symlink's target (a folder may come from elsewhere)."""
    if directory.is_symlink():
        return 0
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _remove(directory: Path) -> None:
    if directory.is_symlink():  # a linked run folder: the link goes, not what it points at
        directory.unlink()
    else:
        shutil.rmtree(directory)


def _say_pruned(app, doomed: list[dict[str, Any]], yes: bool, removed: list[str],
                failed: list[dict[str, str]]) -> None:
    if not doomed:
        app.console.print(f"nothing to prune in {app.paths.runs}", soft_wrap=True)
        return
    table = Table(title=f"{'removed' if yes else 'would remove'} from {app.paths.runs}")
    table.add_column("run", no_wrap=True)
    for col in ("status", "why", "size"):
        table.add_column(col, overflow="fold")
    for c in doomed:
        table.add_row(c["run_id"], c["status"], c["reason"], f"{c['bytes'] / 1e6:.1f} MB")
    print_table(app.console, table)
    for f in failed:
        app.err.print(f"[bold red]error:[/bold red] {escape(f['run_id'])} could not be removed: {escape(f['error'])}")
    if not yes:
        app.console.print(f"dry run: {len(doomed)} runs would be removed; pass --yes to remove them")
    else:
        app.console.print(f"removed {len(removed)} of {len(doomed)} runs")
