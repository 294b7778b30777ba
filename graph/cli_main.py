"""`readfirst setup` and `readfirst run`: everything a bare machine needs, then the main job."""

from __future__ import annotations

import typer

from ..sandbox import engine, image
from .cli_common import app_context


def setup(ctx: typer.Context) -> None:
    """Install and start what readfirst needs: the Docker engine, the base image, the llama.cpp source."""
    app = app_context(ctx)
    client = engine.ensure_engine(app.paths.logs, say=app.say)
    app.say(f"base image: {image.ensure_image(client, say=app.say)}")


def register(app: typer.Typer) -> None:
    app.command("setup")(setup)
