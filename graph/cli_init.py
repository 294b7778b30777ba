"""`readfirst init`: write a readfirst.toml for the project in a folder, guessed from its build system."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from ..errors import ReadfirstError
from .cli_common import app_context


def init(ctx: typer.Context,
         directory: Path = typer.Argument(Path("."), help="The project's folder (default: the current one)."),
         force: bool = typer.Option(False, "--force", help="Overwrite an existing readfirst.toml."),
         to_stdout: bool = typer.Option(False, "--print", help="Print the file instead of writing it."),
         as_json: bool = typer.Option(False, "--json", help="Print the guesses (and the file) as JSON.")) -> None:
    """Write a readfirst.toml guessed from the project's build system; say what was guessed and what to check."""
    from ..targets.config_file import CONFIG_NAME
    from ..targets.project_init import check_loads, detect, render, write_config
    app = app_context(ctx)
    root = directory.expanduser().resolve()
    if not root.is_dir():
        raise ReadfirstError(f"{directory} is not a folder")
    guess = detect(root)
    text = render(guess)
    problem = check_loads(text, root)
    if problem and not guess.missing():
        raise ReadfirstError(f"the readfirst.toml guessed for {root} does not load ({problem}); this is a bug in "
                             f"readfirst init, and the file was not written")
    path = root / CONFIG_NAME
    if not to_stdout:
        write_config(path, text, force)
    if as_json:
        app.emit_json({**guess.to_dict(), "file": str(path), "written": not to_stdout, "loads": problem is None,
                       "problem": problem, "toml": text})
        return
    if to_stdout:
        sys.stdout.write(text)
    _tell(app.err if to_stdout else app.console, guess, path, written=not to_stdout, problem=problem)


def _tell(console, guess, path: Path, *, written: bool, problem: str | None) -> None:
    def line(text: str) -> None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    line(f"{'wrote' if written else 'guessed'} {path} from the {guess.kind} build; check each guess:")
    for check in guess.checks():
        line(f"  - {check}")
    if guess.metric.source.startswith("a placeholder"):
        line("  - objective: what the bench prints is unknown; it must print `METRIC name=value` lines and "
             "[objective] metric must name one of them")
    if problem:
        line(f"it does not load until you write the missing {' and '.join(guess.missing())} command"
             f"{'s' if len(guess.missing()) > 1 else ''} ({problem})")


def register(app: typer.Typer) -> None:
    app.command("init")(init)
