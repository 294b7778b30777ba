"""Ingestion recipes: what the user asked to ingest, recorded so that `kb rebuild` can do it again.

A recipe is plain data ({"kind": "fork", "fork": "ik_llama.cpp", ...}); `run_recipe` resolves its sources
(known names → pinned sdists, else git URL or path) and feeds its units to the store.

A fork compared as trees is read again only where it changed: the blob of every path on both sides is recorded
after a complete ingestion, and the next one reads (and replaces, or removes) only the files whose blobs differ.
Re-reading the whole ik_llama.cpp tree takes about half a minute; one changed file, seconds.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..config import Paths
from ..errors import KnowledgeBaseError, SourceError
from ..foreign_git import ForeignRepo, find_top
from ..sources import KNOWN_SOURCES, prepare_source
from .backends import gap_units, scan_backends
from .chunking import CODE_EXTENSIONS, TEXT_EXTENSIONS, Skipped, Unit, chunk_file, has_grammar
from .forks import OUTSIDE_HOT_PATHS, ScratchRepo, Side, fork_units
from .papers import ARXIV_ID, arxiv_client, arxiv_units, document_unit, find_papers, reading_list_units
from .store import IngestSummary, KnowledgeBase

# (phase, done, total): "reading" counts units (total unknown), "writing" counts chunks of the units read.
Progress = Callable[[str, int, int | None], None]
# A tree comparison reads anew when more paths than this changed (a pathspec that long is a full read anyway).
MAX_CHANGED_PATHS = 300


def fork_recipe(fork: str, upstream: str = "llama.cpp", *, subdirs: Sequence[str] = (),
                as_trees: bool | None = None, paths: Sequence[str] = ()) -> dict[str, Any]:
    """`paths`: the target's hot paths (globs), which decide what of the fork is read, in any language; none
    (llama.cpp, `kb ingest fork`): its C/C++ sources and Markdown."""
    # A pinned sdist is a vendored tree with no history, and so is a plain directory: with one on either side
    # there is no shared history to follow, so compare the trees. Two git repositories are compared by history.
    trees = as_trees if as_trees is not None else (
        fork in KNOWN_SOURCES or upstream in KNOWN_SOURCES or _plain_directory(fork) or _plain_directory(upstream))
    recipe = {"kind": "fork", "fork": fork, "upstream": upstream, "subdirs": list(subdirs), "as_trees": trees}
    return {**recipe, "paths": list(paths)} if paths else recipe  # without: the recipe recorded as before


def _plain_directory(name: str) -> bool:
    local = Path(name).expanduser()
    return name not in KNOWN_SOURCES and local.is_dir() and not (local / ".git").exists()


def source_key(recipe: dict[str, Any]) -> str:
    """The source's key in the knowledge base, and its name wherever a user reads it: words between the paths
    (git's `a..b` glued to a path read as its parent folder: fork:/home/me/fork../home/me/proj)."""
    kind = recipe["kind"]
    if kind == "fork":
        scope = f" in {', '.join(recipe['subdirs'])}" if recipe.get("subdirs") else ""
        # Other hot paths read other files: another source, so that neither prunes the other's units.
        hot = f" for hot paths {', '.join(recipe['paths'])}" if recipe.get("paths") else ""
        return f"fork:{recipe['fork']} against {recipe['upstream']}{scope}{hot}"
    if kind == "backends":
        return f"backends:{recipe['target']}"
    if kind == "papers":
        return f"papers:{recipe['item']}"
    if kind == "path":
        return f"path:{recipe['path']}"
    raise KnowledgeBaseError(f"unknown ingestion kind {kind!r}")


def _prepare(name: str, paths: Paths, *, need_git: bool):
    local = Path(name).expanduser()
    if need_git and name not in KNOWN_SOURCES and local.is_dir() and not (local / ".git").exists():
        raise KnowledgeBaseError(f"{name} is not a git repository; a fork is compared by its git history "
                                 f"(pass --as-trees to compare the directories file by file)")
    try:
        return prepare_source(name, paths.sources, paths.sdists)
    except SourceError as e:
        raise KnowledgeBaseError(f"cannot prepare {name}: {e}") from e


def _display_name(name: str) -> str:
    return name if name in KNOWN_SOURCES else Path(name.rstrip("/")).name.removesuffix(".git") or name


def _repo_of(directory: Path) -> tuple[Path, str, str, list[str]]:
    """(base, repo name, revision, files committed under `directory`) for citing: inside a git work tree, paths
    are relative to its top level at HEAD (so upstream's ops.cpp is `ggml/src/ggml-cpu/ops.cpp`); elsewhere
    relative to the directory given. The repository is read through a copy of ours (foreign_git): git never
    runs in the folder, whose configuration could run anything."""
    top = find_top(directory)
    if top is None:
        return directory, directory.name, "", []
    try:
        with ForeignRepo(top) as repo:
            head = repo.commit("HEAD") or ""
            files = repo.files(head, directory.resolve().relative_to(top).as_posix()) if head else []
    except SourceError as e:
        raise KnowledgeBaseError(str(e)) from e
    return top, top.name, head, files


def _walk(root: Path) -> list[Path]:
    """Every regular file under `root`, never descending into a linked folder nor a hidden one."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath) / f for f in filenames if not f.startswith(".")]
    return sorted(p for p in found if p.is_file())


def _path_units(root: Path, *, source: str) -> Iterator[Unit | Skipped]:
    if not root.exists():
        yield Skipped(f"{source}::{root}", "no such file or directory")
        return
    root = root.resolve()
    base, repo, revision, committed = _repo_of(root if root.is_dir() else root.parent)
    if root.is_file():
        yield _one_path(root, base, source, repo, revision)
        return
    files = [base / p for p in committed] or _walk(root)
    for path in files:
        # Every path, not only a link at its end: `docs -> /elsewhere` makes docs/secret.md a plain name whose
        # text lies outside. Read only what resolves inside the tree.
        if not path.resolve().is_relative_to(root):
            yield Skipped(f"{source}::file:{path.relative_to(root)}", "a symlink out of the tree")
            continue
        yield _one_path(path, base, source, repo, revision)


def _one_path(path: Path, base: Path, source: str, repo: str, revision: str) -> Unit | Skipped:
    if path.suffix.lower() == ".pdf" or path.suffix.lower() in TEXT_EXTENSIONS:
        return document_unit(path, source=source)
    rel = str(path.resolve().relative_to(base.resolve()))
    if path.suffix.lower() in CODE_EXTENSIONS:
        return chunk_file(path, rel, kind="doc", unit=f"{source}::file:{rel}", repo=repo, revision=revision)
    return Skipped(f"{source}::file:{rel}", f"not a source, text or PDF file ({path.suffix or 'no extension'})")


def recipe_units(recipe: dict[str, Any], paths: Paths, *, arxiv_url: str | None = None,
                 scratch: Path | None = None) -> Iterator[Unit | Skipped]:
    """The units a recipe yields (sources are prepared first, so errors come before anything is written)."""
    source = source_key(recipe)
    kind = recipe["kind"]
    if kind == "fork":
        fork = _prepare(recipe["fork"], paths, need_git=not recipe["as_trees"])
        upstream = _prepare(recipe["upstream"], paths, need_git=not recipe["as_trees"])
        return fork_units(scratch or paths.knowledge_base / "git",
                          Side(_display_name(recipe["fork"]), fork.path, fork.baseline),
                          Side(_display_name(recipe["upstream"]), upstream.path, upstream.baseline),
                          source=source, subdirs=recipe.get("subdirs", ()), as_trees=recipe["as_trees"],
                          paths=recipe.get("paths", ()))
    if kind == "backends":
        target = _prepare(recipe["target"], paths, need_git=False)
        scan = scan_backends(target.path, target.baseline)
        return gap_units(scan, repo=_display_name(recipe["target"]), revision=target.baseline, source=source)
    if kind == "path":
        return _path_units(Path(recipe["path"]), source=source)
    if kind == "papers":
        item = recipe["item"]
        if item == "reading-list":
            return reading_list_units(source=source)
        local = Path(item).expanduser()
        if local.exists():
            return _path_units(local.resolve(), source=source)
        client = arxiv_client(arxiv_url or recipe.get("arxiv_url"))
        try:
            if ARXIV_ID.match(item):
                papers = find_papers(client, ids=[ARXIV_ID.match(item).group(1)])
            else:
                papers = find_papers(client, query=item, max_results=int(recipe.get("max_results", 5)))
        except Exception as e:  # the arxiv client raises HTTP, connection and parse errors of several types
            raise KnowledgeBaseError(f"arXiv did not answer for {item!r} ({type(e).__name__}: "
                                     f"{str(e)[:200]})") from e
        return arxiv_units(papers, source=source, fetch_pdf=recipe.get("fetch_pdf", True))
    raise KnowledgeBaseError(f"unknown ingestion kind {kind!r}")


def paper_recipes(items: Sequence[str], *, max_results: int = 5, fetch_pdf: bool = True,
                  arxiv_url: str | None = None) -> list[dict[str, Any]]:
    recipes = []
    for item in items:
        local = Path(item).expanduser()
        recipe = {"kind": "papers", "item": str(local.resolve()) if local.exists() else item,
                  "max_results": max_results, "fetch_pdf": fetch_pdf}
        if arxiv_url:
            recipe["arxiv_url"] = arxiv_url
        recipes.append(recipe)
    return recipes


# -- a tree comparison, read where it changed -------------------------------------------------------------------

def _blobs(scratch: ScratchRepo, revision: str, subdirs: Sequence[str]) -> dict[str, str]:
    listing = scratch.git("ls-tree", "-r", "--full-tree", revision, "--", *subdirs)
    blobs = {}
    for line in listing.splitlines():
        meta, _, path = line.partition("\t")
        blobs[path] = meta.split()[2]
    return blobs


def _fork_tree_plan(kb: KnowledgeBase, recipe: dict[str, Any], paths: Paths, source: str
                    ) -> tuple[Iterator[Unit | Skipped], bool | set[str], dict[str, Any]]:
    """(units, what may be pruned, the state to record once they are written) of a tree comparison: every file
    on a first read (or when much changed), else only the files whose blob changed on either side."""
    fork = _prepare(recipe["fork"], paths, need_git=False)
    upstream = _prepare(recipe["upstream"], paths, need_git=False)
    fork_side = Side(_display_name(recipe["fork"]), fork.path, fork.baseline)
    upstream_side = Side(_display_name(recipe["upstream"]), upstream.path, upstream.baseline)
    scratch_dir = paths.knowledge_base / "git"
    subdirs = list(recipe.get("subdirs", ()))
    scratch = ScratchRepo(scratch_dir, fork_side, upstream_side)
    state = {"fork": _blobs(scratch, fork.baseline, subdirs), "upstream": _blobs(scratch, upstream.baseline, subdirs)}
    previous = kb.tree_state(source)
    changed: set[str] | None = None
    if previous and kb.has_source(source):
        changed = {p for side in ("fork", "upstream") for p in state[side].keys() | previous[side].keys()
                   if state[side].get(p) != previous[side].get(p)}
        if changed:
            # A rename pairs two paths: whichever side changed, read both so git still sees the rename.
            status = scratch.git("diff", "--name-status", "-M", "--no-color", upstream.baseline, fork.baseline,
                                 "--", *subdirs)
            for line in status.splitlines():
                named = line.split("\t")[1:]
                if changed.intersection(named):
                    changed.update(named)
        if len(changed) > MAX_CHANGED_PATHS:
            changed = None
    if changed is None:
        units = fork_units(scratch_dir, fork_side, upstream_side, source=source, subdirs=subdirs, as_trees=True,
                           paths=recipe.get("paths", ()))
        return units, True, state
    if not changed:
        return iter(()), set(), state
    units = fork_units(scratch_dir, fork_side, upstream_side, source=source, subdirs=sorted(changed), as_trees=True,
                       paths=recipe.get("paths", ()))
    prunable = {f"{source}::{shape}:{p}" for p in changed for shape in ("file", "diff")}
    return units, prunable, state


def _forget_renamed(kb: KnowledgeBase, recipe: dict[str, Any], source: str) -> None:
    """The same recipe recorded under another key (a key this version names differently, e.g. `fork:A..B`
    before `fork:A against B`) is removed before it is read again: else its chunks would answer every query
    twice."""
    def same(r: Any) -> dict[str, Any] | None:
        return {k: v for k, v in r.items() if v not in (None, [], (), "")} if isinstance(r, dict) else None

    for old, recorded in kb.sources().items():
        if old != source and same(recorded) == same(recipe):
            kb.forget_source(old)


def run_recipe(kb: KnowledgeBase, recipe: dict[str, Any], paths: Paths, *, progress: Progress | None = None,
               arxiv_url: str | None = None) -> tuple[str, IngestSummary]:
    source = source_key(recipe)
    if recipe["kind"] == "path" and not Path(recipe["path"]).exists():
        raise KnowledgeBaseError(f"{recipe['path']}: no such file or directory")  # and nothing recorded
    tree_state = None
    # A query or reading-list item may return different papers over time: never prune papers.
    prune: bool | Collection[str] = recipe["kind"] != "papers"
    if recipe["kind"] == "fork" and recipe["as_trees"]:
        units, prune, tree_state = _fork_tree_plan(kb, recipe, paths, source)
    else:
        units = recipe_units(recipe, paths, arxiv_url=arxiv_url)
    _forget_renamed(kb, recipe, source)
    kb.record_source(source, recipe)  # before writing: an interrupted ingestion is replayed by `kb rebuild`
    # Read everything first: the writing phase then knows how many chunks it has, for a rate and an ETA.
    items: list[Unit | Skipped] = []
    for item in units:
        items.append(item)
        if progress:
            progress("reading", len(items), None)
    total = sum(len(i.chunks) for i in items if isinstance(i, Unit))
    summary = kb.ingest(source, items, prune=prune,
                        progress=(lambda done, _unit: progress("writing", done, total)) if progress else None)
    if tree_state is not None:
        kb.record_tree_state(source, tree_state)  # only once everything is written: else the next read is whole
    note = fork_note(recipe, items, partial=tree_state is not None and prune is not True) \
        if recipe["kind"] == "fork" else None
    summary.notes += [note] if note else []
    return source, summary


def _reason_kind(reason: str) -> str:
    """A skip's reason without its particulars ("larger than 2 MiB (3.1 MiB)" -> "larger than 2 MiB")."""
    return re.sub(r"\s*\(.*\)$", "", reason.split(":")[0]).strip()


def _code_paths(items: Sequence[Unit | Skipped]) -> set[str]:
    return {c.origin["path"] for i in items if isinstance(i, Unit) for c in i.chunks
            if c.origin.get("path") and not c.origin["path"].lower().endswith(".md")}


def fork_note(recipe: dict[str, Any], items: Sequence[Unit | Skipped], *, partial: bool = False) -> str | None:
    """One sentence on why a fork's reading gave no code, counted by reason (outside the target's hot paths,
    binary, too large, no commits of its own), or on its files cut into line windows for want of a grammar;
    None when there is nothing to say (or when only the changed part of a tree was read)."""
    code = _code_paths(items)
    name = recipe.get("fork", "the fork")
    if code:
        plain = sorted(p for p in code if not has_grammar(Path(p).suffix))
        if not plain:
            return None
        kinds = ", ".join(sorted({Path(p).suffix or Path(p).name for p in plain}))
        return (f"{name}: {len(plain)} file(s) in a language without a grammar ({kinds}) read as line chunks, "
                f"without function names")
    if partial:
        return None
    counts: dict[str, int] = {}
    for item in items:
        if isinstance(item, Skipped):
            kind = _reason_kind(item.reason)
            counts[kind] = counts.get(kind, 0) + 1
    if counts:
        hot = f" ({', '.join(recipe['paths'])})" if recipe.get("paths") else ""
        why = ", ".join(f"{n} {kind}{hot if kind == OUTSIDE_HOT_PATHS else ''}"
                        for kind, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        return f"{name} gave no code: its changed files were skipped: {why}"
    if not any(isinstance(i, Unit) for i in items):
        what = "no file differs from" if recipe.get("as_trees") else "it has no commits of its own since it left"
        return f"{name} gave no code: {what} {recipe.get('upstream', 'upstream')}"
    if not recipe.get("paths"):
        return (f"{name} gave no code: its changes touch no C/C++ source, and without the target's hot_paths "
                f"(or --hot-path) only C/C++ sources and Markdown are read")
    return f"{name} gave no code: its changes under {', '.join(recipe['paths'])} hold no hunk"


def wipe(directory: Path, chroma_url: str | None) -> dict[str, dict[str, Any]]:
    """Remove the store (holding the writer's lock) and return the recorded recipes, for `kb rebuild`.

    Works even when the store no longer opens: the recipes are a plain JSON file beside it.
    """
    import json

    from filelock import FileLock, Timeout
    manifest = directory / ("sources.json" if not chroma_url else "sources-server.json")
    try:
        recipes = json.loads(manifest.read_text())
    except (OSError, ValueError):
        recipes = {}
    directory.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(directory / "write.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise KnowledgeBaseError(f"another process is writing to the knowledge base at {directory}; "
                                 f"wait for it before rebuilding") from None
    try:
        if chroma_url:
            from .store import COLLECTION, open_client
            try:
                open_client(directory, chroma_url).delete_collection(COLLECTION)
            except KnowledgeBaseError:
                raise
            except Exception:
                pass  # no collection yet
            for f in directory.glob("lexical-*.sqlite*"):
                f.unlink()
            (directory / "fork-trees-server.json").unlink(missing_ok=True)
        else:
            from chromadb.api.shared_system_client import SharedSystemClient
            SharedSystemClient.clear_system_cache()  # a client opened earlier in this process holds the old files
            shutil.rmtree(directory / "chroma", ignore_errors=True)
            for f in directory.glob("lexical.sqlite*"):
                f.unlink()
            (directory / "fork-trees.json").unlink(missing_ok=True)
    finally:
        lock.release()
    return recipes

