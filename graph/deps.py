"""Composition: the concrete sandbox, target and model a command works with, built from the resolved paths.

Commands call these; roles and graph nodes receive what they return. Nothing here runs at import time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..config import Paths
from ..sandbox import engine, image
from ..sandbox.docker_sandbox import DockerSandbox, Limits
from ..sandbox.llama_cpp import LlamaCppTarget
from ..sandbox.model import import_model, synthesize
from ..sandbox.sources import prepare_source

Say = Callable[[str], None]


def open_sandbox(paths: Paths, *, say: Say, start_engine: bool = False) -> DockerSandbox:
    client = engine.ensure_engine(paths.logs, say=say) if start_engine else engine.require_engine()
    tag = image.ensure_image(client, say=say)
    for p in (paths.cache, paths.home):
        p.mkdir(parents=True, exist_ok=True)
    sandbox = DockerSandbox(client, tag, allowed_roots=[paths.cache, paths.home],
                            limits=Limits(cpus=float(os.cpu_count() or 1)))
    removed = sandbox.gc()  # a new run removes what dead runs left behind
    if removed:
        say(f"removed {removed} sandbox container{'s' if removed != 1 else ''} left by an earlier run")
    return sandbox


def open_llama_target(paths: Paths, sandbox: DockerSandbox, *, source: str = "llama.cpp", ref: str | None = None,
                      say: Say) -> LlamaCppTarget:
    say(f"preparing the source: {source}")
    repo = prepare_source(source, paths.sources, paths.sdists, ref=ref)
    return LlamaCppTarget(paths, sandbox, repo, say=say)


def model_maker(paths: Paths, *, model: Path | None, quant: str, say: Say) -> Callable[[LlamaCppTarget, str], Path]:
    """What establish_baseline calls once a build works: import the user's GGUF, or synthesize one."""
    def make(target: LlamaCppTarget, commit: str) -> Path:
        if model is not None:
            return import_model(model, paths.models)
        return synthesize(target, commit, paths.models, quant=quant, say=say)
    return make


def llm_roles(llm, source_path: Path, protected: tuple[str, ...]) -> dict:
    """The LLM implementer and planner around a model: `readfirst run` and trace replay compose them alike."""
    from ..agents.hypothesize_llm import plan_hypotheses
    from ..agents.implementer import worktree_implementer
    return {"implement": worktree_implementer(llm, source_path, protected=protected),
            "plan": lambda facts, findings, tried, n: plan_hypotheses(llm, facts, findings, tried, n=n)}
