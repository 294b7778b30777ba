"""`readfirst setup`: everything a bare machine needs before the main job (`readfirst run`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .cli_common import app_context


def setup(ctx: typer.Context,
          source: str = typer.Option("llama.cpp", "--source", help="Source to fetch and prepare."),
          target: Optional[str] = typer.Option(None, "--target", help="llama.cpp or config (see `run --help`)."),
          target_config: Optional[Path] = typer.Option(None, "--target-config", dir_okay=False,
                                                       help="A readfirst.toml: its image and source."),
          as_json: bool = typer.Option(False, "--json", help="Print what is ready as JSON.")) -> None:
    """Install and start what readfirst needs: the Docker engine, the sandbox image, the target's source."""
    from ..targets import make_spec
    from .deps import compose_target
    app = app_context(ctx)
    spec = make_spec(target, source=source, config_file=target_config)
    sandbox, tgt = compose_target(app.paths, spec, say=app.say, start_engine=True)
    described = tgt.describe()
    if as_json:
        app.emit_json({"engine": "up", "image": sandbox.image, "target": spec["name"],
                       "name": getattr(tgt, "name", None), "source": str(tgt.repository),
                       "baseline": described.get("baseline"), "home": str(app.paths.home),
                       "cache": str(app.paths.cache)})
        return
    app.say(f"ready: engine up, image {sandbox.image}, source {tgt.repository} (baseline "
            f"{str(described.get('baseline', ''))[:10]})")


def register(app: typer.Typer) -> None:
    app.command("setup")(setup)
