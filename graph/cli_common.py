"""What every command group shares: the resolved paths, one console for all output, and the error policy.

Library errors (ReadfirstError) become one sentence and exit code 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.segment import Segments
from rich.table import Table

from ..config import Paths


@dataclass
class AppContext:
    paths: Paths
    console: Console = field(default_factory=lambda: Console(stderr=False))
    # soft_wrap: progress lines are log lines; a pipe or a narrow terminal must not cut them in two
    err: Console = field(default_factory=lambda: Console(stderr=True, soft_wrap=True))

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
    return obj


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
