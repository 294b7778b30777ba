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
