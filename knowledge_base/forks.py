"""A fork against its upstream, as chunks: what the fork changed, and the code only the fork has.

Two shapes of fork:
- with shared history (a git fork): the commits since the merge base, each hunk a chunk with its commit message;
- without (a vendored tree, e.g. ik_llama.cpp from its sdist against llama.cpp from another): the diff of every
  file both trees have (one chunk per hunk), and every fork-only source file chunked by function.

What a fork contributes is decided by the target: with `paths` (the target's hot_paths), every text file under
them, in any language, and the Markdown that explains it; a file outside them, binary or over the size cap is
skipped with that reason, so that a fork giving nothing says why. Without `paths` (llama.cpp), its C/C++ sources
and Markdown, as always.

Both repositories are read through a scratch bare repository whose object store borrows theirs (git alternates):
git then diffs the two baselines directly, renames included, without copying or touching either repository.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from unidiff import PatchSet

from ..errors import KnowledgeBaseError, SourceError
from ..foreign_git import hardened_env, locate
from ..records import in_paths
from .chunking import (CODE_EXTENSIONS, MAX_CHUNK_LINES, MAX_FILE_BYTES, Chunk, Skipped, Unit, chunk_code,
                       chunk_text, function_spans, has_grammar, symbol_at)

# Without the target's hot paths: the sources of a C/C++ project (llama.cpp) and their Markdown.
FORK_EXTENSIONS = CODE_EXTENSIONS | {".md"}
OUTSIDE_HOT_PATHS = "outside the target's hot_paths"
MAX_COMMITS = 500


@dataclass(frozen=True)
class Side:
    """One repository at one revision, and the name chunks cite it by."""
    name: str
    repo: Path
    revision: str


class ScratchRepo:
    """A bare repository that sees the objects of both sides, for diffs between unrelated trees."""

    def __init__(self, directory: Path, fork: Side, upstream: Side):
        self.fork, self.upstream = fork, upstream
        key = hashlib.sha256(f"{fork.repo}\0{upstream.repo}".encode()).hexdigest()[:12]
        self.path = directory / f"scratch-{key}.git"
        if not (self.path / "objects").is_dir():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.git("init", "-q", "--bare", str(self.path), cwd=False)
        stores = [_object_dir(fork.repo), _object_dir(upstream.repo)]
        (self.path / "objects" / "info").mkdir(parents=True, exist_ok=True)
        (self.path / "objects" / "info" / "alternates").write_text("\n".join(str(s) for s in stores) + "\n")

    def git(self, *args: str, cwd: bool = True, check: bool = True) -> str:
        # Above the cap a file is binary to git's diff: a 200 MB hot file is one line, not 200 MB of hunks.
        cap = ["-c", f"core.bigFileThreshold={MAX_FILE_BYTES}"]
        cmd = ["git", "--no-pager", *cap, "--git-dir", str(self.path), *args] if cwd else ["git", *cap, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=hardened_env())
        if check and proc.returncode != 0:
            raise KnowledgeBaseError(f"git {' '.join(args[:2])} failed: {proc.stderr.strip()[-400:]}")
        return proc.stdout

    def too_large(self, revision: str, path: str) -> str | None:
        size = self.git("cat-file", "-s", f"{revision}:{path}", check=False).strip()
        if size.isdigit() and int(size) > MAX_FILE_BYTES:
            return f"larger than {MAX_FILE_BYTES // 2**20} MiB ({int(size) / 2**20:.1f} MiB)"
        return None

    def merge_base(self) -> str | None:
        out = self.git("merge-base", self.fork.revision, self.upstream.revision, check=False).strip()
        return out or None

    def blob(self, revision: str, path: str) -> str | Skipped:
        too_large = self.too_large(revision, path)
        if too_large:
            return Skipped(path, too_large)
        proc = subprocess.run(["git", "--no-pager", "--git-dir", str(self.path), "cat-file", "blob",
                               f"{revision}:{path}"], capture_output=True, env=hardened_env())
        if proc.returncode != 0:
            return Skipped(path, "unreadable in git")
        if b"\0" in proc.stdout[:8192]:
            return Skipped(path, "binary file")
        return proc.stdout.decode("utf-8", errors="replace")


def _object_dir(repo: Path) -> Path:
    """The object store of a prepared source, found by reading files (no git run in the tree)."""
    try:
        return locate(repo)[1] / "objects"
    except SourceError as e:
        raise KnowledgeBaseError(f"{repo} is not a git repository readfirst can read: {e}") from e


def _in_subdirs(path: str, subdirs: Sequence[str]) -> bool:
    return not subdirs or any(path == s or path.startswith(s.rstrip("/") + "/") for s in subdirs)


def _wanted(path: str, subdirs: Sequence[str], paths: Sequence[str] = ()) -> bool:
    """Whether the fork's change to `path` is read: under the target's hot paths (any language) or Markdown;
    without hot paths, by extension."""
    if not _in_subdirs(path, subdirs):
        return False
    if paths:
        return in_paths(path, paths) or path.lower().endswith(".md")
    return Path(path).suffix.lower() in FORK_EXTENSIONS


def _spans(scratch: ScratchRepo, revision: str, path: str) -> list:
    """The functions of `path` at `revision`, which name its hunks: its blob is read only in a language with a
    grammar (a README's hunks need no name)."""
    suffix = Path(path).suffix
    if not has_grammar(suffix):
        return []
    text = scratch.blob(revision, path)
    return function_spans(text, suffix) if isinstance(text, str) else []


def _span_index(spans, line: int | None) -> int | None:
    if line is None:
        return None
    for i, span in enumerate(spans):
        if span.start_line <= line <= span.end_line:
            return i
    return None


def _pieces(hunk, spans) -> list[list]:
    """A hunk's lines cut where the fork file's functions begin or end (and at MAX_CHUNK_LINES), so that a
    large added region (a new file, a rewritten one) is chunked by function as fork-only code is."""
    pieces: list[list] = [[]]
    current = None
    last_target = hunk.target_start
    for line in hunk:
        last_target = line.target_line_no or last_target
        index = _span_index(spans, last_target) if spans else None
        piece = pieces[-1]
        if piece and (len(piece) >= MAX_CHUNK_LINES or (index != current and len(piece) >= 3)):
            pieces.append([])
        pieces[-1].append(line)
        current = index
    return [p for p in pieces if p]


def _hunk_chunks(patch_file, *, header: str, kind: str, unit: str, fork: Side, spans, extra: dict,
                 revision: str) -> list[Chunk]:
    chunks = []
    for hunk in patch_file:
        head = f"@@ -{hunk.source_start},{hunk.source_length} +{hunk.target_start},{hunk.target_length} @@ " \
               f"{hunk.section_header}".rstrip()
        for piece in _pieces(hunk, spans):
            changed = [ln for ln in piece if ln.is_added or ln.is_removed]
            if not changed:
                continue  # context only: the change is in a neighbouring piece
            # The function holding most of the changed lines names the chunk.
            votes: dict[str, int] = {}
            last_target = hunk.target_start
            for ln in piece:
                last_target = ln.target_line_no or last_target
                if ln.is_added or ln.is_removed:
                    name = symbol_at(spans, last_target) if spans else ""
                    votes[name] = votes.get(name, 0) + 1
            symbol = max((n for n in votes if n), key=lambda n: votes[n], default="")
            if not symbol and "(" in hunk.section_header:
                symbol = (hunk.section_header.split("(")[0].split() or [""])[-1]
            target_lines = [ln.target_line_no for ln in piece if ln.target_line_no]
            origin = {"repo": fork.name, "revision": revision, "path": patch_file.path,
                      "start_line": min(target_lines) if target_lines else hunk.target_start,
                      "end_line": max(target_lines) if target_lines else hunk.target_start,
                      "symbol": symbol.strip("*&"), **extra}
            where = f"{patch_file.path}:{origin['start_line']}-{origin['end_line']} {origin['symbol']}".rstrip()
            body = "\n".join(str(ln).rstrip("\n") for ln in piece)
            chunks.append(Chunk(f"// {header}: {where}\n{head}\n{body}", kind, unit, origin))
    return chunks


def tree_units(scratch: ScratchRepo, *, source: str, subdirs: Sequence[str] = (), paths: Sequence[str] = ()
               ) -> Iterator[Unit | Skipped]:
    """Vendored trees: a unit per changed file (its hunks) and per fork-only file (its functions)."""
    fork, upstream = scratch.fork, scratch.upstream
    status = scratch.git("diff", "--name-status", "-M", "--no-color", upstream.revision, fork.revision,
                         "--", *subdirs)
    for line in status.splitlines():
        fields = line.split("\t")
        code, path = fields[0], fields[-1]
        if code.startswith("D"):
            continue  # upstream-only files say nothing about the fork
        if not _wanted(path, subdirs, paths):
            if paths and _in_subdirs(path, subdirs):
                yield Skipped(f"{source}::{'file' if code.startswith('A') else 'diff'}:{path}", OUTSIDE_HOT_PATHS)
            continue
        if code.startswith("A"):
            unit = f"{source}::file:{path}"
            text = scratch.blob(fork.revision, path)
            if isinstance(text, Skipped):
                yield Skipped(unit, text.reason)
                continue
            if has_grammar(Path(path).suffix):
                chunks = chunk_code(text, path=path, kind="fork-code", unit=unit, repo=fork.name,
                                    revision=fork.revision)
            else:
                chunks = chunk_text(text, path=path, kind="fork-code", unit=unit, repo=fork.name,
                                    revision=fork.revision)
            yield Unit(unit, chunks)
            continue
        unit = f"{source}::diff:{path}"
        old_path = fields[1] if code.startswith("R") else path
        # Both sides within the cap before the diff, whose text would be as large as the file (the fork's side
        # is checked as its blob is read).
        text = scratch.blob(fork.revision, path)
        too_large = text.reason if isinstance(text, Skipped) else scratch.too_large(upstream.revision, old_path)
        if too_large:
            yield Skipped(unit, too_large)
            continue
        diff = scratch.git("diff", "-U3", "--no-color", "-M", upstream.revision, fork.revision, "--",
                           old_path, path)
        spans = function_spans(text, Path(path).suffix)
        try:
            patch = PatchSet(diff)
        except Exception as e:  # unidiff raises its own parse error for diffs it cannot read
            yield Skipped(unit, f"diff not readable: {e}")
            continue
        chunks = []
        for patch_file in patch:
            if patch_file.is_binary_file:
                continue
            chunks += _hunk_chunks(patch_file, header=f"fork-diff {fork.name} vs {upstream.name}",
                                   kind="fork-diff", unit=unit, fork=fork, spans=spans,
                                   extra={"upstream": upstream.name}, revision=fork.revision)
        yield Unit(unit, chunks)


def commit_units(scratch: ScratchRepo, merge_base: str, *, source: str, subdirs: Sequence[str] = (),
                 paths: Sequence[str] = (), max_commits: int = MAX_COMMITS) -> Iterator[Unit | Skipped]:
    """A git fork: one unit per commit since the merge base, each hunk a chunk that carries the commit message."""
    fork, upstream = scratch.fork, scratch.upstream
    shas = scratch.git("rev-list", "--no-merges", f"--max-count={max_commits}",
                       f"{merge_base}..{fork.revision}", "--", *subdirs).split()
    for sha in shas:
        unit = f"{source}::commit:{sha}"
        message = scratch.git("log", "-1", "--format=%s%n%n%b", sha).strip()
        diff = scratch.git("show", "--format=", "-U3", "--no-color", sha, "--", *subdirs)
        try:
            patch = PatchSet(diff)
        except Exception as e:
            yield Skipped(unit, f"diff not readable: {e}")
            continue
        chunks = []
        for patch_file in patch:
            if not _wanted(patch_file.path, subdirs, paths):
                if paths:
                    yield Skipped(f"{unit}:{patch_file.path}", OUTSIDE_HOT_PATHS)
                continue
            if patch_file.is_binary_file:
                # git's diff calls a file over the cap binary too (core.bigFileThreshold): say which it was
                too_large = None if patch_file.is_removed_file else scratch.too_large(sha, patch_file.path)
                yield Skipped(f"{unit}:{patch_file.path}", too_large or "binary file")
                continue
            spans = [] if patch_file.is_removed_file else _spans(scratch, sha, patch_file.path)
            title = message.splitlines()[0][:120] if message else sha[:12]
            chunks += _hunk_chunks(patch_file, header=f"fork-diff {fork.name} commit {sha[:12]} \"{title}\"",
                                   kind="fork-diff", unit=unit, fork=fork, spans=spans,
                                   extra={"upstream": upstream.name, "commit": sha, "message": title},
                                   revision=sha)
        # The message is searchable on its own too: it often names the idea better than the code does.
        if message:
            chunks.append(Chunk(f"// fork commit {fork.name} {sha[:12]}\n{message}", "fork-diff", unit,
                                {"repo": fork.name, "revision": sha, "commit": sha, "section": "commit message",
                                 "upstream": upstream.name}))
        yield Unit(unit, chunks)


def fork_units(scratch_dir: Path, fork: Side, upstream: Side, *, source: str, subdirs: Sequence[str] = (),
               as_trees: bool = False, paths: Sequence[str] = ()) -> Iterator[Unit | Skipped]:
    """The fork's units: by commits when the two share history, by trees when asked to (or vendored); `paths`:
    the target's hot paths, which decide what of the fork is read (none: its C/C++ and Markdown)."""
    scratch = ScratchRepo(scratch_dir, fork, upstream)
    if as_trees:
        return tree_units(scratch, source=source, subdirs=subdirs, paths=paths)
    base = scratch.merge_base()
    if base is None:
        raise KnowledgeBaseError(f"{fork.name} and {upstream.name} share no git history; compare them as "
                                 f"vendored trees instead (--as-trees)")
    return commit_units(scratch, base, source=source, subdirs=subdirs, paths=paths)
