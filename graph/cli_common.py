"""What every command group shares: the resolved paths, one console for all output, and the error policy.

Library errors (ReadfirstError) become one sentence and exit code 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.segment import Segments
from rich.table import Table

from ..config import Paths
from ..errors import ReadfirstError


@dataclass
class AppContext:
    paths: Paths
    console: Console = field(default_factory=lambda: Console(stderr=False))
    # soft_wrap: progress lines are log lines; a pipe or a narrow terminal must not cut them in two
    err: Console = field(default_factory=lambda: Console(stderr=True, soft_wrap=True))
    home_checked: bool = False

    def say(self, message: str) -> None:
        """Progress and notes go to stderr, so that --json output on stdout stays parseable."""
        self.err.print(f"[dim]·[/dim] {message}")

    def emit_json(self, data: Any) -> None:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def app_context(ctx: typer.Context) -> AppContext:
    obj = ctx.find_root().obj
    if not isinstance(obj, AppContext):  # a group invoked on its own (tests): resolve from the environment
        obj = AppContext(paths=Paths.resolve())
        ctx.find_root().obj = obj
    if not obj.home_checked:
        check_home(obj.paths.home)
        obj.home_checked = True
    return obj


def check_home(home: Path) -> None:
    """A data directory that cannot be used is said once, before a command lists nothing from it (`--home
    /proc/nope` printed an empty table). One that does not exist yet is fine when it could be made: that is
    tried, and what was made for the try is removed again (nothing is created before it is needed)."""
    if home.is_dir():
        if not os.access(home, os.R_OK | os.X_OK):
            raise ReadfirstError(f"the data directory {home} cannot be read: pass --home (or set READFIRST_HOME "
                                 f"to) a folder you can use")
        return
    if home.exists() or home.is_symlink():
        raise ReadfirstError(f"the data directory {home} is not a folder: pass --home (or set READFIRST_HOME to) "
                             f"a folder you can write")
    made: list[Path] = []
    try:
        for folder in [*reversed(home.parents), home]:
            if not folder.is_dir():
                folder.mkdir()
                made.append(folder)
    except OSError as e:
        raise ReadfirstError(f"the data directory {home} cannot be used ({e.strerror or type(e).__name__}"
                             f"{': ' + str(folder) if folder != home else ''}): pass --home (or set "
                             f"READFIRST_HOME to) a folder you can write") from e
    finally:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()


def print_table(console: Console, table: Table) -> None:
    """Print a table whose no_wrap columns (run ids, experiment ids, paths: what a user copies into the next
    command) are never cut. Rich's last resort on a narrow console (or a pipe, 80 columns) shrinks every column
    with an ellipsis; a table that cannot fit with those columns whole is rendered as wide as it needs instead,
    its other columns wrapped as narrow as they go."""
    console.print(Segments(console.render(table, console.options.update_width(max(console.width,
                                                                                  _whole_width(console, table))))),
                  crop=False)


def _whole_width(console: Console, table: Table) -> int:
    wide = console.options.update_width(10_000)
    width = table._extra_width  # borders and separators
    for i, column in enumerate(table.columns):
        cells = [column.header, *column.cells]
        if column.no_wrap:
            need = max(Measurement.get(console, wide, c).maximum for c in cells)
        else:  # a wrapping column keeps its words whole up to a dozen characters, and folds longer ones
            need = min(max(Measurement.get(console, wide, c).minimum for c in cells), 12)
        width += need + table._get_padding_width(i)
    return width
