"""Composition: the one place where a command's concrete sandbox, target, knowledge base and LLM roles are built.

`run`, `trace replay --rerun-sandbox`, `trace fork`'s resumption, `sandbox bench`, `model synth` and `setup` all
come through here; roles and graph nodes receive what these return. Nothing here runs at import time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ..config import Paths
from ..sandbox import engine, image
from ..sandbox.docker_sandbox import DockerSandbox, Limits
from ..targets import open_target, sandbox_packages

Say = Callable[[str], None]


def open_sandbox(paths: Paths, *, say: Say, start_engine: bool = False, packages: tuple[str, ...] = ()
                 ) -> DockerSandbox:
    client = engine.ensure_engine(paths.logs, say=say) if start_engine else engine.require_engine()
    tag = image.ensure_image(client, say=say, packages=packages)
    for p in (paths.cache, paths.home):
        p.mkdir(parents=True, exist_ok=True)
    sandbox = DockerSandbox(client, tag, allowed_roots=[paths.cache, paths.home],
                            limits=Limits(cpus=float(os.cpu_count() or 1)))
    removed = sandbox.gc()  # a new run removes what dead runs left behind
    if removed:
        say(f"removed {removed} sandbox container{'s' if removed != 1 else ''} left by an earlier run")
    return sandbox


def compose_target(paths: Paths, spec: dict[str, Any], *, say: Say, start_engine: bool = False):
    """The sandbox (its image holding what the target needs) and the target a spec names."""
    sandbox = open_sandbox(paths, say=say, start_engine=start_engine, packages=sandbox_packages(spec))
    return sandbox, open_target(spec, paths=paths, sandbox=sandbox, say=say)


def llm_roles(llm, target) -> dict:
    """The LLM implementer and planner around a model: `readfirst run` and trace replay compose them alike."""
    from ..agents.hypothesize_llm import plan_hypotheses
    from ..agents.implementer import worktree_implementer
    return {"implement": worktree_implementer(llm, target.repository, protected=tuple(target.protected)),
            "plan": lambda facts, findings, tried, n: plan_hypotheses(llm, facts, findings, tried, n=n)}
