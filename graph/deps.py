"""Composition: the one place where a command's concrete sandbox, target, knowledge base and LLM roles are built.

`run`, `trace replay --rerun-sandbox`, `trace fork`'s resumption, `sandbox bench`, `model synth` and `setup` all
come through here (the knowledge base and the LLM too, for `run`); roles and graph nodes receive what these
return. Nothing here runs at import time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
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


def with_llm(deps, directory: Path, meta: dict, *, model: str, budget_usd: float):
    """The LLM mode: Anthropic through its SDK (ANTHROPIC_BASE_URL honoured), one dollar budget for the run.

    The budget's spending is saved in meta.json after every call, so a resumed run does not spend it twice.
    """
    from dataclasses import replace

    from ..agents.llm import AnthropicLLM, Budget, make_client
    from .runner import write_meta
    budget = Budget.restore(meta["llm_budget"]) if meta.get("llm_budget") else Budget(budget_usd)

    def saved(call: dict) -> None:
        meta["llm_budget"] = budget.snapshot()
        write_meta(directory, meta)

    client = make_client(os.environ["ANTHROPIC_API_KEY"], base_url=os.environ.get("ANTHROPIC_BASE_URL") or None)
    llm = AnthropicLLM(client, model=model, budget=budget, on_call=saved)
    return replace(deps, llm=llm, spent_usd=lambda: budget.spent_usd, **llm_roles(llm, deps.target))


def open_knowledge_base(paths: Paths, *, forks: list[str], papers: list[str], upstream: str, subdirs: list[str],
                        say: Say, as_trees: bool | None = None, chroma_url: str | None = None):
    """Ingest what the run names first (one writer at a time), then open the store for reading (embedded Chroma
    in the data directory, or the Chroma server at `chroma_url`). `as_trees` None: forks are compared as
    `kb ingest fork` would choose (history for git forks, file by file for vendored trees)."""
    from ..knowledge_base.embedder import SentenceTransformerEmbedder
    from ..knowledge_base.ingest import fork_recipe, paper_recipes, run_recipe
    from ..knowledge_base.store import KnowledgeBase
    embedder = SentenceTransformerEmbedder()
    recipes = [fork_recipe(f, upstream=upstream, subdirs=subdirs, as_trees=as_trees) for f in forks]
    recipes += paper_recipes(papers) if papers else []
    if recipes:
        kb = KnowledgeBase(paths.knowledge_base, embedder, writable=True, chroma_url=chroma_url)
        try:
            for recipe in recipes:
                say(f"reading {recipe.get('fork') or recipe.get('item')} into the knowledge base")
                source, summary = run_recipe(kb, recipe, paths)
                say(f"{source}: {summary.added} added, {summary.unchanged} unchanged, "
                    f"{summary.replaced} replaced, {len(summary.skipped)} skipped")
        finally:
            kb.close()
    kb = KnowledgeBase(paths.knowledge_base, embedder, chroma_url=chroma_url)
    return kb if kb.count() else None
