"""`readfirst setup`: everything a bare machine needs before the main job (`readfirst run`)."""

from __future__ import annotations

import typer

from .cli_common import app_context
from .deps import open_llama_target, open_sandbox


def setup(ctx: typer.Context,
          source: str = typer.Option("llama.cpp", "--source", help="Source to fetch and prepare.")) -> None:
    """Install and start what readfirst needs: the Docker engine, the base image, the llama.cpp source."""
    app = app_context(ctx)
    sandbox = open_sandbox(app.paths, say=app.say, start_engine=True)
    target = open_llama_target(app.paths, sandbox, source=source, say=app.say)
    app.say(f"ready: engine up, image {sandbox.image}, source {target.source.path} (baseline "
            f"{target.source.baseline[:10]})")


def register(app: typer.Typer) -> None:
    app.command("setup")(setup)
