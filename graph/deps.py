"""Composition: the one place where a command's concrete sandbox, target, knowledge base and LLM roles are built.

`run`, `trace replay --rerun-sandbox`, `trace fork`'s resumption, `sandbox bench`, `model synth` and `setup` all
come through here (the knowledge base and the LLM too, for `run`); roles and graph nodes receive what these
return. Nothing here runs at import time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
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


def llm_roles(llm, target, fork_trees: dict | None = None) -> dict:
    """The LLM implementer and planner around a model: `readfirst run` and trace replay compose them alike. The
    implementer may read the fork trees (read-only). Both are told about the target in its own words (its
    describe(), which a replay serves as recorded)."""
    from ..agents.hypothesize_llm import plan_hypotheses
    from ..agents.implementer import worktree_implementer
    about = target.describe()
    return {"implement": worktree_implementer(llm, target.repository, protected=tuple(target.protected),
                                              sources=fork_trees or {}, about=about),
            "plan": lambda facts, findings, tried, n: plan_hypotheses(llm, facts, findings, tried, n=n, about=about)}


def with_llm(deps, directory: Path, meta: dict, *, model: str, budget_usd: float,
             max_reply_tokens: int | None = None, summaries: Path | None = None):
    """The LLM mode: Anthropic through its SDK (ANTHROPIC_BASE_URL honoured), one dollar budget for the run.

    The budget's spending is saved in meta.json after every call, so a resumed run does not spend it twice.
    `summaries`: the file of chunk summaries already paid for (Paths.summaries); None keeps them for this run.
    """
    from ..agents.summaries import SummaryCache
    from dataclasses import replace

    from ..agents.llm import AnthropicLLM, Budget, make_client
    from .runner import write_meta
    budget = Budget.restore(meta["llm_budget"]) if meta.get("llm_budget") else Budget(budget_usd)

    def saved(call: dict) -> None:
        meta["llm_budget"] = budget.snapshot()
        write_meta(directory, meta)

    client = make_client(os.environ["ANTHROPIC_API_KEY"], base_url=os.environ.get("ANTHROPIC_BASE_URL") or None)
    llm = AnthropicLLM(client, model=model, budget=budget, on_call=saved, max_reply_tokens=max_reply_tokens)
    return replace(deps, llm=llm, spent_usd=lambda: budget.spent_usd, summaries=SummaryCache(summaries),
                   **llm_roles(llm, deps.target, deps.fork_trees))


def target_readings(target, spec: dict[str, Any], *, reading_list: bool = True, backend_gaps: bool = True
                    ) -> list[dict[str, Any]]:
    """What the target itself asks to read (Target.readings: the curated reading list, its own sibling backends),
    less what the user opted out of; as knowledge-base recipes."""
    out = []
    for r in getattr(target, "readings", lambda: [])():
        if r["kind"] == "papers" and r.get("item") == "reading-list" and not reading_list:
            continue
        if r["kind"] == "backends" and not backend_gaps:
            continue
        out.append(dict(r))
    return out


def fork_hot_paths(target, spec: dict[str, Any]) -> tuple[str, ...]:
    """What of a fork the run reads: what the target calls hot, in any language; llama.cpp reads its forks'
    C/C++ and Markdown under ggml/src as before (its hot paths name only the CPU backend)."""
    return () if spec.get("name") == "llama.cpp" else tuple(getattr(target, "hot_paths", ()) or ())


def open_knowledge_base(paths: Paths, *, forks: list[str], papers: list[str], upstream: str, subdirs: list[str],
                        say: Say, as_trees: bool | None = None, chroma_url: str | None = None,
                        readings: list[dict[str, Any]] = (), hot_paths: Sequence[str] = ()):
    """Ingest what the run names first (one writer at a time), then open the store for reading (embedded Chroma
    in the data directory, or the Chroma server at `chroma_url`). `as_trees` None: forks are compared as
    `kb ingest fork` would choose (history for git forks, file by file for vendored trees). `readings`: the
    target's own recipes (the reading list, its backend gaps).

    A recipe already read in full from the same revisions is not read again: the second run of a fork reads
    nothing (the recipe is recorded as complete, with the revisions it read, only once its ingestion ends)."""
    from ..knowledge_base.embedder import make_embedder
    from ..knowledge_base.ingest import fork_recipe, paper_recipes, run_recipe, source_key
    from ..knowledge_base.store import KnowledgeBase
    embedder = make_embedder(export_dir=paths.models / "embeddings")  # the one `readfirst kb` uses by default
    recipes = [fork_recipe(f, upstream=upstream, subdirs=subdirs, as_trees=as_trees, paths=hot_paths)
               for f in forks]
    recipes += paper_recipes(papers) if papers else []
    recipes += list(readings)
    if recipes:
        from ..sandbox.machine_lock import machine_lock
        kb = KnowledgeBase(paths.knowledge_base, embedder, writable=True, chroma_url=chroma_url)
        # Embedding is CPU work like a build: it shares the machine with builds, never with a measurement.
        try:
            with machine_lock(paths.cache, exclusive=False):
                recorded = kb.sources()
                for recipe in recipes:
                    source = source_key(recipe)
                    revisions = _revisions(paths, recipe)
                    done = recorded.get(source) or {}
                    if revisions and done.get("complete") and done.get("revisions") == revisions:
                        say(f"{source}: already read (the same revisions); nothing to read again")
                        continue
                    say(f"reading {recipe.get('fork') or recipe.get('item') or recipe.get('target')} into the "
                        f"knowledge base")
                    source, summary = run_recipe(kb, recipe, paths)
                    say(f"{source}: {summary.added} added, {summary.unchanged} unchanged, "
                        f"{summary.replaced} replaced, {len(summary.skipped)} skipped")
                    for note in summary.notes:
                        say(note)
                    if revisions:
                        kb.record_source(source, {**recipe, "revisions": revisions, "complete": True})
        finally:
            kb.close()
    kb = KnowledgeBase(paths.knowledge_base, embedder, chroma_url=chroma_url)
    return kb if kb.count() else None


def _revisions(paths: Paths, recipe: dict[str, Any]) -> dict[str, str]:
    """The revisions a recipe reads (the prepared sources' baselines; a local tree's key changes with its files),
    or {} when they cannot be told without reading (papers by query, paths)."""
    from ..sources import prepare_source
    names = {"fork": ("fork", "upstream"), "backends": ("target",)}.get(recipe["kind"])
    if names is None:
        if recipe.get("item") != "reading-list":
            return {}
        import hashlib

        from ..knowledge_base import papers
        listing = Path(papers.__file__).parent / "reading_list.toml"
        return {"reading-list": hashlib.sha256(listing.read_bytes()).hexdigest()[:16]}
    out = {}
    for n in names:
        try:
            source = prepare_source(recipe[n], paths.sources, paths.sdists)
        except Exception:
            return {}  # the ingestion itself will say what is wrong with it
        out[n] = f"{source.path.name}@{source.baseline}"
    return out


def open_fork_trees(paths: Paths, forks: list[str], subdirs: list[str] = ()) -> dict[str, Any]:
    """The forks' source trees, by the name their knowledge-base chunks cite (for the porting engine), limited
    to the run's fork subfolders."""
    from ..knowledge_base.ingest import _display_name
    from ..sources import GitTree, prepare_source
    trees = {}
    for fork in forks:
        source = prepare_source(fork, paths.sources, paths.sdists)
        name = _display_name(fork)
        trees[name] = GitTree(name, source.path, source.baseline, subdirs=tuple(subdirs))
    return trees
