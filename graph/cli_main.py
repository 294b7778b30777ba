"""`readfirst setup` and `readfirst run`: everything a bare machine needs, then the main job."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Optional

import typer

from ..sandbox.baseline import establish_baseline
from ..sandbox.llama_cpp import BenchOptions
from ..sandbox.model import validate_gguf
from ..sandbox.records import to_dict
from .cli_common import app_context
from .cli_sandbox import _check_quant, _print_bench
from .deps import model_maker, open_llama_target, open_sandbox


def setup(ctx: typer.Context,
          source: str = typer.Option("llama.cpp", "--source", help="Source to fetch and prepare.")) -> None:
    """Install and start what readfirst needs: the Docker engine, the base image, the llama.cpp source."""
    app = app_context(ctx)
    sandbox = open_sandbox(app.paths, say=app.say, start_engine=True)
    target = open_llama_target(app.paths, sandbox, source=source, say=app.say)
    app.say(f"ready: engine up, image {sandbox.image}, source {target.source.path} (baseline "
            f"{target.source.baseline[:10]})")


def run(ctx: typer.Context,
        source: str = typer.Option("llama.cpp", "--source", help="llama.cpp (the pinned sdist), a git URL, or a "
                                                                "local path."),
        model: Optional[Path] = typer.Option(None, "--model", help="A real GGUF instead of the synthetic model."),
        quant: str = typer.Option("Q4_0", "--quant", callback=_check_quant),
        repetitions: int = typer.Option(5, "-r", "--repetitions", min=1),
        as_json: bool = typer.Option(False, "--json", help="Print a final summary as JSON.")) -> None:
    """The main job: build and check the baseline in the sandbox and benchmark it (pp512, tg128).

    The research-and-experiment loop takes this command over; until then it measures the baseline that every
    experiment will be compared with, and saves it as a run.
    """
    app = app_context(ctx)
    if model is not None:
        validate_gguf(model)
    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    run_dir = app.paths.runs / run_id
    run_dir.mkdir(parents=True)
    app.say(f"run {run_id} → {run_dir}")
    sandbox = open_sandbox(app.paths, say=app.say)
    target = open_llama_target(app.paths, sandbox, source=source, say=app.say)
    baseline, model_path = establish_baseline(
        target, say=app.say, build_model=model_maker(app.paths, model=model, quant=quant, say=app.say))
    app.say("benchmarking the baseline")
    bench = target.bench(baseline.commit, model=model_path, options=BenchOptions(repetitions=repetitions))
    summary = {"run_id": run_id, "run_dir": str(run_dir), "source": source, "commit": baseline.commit,
               "config": to_dict(baseline.config), "fallback": baseline.fallback_reason,
               "tests": to_dict(baseline.tests), "model": str(model_path), "bench": to_dict(bench)}
    (run_dir / "baseline.json").write_text(json.dumps(summary, indent=2))
    if as_json:
        app.emit_json(summary)
    else:
        _print_bench(app, bench, None, {})
        app.console.print(f"saved {run_dir / 'baseline.json'}")


def register(app: typer.Typer) -> None:
    app.command("setup")(setup)
    app.command("run")(run)
