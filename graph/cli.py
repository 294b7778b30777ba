"""The `readfirst` command. Each command group lives in its own module; this one wires them and handles errors."""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path
from typing import Any, Optional

import click
import typer
from rich.console import Console
from rich.markup import escape

from ..config import Paths
from ..errors import ReadfirstError
from .cli_common import AppContext

app = typer.Typer(
    help="readfirst: read papers, forks and sibling backends first, then run measured experiments on a C/C++ "
         "code base (llama.cpp first) in Docker sandboxes, keeping only what is faster and still correct.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)


@app.callback()
def _root(ctx: typer.Context,
          home: Optional[Path] = typer.Option(None, "--home", envvar="READFIRST_HOME",
                                              help="Data directory for caches, knowledge base and runs "
                                                   "(default: the user's data directory)."),
          cache: Optional[Path] = typer.Option(None, "--cache", envvar="READFIRST_CACHE",
                                               help="Where expensive artifacts (sources, builds, models) live "
                                                    "(default: HOME/cache).")) -> None:
    ctx.obj = AppContext(paths=Paths.resolve(home, cache))


def _register() -> None:
    from . import cli_init, cli_kb, cli_main, cli_run, cli_sandbox, cli_trace
    for group in (cli_main, cli_init, cli_run, cli_sandbox, cli_kb, cli_trace):
        group.register(app)


_register()


def plain_help(command: Any) -> Any:
    """Help that reads as the command line is typed: typer's help panels print a flag's type (`--offline
    <bool>`) as if it took a value, and a repeatable option's as `<list[str]>`. A flag shows nothing; a
    repeatable option shows its element's type and says it repeats. (Typer carries its own click, so options are
    told by what they are, not by click's classes.)

    The help is click's plain layout, not typer's rich panels: at 80 columns the panels cut option names and
    environment variables with an ellipsis (`--budget-experi…`); the plain layout wraps the help and puts a
    long option name on its own line, whole at any width, as uv, gh and llm print theirs."""
    if hasattr(command, "rich_markup_mode"):
        command.rich_markup_mode = None
    # --help itself is made on first use and cached; make it now so it is fixed too
    ctx = typer.Context(command)
    help_option = command.get_help_option(ctx) if hasattr(command, "get_help_option") else None
    for param in [*command.params, *([help_option] if help_option is not None else [])]:
        if getattr(param, "param_type_name", "") != "option" or param.metavar is not None:
            continue
        repeated = re.fullmatch(r"<list\[(.+)\]>", param.display_type(ctx) if param.display_type else "")
        if param.is_flag:
            param.metavar = ""
        elif repeated:
            param.metavar = f"<{repeated.group(1)}>"
            if param.help and "repeatable" not in param.help.lower():
                param.help = param.help.rstrip() + " Repeatable."
    for sub in (getattr(command, "commands", None) or {}).values():
        if sub.short_help is None and sub.help:  # click would cut a group's list of commands at 45 characters
            sub.short_help = " ".join(inspect.cleandoc(sub.help).split("\n\n")[0].split())
        plain_help(sub)
    return command


# Usage errors: typer may vendor its own copy of click, so take its ClickException from its own class tree.
_USAGE_ERRORS = tuple({click.ClickException,
                       *(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")})


def _terminate(signum, _frame) -> None:
    """SIGTERM (a scheduler, `kill`, a CI timeout) stops the run as Ctrl-C does: the sandbox's containers are
    removed on the way out and the run is saved as interrupted, instead of running on until their timeouts."""
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    import signal
    signal.signal(signal.SIGTERM, _terminate)
    try:
        # Without standalone mode click returns an Exit's code instead of exiting with it (Ctrl-C's 130).
        code = plain_help(typer.main.get_command(app)).main(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except ReadfirstError as e:
        # escaped: a message may quote brackets ("[bench] command: missing") that rich would take for markup
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/bold red] {escape(str(e))}")
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except _USAGE_ERRORS as e:
        e.show()
        sys.exit(e.exit_code)
