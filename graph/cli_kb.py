"""`readfirst kb ...`: ingest papers, forks, backend gaps and local files into the knowledge base; query it."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

from ..knowledge_base import ingest as recipes
from ..knowledge_base.chunking import KINDS
from ..knowledge_base.embedder import BACKENDS, DEFAULT_BACKEND, DEFAULT_MODEL, make_embedder
from ..knowledge_base.store import MODES, IngestSummary, KnowledgeBase
from .cli_common import AppContext, app_context

kb_app = typer.Typer(help="The knowledge base: papers, fork code and diffs, backend gaps. Ingest and query.",
                     no_args_is_help=True)
ingest_app = typer.Typer(help="Add sources to the knowledge base (again: only what changed is rewritten).",
                         no_args_is_help=True)
kb_app.add_typer(ingest_app, name="ingest")


@kb_app.callback()
def _kb_options(ctx: typer.Context,
                chroma_url: Optional[str] = typer.Option(None, "--chroma-url", envvar="READFIRST_CHROMA_URL",
                                                         help="A Chroma server (http://HOST:PORT) instead of the "
                                                              "embedded store under the data directory."),
                model: str = typer.Option(DEFAULT_MODEL, "--embedding-model", envvar="READFIRST_EMBEDDING_MODEL",
                                          help="sentence-transformers model (a local directory or a cached "
                                               "name); the default ships with readfirst."),
                backend: str = typer.Option(DEFAULT_BACKEND, "--embedding-backend",
                                            envvar="READFIRST_EMBEDDING_BACKEND",
                                            help=f"How the model runs: {', '.join(BACKENDS)} (a store answers "
                                                 f"only the backend it was built with).")) -> None:
    if backend not in BACKENDS:
        raise typer.BadParameter(f"unknown embedding backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    ctx.meta["kb"] = {"chroma_url": chroma_url, "model": model, "backend": backend}


def _open(ctx: typer.Context, *, writable: bool) -> KnowledgeBase:
    app = app_context(ctx)
    opts = ctx.meta.get("kb", {})
    embedder = make_embedder(opts.get("model", DEFAULT_MODEL), backend=opts.get("backend", DEFAULT_BACKEND),
                             export_dir=app.paths.models / "embeddings")
    return KnowledgeBase(app.paths.knowledge_base, embedder, chroma_url=opts.get("chroma_url"), writable=writable)


class _RateColumn(ProgressColumn):
    """Chunks per second over rich's recent window (None until two updates have come)."""

    def render(self, task) -> Text:
        return Text(f"{task.speed:.0f} chunks/s" if task.speed and task.total else "")


@contextlib.contextmanager
def _progress(app: AppContext, title: str):
    """On stderr (stdout stays clean for --json): while reading, a spinner and the units read; while writing, the
    chunks written of all, their rate and the time left."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  _RateColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=app.err,
                  transient=True) as bar:
        task = bar.add_task(escape(f"{title} · reading"), total=None)

        def step(phase: str, done: int, total: int | None) -> None:
            if phase == "writing" and bar.tasks[0].total is None:
                bar.reset(task, total=total, completed=0, description=escape(f"{title} · writing chunks"))
            bar.update(task, completed=done)
        yield step


def _report(app: AppContext, source: str, summary: IngestSummary, *, as_json: bool) -> dict[str, Any]:
    data = {"source": source, **summary.as_dict()}
    if not as_json:
        app.console.print(f"[bold]{escape(source)}[/bold]: {summary.added} added, {summary.unchanged} unchanged, "
                          f"{summary.replaced} replaced, {summary.removed} removed, "
                          f"{len(summary.skipped)} skipped ({summary.chunks_added} chunks written, "
                          f"{summary.chunks_embedded} of them embedded, the rest from the cache; "
                          f"{summary.chunks_deleted} deleted)", soft_wrap=True)
        reasons: dict[str, int] = {}
        for _, reason in summary.skipped:
            reasons[reason] = reasons.get(reason, 0) + 1
        for reason, n in sorted(reasons.items(), key=lambda r: -r[1]):
            example = next(u for u, r in summary.skipped if r == reason).split("::")[-1]
            app.console.print(f"  skipped {n}: {reason} (e.g. {example})", soft_wrap=True, markup=False)
        for note in summary.notes:
            app.console.print(note, soft_wrap=True, markup=False)
    return data


def _run(ctx: typer.Context, recipe_list: list[dict[str, Any]], *, as_json: bool,
         arxiv_url: str | None = None) -> None:
    from ..sandbox.machine_lock import machine_lock
    app = app_context(ctx)
    results = []
    # Embedding is CPU work like a build: it shares the machine with builds, never with a measurement.
    with _open(ctx, writable=True) as kb, machine_lock(app.paths.cache, exclusive=False):
        for recipe in recipe_list:
            title = recipes.source_key(recipe)
            try:
                with _progress(app, title) as step:
                    source, summary = recipes.run_recipe(kb, recipe, app.paths, progress=step,
                                                         arxiv_url=arxiv_url)
            except KeyboardInterrupt:
                # Everything written so far stays searchable; a rerun skips it and embeds nothing twice.
                app.err.print(f"interrupted: {kb.count()} chunks in the knowledge base; run the same command "
                              f"again to continue where it stopped")
                raise
            results.append(_report(app, source, summary, as_json=as_json))
    if as_json:
        app.emit_json(results)


_JSON = typer.Option(False, "--json", help="Print the summary as JSON.")


@ingest_app.command("fork")
def ingest_fork(ctx: typer.Context,
                fork: str = typer.Argument(..., help="ik_llama.cpp, a git URL or a path."),
                upstream: str = typer.Option("llama.cpp", "--upstream", help="What the fork is compared with."),
                subdir: list[str] = typer.Option([], "--subdir", help="Only this part of the tree (repeatable), "
                                                                      "e.g. ggml/src."),
                as_trees: Optional[bool] = typer.Option(None, "--as-trees/--by-commits",
                                                        help="Compare file by file (vendored trees) or by "
                                                             "commits since the merge base (default: trees for "
                                                             "two known names or a plain directory, else "
                                                             "commits)."),
                hot_path: list[str] = typer.Option([], "--hot-path",
                                                   help="Read the fork's files matching this glob, in any "
                                                        "language (repeatable; as a readfirst.toml's hot_paths). "
                                                        "Default: its C/C++ sources and Markdown."),
                as_json: bool = _JSON) -> None:
    """A fork against its upstream: its diffs, and the code only it has, chunked by function."""
    _run(ctx, [recipes.fork_recipe(fork, upstream, subdirs=subdir, as_trees=as_trees, paths=hot_path)],
         as_json=as_json)


@ingest_app.command("backends")
def ingest_backends(ctx: typer.Context,
                    target: str = typer.Argument("llama.cpp", help="A ggml-based tree: llama.cpp, a URL, a path."),
                    as_json: bool = _JSON) -> None:
    """Which ops and fused op sequences other backends (CUDA, Metal, Vulkan...) have and the CPU lacks."""
    _run(ctx, [{"kind": "backends", "target": target}], as_json=as_json)


@ingest_app.command("papers")
def ingest_papers(ctx: typer.Context,
                  items: list[str] = typer.Argument(..., help="arXiv ids, search queries, local PDF/markdown/text "
                                                              "files, or `reading-list` (the curated notes)."),
                  max_results: int = typer.Option(5, "--max-results", help="Papers per search query."),
                  no_pdf: bool = typer.Option(False, "--no-pdf", help="Index abstracts only."),
                  arxiv_url: Optional[str] = typer.Option(None, "--arxiv-url", envvar="READFIRST_ARXIV_URL",
                                                          help="Another arXiv API endpoint (a mirror, a test "
                                                               "server)."),
                  as_json: bool = _JSON) -> None:
    """Papers from arXiv (search or ids) and local documents, chunked along sections."""
    from ..errors import KnowledgeBaseError
    from ..knowledge_base.papers import missing_document
    for item in items:
        if item != "reading-list" and (why := missing_document(item)):
            raise KnowledgeBaseError(f"{why} (a path is read as a local document, never searched on arXiv)")
    _run(ctx, recipes.paper_recipes(items, max_results=max_results, fetch_pdf=not no_pdf, arxiv_url=arxiv_url),
         as_json=as_json, arxiv_url=arxiv_url)


@ingest_app.command("path")
def ingest_path(ctx: typer.Context,
                paths: list[Path] = typer.Argument(..., help="Files or directories (code, markdown, text, PDF)."),
                as_json: bool = _JSON) -> None:
    """Local files and directories; code is chunked by function, text by section."""
    _run(ctx, [{"kind": "path", "path": str(p.expanduser().resolve())} for p in paths], as_json=as_json)


@kb_app.command("query")
def query(ctx: typer.Context,
          text: str = typer.Argument(..., help="What to look for: words, or exact identifiers."),
          k: int = typer.Option(8, "-k", "--top", min=1, max=200, help="How many results."),
          kind: list[str] = typer.Option([], "--kind", help=f"Only these kinds: {', '.join(KINDS)}."),
          repo: Optional[str] = typer.Option(None, "--repo", help="Only chunks of this repository."),
          path: Optional[str] = typer.Option(None, "--path", help="Only paths matching this glob, e.g. "
                                                                  "'ggml/src/iqk/*'."),
          mode: str = typer.Option("hybrid", "--mode", help=f"One of {', '.join(MODES)}."),
          as_json: bool = typer.Option(False, "--json", help="Results as JSON (same fields).")) -> None:
    """Search by meaning and by exact identifiers at once."""
    app = app_context(ctx)
    unknown = [x for x in kind if x not in KINDS]
    if unknown:
        raise typer.BadParameter(f"unknown kind {unknown[0]!r}; choose from {', '.join(KINDS)}")
    with _open(ctx, writable=False) as kb:
        results = kb.query(text, k=k, where={"kind": kind, "repo": repo, "path": path}, mode=mode)
    fields = ("score", "kind", "repo", "revision", "path", "start_line", "end_line", "symbol", "paper_id",
              "title", "section", "url", "snippet")
    if as_json:
        app.emit_json([{f: r.get(f) for f in fields} for r in results])
        return
    if not results:
        app.console.print("no results (is the knowledge base empty? see `readfirst kb stats`)")
    for i, r in enumerate(results, 1):
        where = r.get("path", "") + (f":{r['start_line']}-{r['end_line']}" if r.get("start_line") else "")
        what = r.get("symbol") or r.get("section") or ""
        cite = " ".join(x for x in (r.get("repo") or r.get("paper_id") or r.get("title", ""), where, what) if x)
        # soft_wrap: a path or identifier cut by the terminal's width could not be copied back.
        app.console.print(f"[bold]{i:>2}.[/bold] {r['score']:.4f} [cyan]{r['kind']}[/cyan] {escape(cite)}",
                          markup=True, highlight=False, soft_wrap=True)
        for line in r["snippet"].splitlines()[:4]:
            app.console.print(f"      {line}", markup=False, highlight=False, soft_wrap=True)


@kb_app.command("stats")
def stats(ctx: typer.Context, as_json: bool = _JSON) -> None:
    """How many chunks, of which kinds, from which sources."""
    app = app_context(ctx)
    with _open(ctx, writable=False) as kb:
        data = kb.stats()
    if as_json:
        app.emit_json(data)
        return
    app.console.print(f"{data['location']}: {data['chunks']} chunks (lexical index: {data['lexical_chunks']}), "
                      f"model {data['embedder']}")
    for name, n in sorted(data["by_kind"].items()):
        app.console.print(f"  {name:<12} {n}")
    for name, n in sorted(data["by_source"].items()):
        app.console.print(f"  {n:>7}  {name}", markup=False)


@kb_app.command("reset")
def reset(ctx: typer.Context, yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask."),
          as_json: bool = typer.Option(False, "--json", help="Print what was removed as JSON.")) -> None:
    """Remove everything from the knowledge base."""
    app = app_context(ctx)
    if not yes:  # asked on stderr: with --json, stdout holds the one document only
        typer.confirm("Remove every chunk and recorded source from the knowledge base?", abort=True, err=True)
    with _open(ctx, writable=True) as kb:
        removed = kb.count()
        kb.reset()
    if as_json:
        app.emit_json({"knowledge_base": str(app.paths.knowledge_base), "removed_chunks": removed})
    else:
        app.console.print(f"knowledge base emptied ({removed} chunks removed)")


@kb_app.command("rebuild")
def rebuild(ctx: typer.Context, as_json: bool = _JSON) -> None:
    """Re-create the store from its recorded sources (also when it no longer opens)."""
    app = app_context(ctx)
    opts = ctx.meta.get("kb", {})
    recorded = recipes.wipe(app.paths.knowledge_base, opts.get("chroma_url"))
    app.say(f"re-ingesting {len(recorded)} recorded source{'s' if len(recorded) != 1 else ''}")
    _run(ctx, list(recorded.values()), as_json=as_json)


def register(app: typer.Typer) -> None:
    app.add_typer(kb_app, name="kb")
