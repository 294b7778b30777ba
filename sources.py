"""Where a target's source comes from, and how it becomes a git repository with a `baseline` commit.

Neutral ground (no sandbox, no docker): the knowledge base's ingestion, the targets and the graph all use it.

A source is a pinned PyPI sdist (its vendored tree: llama-cpp-python's `vendor/llama.cpp`), a git URL + ref, or
a local path. Each is prepared once into the cache as a git repository whose first commit is tagged `baseline`.
Experiments are commits on branches of that repository, so every patch is an exact diff against a known base.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from .errors import SourceError
from .foreign_git import ForeignRepo, hardened_env

PYPI_SIMPLE = os.environ.get("READFIRST_PYPI_SIMPLE", "https://pypi.org/simple")
# The one cap on a file read from any tree (a fork's, a folder's, a target's): larger files are skipped with
# their reason, so a 200 MB generated file costs nothing instead of gigabytes.
MAX_FILE_BYTES = 2 * 1024 * 1024
TEXT_CACHE_CHARS = 256 << 20


@dataclass(frozen=True)
class SdistSpec:
    """A tree vendored inside a PyPI sdist."""
    package: str
    version: str
    subdir: str

    @property
    def key(self) -> str:
        return f"{self.package}-{self.version}-{self.subdir.replace('/', '_')}"


# Known names resolve to pinned sdists; anything else is a git URL or a path.
KNOWN_SOURCES: dict[str, SdistSpec] = {
    "llama.cpp": SdistSpec("llama-cpp-python", "0.3.36", "vendor/llama.cpp"),
    "ik_llama.cpp": SdistSpec("ik-llama-cpp-python", "0.1.5", "vendor/ik_llama.cpp"),
}


@dataclass(frozen=True)
class SourceRepo:
    """A prepared source: a git repository in the cache, and its baseline commit."""
    path: Path
    baseline: str
    origin: str  # what the user named: "llama.cpp", a URL@ref, a path

    @property
    def key(self) -> str:
        return self.path.name


_IDENTITY = {"GIT_AUTHOR_NAME": "readfirst", "GIT_AUTHOR_EMAIL": "readfirst@localhost",
             "GIT_COMMITTER_NAME": "readfirst", "GIT_COMMITTER_EMAIL": "readfirst@localhost"}


def git(repo: Path, *args: str, input: str | None = None, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    """git in a tree readfirst created (a prepared source, a worker's checkout); a folder readfirst was given is
    read only through foreign_git.ForeignRepo. Hardened all the same: no configuration may start a program."""
    proc = subprocess.run(["git", "--no-pager", "-C", str(repo), *args], capture_output=True, text=True,
                          input=input, env={**hardened_env(), **_IDENTITY, **(env or {})})
    if check and proc.returncode != 0:
        raise SourceError(f"git {' '.join(args[:3])} failed in {repo}: {proc.stderr.strip()[-800:]}")
    return proc


def read_at(repo: Path, commit: str, path: str) -> str | None:
    """A file's text at a commit; None when the commit does not have it."""
    got = git(repo, "show", f"{commit}:{path}", check=False)
    return got.stdout if got.returncode == 0 else None


class GitTree:
    """One repository at one revision, read through git (never its work tree): the current best tree of a run,
    or a fork's. Implements protocols.Tree. Reads go through one `git cat-file --batch` process and are kept:
    a revision does not change, and the porting engine reads hundreds of files per wave."""

    def __init__(self, name: str, repo: Path, revision: str, *, subdirs: tuple[str, ...] = ()):
        self.name, self.repo, self.revision, self.subdirs = name, repo, revision, tuple(subdirs)
        self._files: list[str] | None = None
        self._texts: dict[tuple[str, str], str | None] = {}
        self._held = 0  # characters kept in _texts: the cache is dropped past TEXT_CACHE_CHARS, not only by count
        self._batch: subprocess.Popen | None = None
        self.skipped: dict[str, str] = {}  # path → why it was not read (too large, binary)

    def files(self) -> list[str]:
        if self._files is None:
            # Only these folders, when given (a run's --fork-subdir): what the user pointed the run at.
            self._files = git(self.repo, "ls-tree", "-r", "--name-only", self.revision, "--",
                              *self.subdirs).stdout.splitlines()
        return self._files

    def read(self, path: str, revision: str | None = None) -> str | None:
        key = (revision or self.revision, path)
        if key not in self._texts:
            if len(self._texts) > 4096 or self._held > TEXT_CACHE_CHARS:
                self._texts.clear()
                self._held = 0
            self._texts[key] = self._cat(f"{key[0]}:{path}", path)
            self._held += len(self._texts[key] or "")
        return self._texts[key]

    def _cat(self, spec: str, path: str) -> str | None:
        if "\n" in spec:
            return None
        if self._batch is None or self._batch.poll() is not None:
            self._batch = subprocess.Popen(["git", "--no-pager", "-C", str(self.repo), "cat-file", "--batch"],
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                           env=hardened_env())
        assert self._batch.stdin is not None and self._batch.stdout is not None
        self._batch.stdin.write(spec.encode() + b"\n")
        self._batch.stdin.flush()
        header = self._batch.stdout.readline().split()
        if len(header) != 3 or not header[2].isdigit():
            return None  # "<spec> missing" (or ambiguous)
        size = int(header[2])
        if size > MAX_FILE_BYTES:
            # The object follows in the stream: end this process rather than read it through (the next read starts
            # another), so a 200 MB file costs a process start, not 200 MB inflated and piped.
            self.close()
            self.skipped[path] = f"larger than {MAX_FILE_BYTES // 2**20} MiB ({size / 2**20:.1f} MiB)"
            return None
        data = self._batch.stdout.read(size + 1)[:-1]
        if header[1] != b"blob" or b"\0" in data[:8192]:
            if header[1] == b"blob":
                self.skipped[path] = "binary file"
            return None
        return data.decode("utf-8", errors="replace")

    def at(self, revision: str) -> "GitTree":
        return GitTree(self.name, self.repo, revision, subdirs=self.subdirs)

    def close(self) -> None:
        if self._batch is not None:
            self._batch.kill()
            self._batch.wait()
            self._batch = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def merge_file(ours: str, base: str, theirs: str) -> tuple[str, int]:
    """git's three-way merge of one file's texts: (merged text, number of conflicts; 0 = clean)."""
    with tempfile.TemporaryDirectory(prefix="readfirst-merge-") as tmp:
        names = []
        for label, text in (("ours", ours), ("base", base), ("theirs", theirs)):
            f = Path(tmp) / label
            f.write_text(text)
            names.append(str(f))
        proc = subprocess.run(["git", "--no-pager", "merge-file", "-p", "-q", *names], capture_output=True,
                              text=True, cwd=tmp, env=hardened_env())
    if proc.returncode < 0 or proc.returncode > 127:
        raise SourceError(f"git merge-file failed: {proc.stderr.strip()[-300:]}")
    return proc.stdout, proc.returncode


# -- PyPI sdists ---------------------------------------------------------------------------------------------

def fetch_sdist(spec: SdistSpec, sdists_dir: Path) -> Path:
    """Download the sdist (sha256-checked against PyPI's index) once; later calls reuse the file."""
    sdists_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(sdists_dir / f".{spec.package}.lock")):
        for existing in sdists_dir.glob(f"{spec.package.replace('-', '_')}-{spec.version}.tar.gz"):
            return existing
        url = f"{PYPI_SIMPLE}/{spec.package}/"
        req = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                index = json.load(resp)
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as e:
            raise SourceError(f"cannot read PyPI's index for {spec.package} ({url}): {e}") from e
        wanted = f"-{spec.version}.tar.gz"
        files = [f for f in index.get("files", []) if f["filename"].endswith(wanted)
                 and f["filename"].replace("_", "-").startswith(spec.package + "-")]
        if not files:
            raise SourceError(f"PyPI has no sdist of {spec.package}=={spec.version}")
        entry = files[0]
        target = sdists_dir / entry["filename"]
        tmp = target.with_suffix(".part")
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(entry["url"], timeout=300) as resp, open(tmp, "wb") as out:
                while chunk := resp.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, TimeoutError) as e:
            tmp.unlink(missing_ok=True)
            raise SourceError(f"downloading {entry['filename']} failed: {e}") from e
        expected = entry.get("hashes", {}).get("sha256")
        if expected and digest.hexdigest() != expected:
            tmp.unlink(missing_ok=True)
            raise SourceError(f"{entry['filename']}: sha256 mismatch (PyPI says {expected})")
        tmp.rename(target)
        return target


def _extract_subdir(tarball: Path, subdir: str, dest: Path) -> None:
    with tarfile.open(tarball) as tar:
        top = tar.getmembers()[0].name.split("/")[0]
        prefix = f"{top}/{subdir.strip('/')}/"
        members = []
        for m in tar.getmembers():
            if not m.name.startswith(prefix):
                continue
            m.name = m.name[len(prefix):]
            # A vendored submodule carries a `.git` file pointing into the parent's repository: not ours.
            if m.name and ".git" not in m.name.split("/"):
                members.append(m)
        if not members:
            raise SourceError(f"{tarball.name} has no {subdir}/")
        # The "data" filter refuses absolute paths, '..' and links that leave the tree.
        tar.extractall(dest, members=members, filter="data")


# -- preparation ---------------------------------------------------------------------------------------------

def _commit_baseline(repo: Path, origin: str) -> str:
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "core.autocrlf", "false")
    # -f: the vendored tree's own .gitignore files must not drop files from the exact copy.
    git(repo, "add", "-A", "-f", ".")
    git(repo, "commit", "-q", "--no-verify", "-m", f"baseline: {origin}")
    git(repo, "tag", "-f", "baseline")
    return git(repo, "rev-parse", "HEAD").stdout.strip()


def prepare_source(name_or_location: str, sources_dir: Path, sdists_dir: Path, *, ref: str | None = None) -> SourceRepo:
    """Prepare (once) and return the source named: a known name, a git URL (+ ref), or a local path."""
    if ref is not None and (not ref or ref.startswith("-") or any(c.isspace() or ord(c) < 32 for c in ref)):
        # git would read a leading dash as one of its options (--upload-pack=..., --output=...)
        raise SourceError(f"{ref!r} is not a git ref")
    sources_dir.mkdir(parents=True, exist_ok=True)
    spec = KNOWN_SOURCES.get(name_or_location)
    # A local folder's repository is read through one copy of ours, for its state and (if new) its clone.
    foreign = None if spec is not None else _foreign_repo(name_or_location)
    try:
        return _prepare(name_or_location, spec, foreign, sources_dir, sdists_dir, ref)
    finally:
        if foreign is not None:
            foreign.close()


def _foreign_repo(location: str) -> ForeignRepo | None:
    """The git repository of a local folder given as a source, read through foreign_git; None for anything else."""
    if _is_git_url(location) and not location.startswith("file://"):
        return None
    local = _local_folder(location) or Path(location).expanduser()
    return ForeignRepo(local) if local.is_dir() and os.path.lexists(local / ".git") else None


def _prepare(name_or_location: str, spec: SdistSpec | None, foreign: ForeignRepo | None, sources_dir: Path,
             sdists_dir: Path, ref: str | None) -> SourceRepo:
    if spec is not None:
        key = spec.key
    else:
        # A local tree changes under the user's hands: its key names what it holds now (its commit, or its
        # files' sizes and times), so an edited project is prepared again instead of measured as it was.
        state = (f":{foreign.commit(ref or 'HEAD') or ''}" if foreign is not None
                 else _local_state(name_or_location))
        digest = hashlib.sha256(f"{name_or_location}@{ref or ''}{state}".encode()).hexdigest()[:12]
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name_or_location.rstrip("/").split("/")[-1])[:40]
        key = f"{stem}-{digest}"
    repo = sources_dir / key
    with FileLock(str(sources_dir / f".{key}.lock")):
        if (repo / ".git").is_dir() and git(repo, "rev-parse", "-q", "--verify", "baseline^{commit}",
                                            check=False).returncode == 0:
            return SourceRepo(repo, git(repo, "rev-parse", "baseline^{commit}").stdout.strip(), name_or_location)
        shutil.rmtree(repo, ignore_errors=True)  # a half-prepared tree from an interrupted run
        with tempfile.TemporaryDirectory(dir=sources_dir, prefix=f".{key}-") as tmp:
            work = Path(tmp) / "tree"
            if spec is not None:
                tarball = fetch_sdist(spec, sdists_dir)
                work.mkdir()
                _extract_subdir(tarball, spec.subdir, work)
                _commit_baseline(work, f"{spec.package}=={spec.version} {spec.subdir}")
            elif _is_git_url(name_or_location) and _local_folder(name_or_location) is None:
                proc = subprocess.run(["git", "--no-pager", "clone", "-q", "--template=", name_or_location, str(work)],
                                      capture_output=True, text=True, env=hardened_env())
                if proc.returncode != 0:
                    raise SourceError(f"git clone {name_or_location} failed: {proc.stderr.strip()[-500:]}")
                git(work, "checkout", "-q", "--detach", ref or "HEAD")
                git(work, "tag", "-f", "baseline")
            else:
                local = _local_folder(name_or_location) or Path(name_or_location).expanduser()
                if not local.is_dir():
                    raise SourceError(f"source {name_or_location!r} is neither a known name "
                                      f"({', '.join(KNOWN_SOURCES)}), a git URL, nor a directory")
                if foreign is not None:
                    # Never git in the folder itself: its .git/config could run anything (foreign_git.py).
                    foreign.clone_to(work)
                    git(work, "checkout", "-q", "--detach", ref or "HEAD")
                    git(work, "tag", "-f", "baseline")
                else:
                    # A nested `.git` (a vendored repository, a `gitdir:` link to elsewhere) is not copied: git
                    # would make that folder a gitlink to a repository not ours instead of adding its files.
                    shutil.copytree(local, work, symlinks=True, ignore=shutil.ignore_patterns(".git"))
                    _commit_baseline(work, str(local.resolve()))
            work.rename(repo)
        return SourceRepo(repo, git(repo, "rev-parse", "baseline^{commit}").stdout.strip(), name_or_location)


def _local_folder(location: str) -> Path | None:
    """The folder a `file://` URL names: read as a local folder is, never by git's transport inside it."""
    if not location.startswith("file://"):
        return None
    return Path(urllib.parse.unquote(location[len("file://"):]))


def _local_state(location: str) -> str:
    """A plain folder's state: its files' names, sizes and times (a git repository's is its commit)."""
    local = _local_folder(location) or Path(location).expanduser()
    if (_is_git_url(location) and not location.startswith("file://")) or not local.is_dir():
        return ""
    listing = hashlib.sha256()
    for path in sorted(local.rglob("*")):
        if path.is_file() and ".git" not in path.relative_to(local).parts:
            st = path.lstat()
            listing.update(f"{path.relative_to(local)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f":{listing.hexdigest()}"


def _is_git_url(s: str) -> bool:
    return bool(re.match(r"^(https?|git|ssh|file)://", s)) or bool(re.match(r"^[\w.-]+@[\w.-]+:", s))
