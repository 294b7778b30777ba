"""`readfirst sandbox ...` and `readfirst model ...`: the base image, leftovers, benchmarks, the model."""

from __future__ import annotations

import typer

from ..sandbox import engine, image
from ..sandbox.docker_sandbox import collect_garbage
from .cli_common import app_context

sandbox_app = typer.Typer(help="The Docker sandbox: base image, leftover containers, benchmarks.",
                          no_args_is_help=True)


@sandbox_app.command("image")
def image_cmd(ctx: typer.Context,
              rebuild: bool = typer.Option(False, "--rebuild", help="Build it again even when it exists.")) -> None:
    """Build (once) the base image: C/C++ toolchain, cmake, ccache, git, python3."""
    app = app_context(ctx)
    client = engine.require_engine()
    tag = image.ensure_image(client, rebuild=rebuild, say=app.say)
    app.console.print(tag)


@sandbox_app.command("gc")
def gc_cmd(ctx: typer.Context,
           everything: bool = typer.Option(False, "--all", help="Also remove containers of live readfirst "
                                                                "processes.")) -> None:
    """Remove sandbox containers left behind by readfirst processes that are gone."""
    app = app_context(ctx)
    n = collect_garbage(engine.require_engine(), everything=everything)
    app.console.print(f"removed {n} container{'s' if n != 1 else ''}")


def register(app: typer.Typer) -> None:
    app.add_typer(sandbox_app, name="sandbox")
