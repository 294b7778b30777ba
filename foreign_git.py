"""The one way readfirst reads a git repository it did not create: a folder given to `kb ingest path` or
`run --papers`, a project or a fork named by its path.

Such a folder's `.git` belongs to whoever made it, and git obeys what is in it: `core.fsmonitor`, hooks, pagers,
diff and filter drivers, `include`s run commands; a `.git` *file* or link, or an alternates file, can lead to any
other repository of the host. So git never runs in the folder and never reads its configuration. Instead its git
directory is found by reading files (it must lie inside the folder), and a bare repository of ours is built in
a scratch directory: our own configuration, the folder's object store borrowed through `objects/info/alternates`
(only when every alternate it chains to lies inside the folder too), and its refs copied as validated text.
Every command then runs with `--git-dir=<our copy>` and an environment that reads no system or global
configuration and turns off whatever could run.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from .errors import SourceError

# Set on every git command readfirst runs (its own trees too): nothing in any configuration may start a program.
NEUTRAL_CONFIG = {
    "core.fsmonitor": "false", "core.hooksPath": "/dev/null", "core.pager": "cat", "core.editor": "false",
    "protocol.ext.allow": "never", "log.showSignature": "false", "gc.auto": "0", "maintenance.auto": "false",
    "submodule.recurse": "false",
}
MAX_REF_BYTES = 4096
MAX_PACKED_REFS_BYTES = 64 << 20
MAX_REFS = 200_000
MAX_ALTERNATE_DEPTH = 5
_HEX = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_REF = re.compile(r"refs/(?:[A-Za-z0-9_+@=,-][A-Za-z0-9._+@=,-]*/)*[A-Za-z0-9_+@=,-][A-Za-z0-9._+@=,-]*")


def hardened_env(*, foreign: bool = False, base: dict[str, str] | None = None) -> dict[str, str]:
    """git's environment: no system configuration, the neutral settings above, no prompts or pagers. A foreign
    repository's commands also drop every inherited GIT_* variable and the user's global configuration, and may
    speak only git's local file protocol."""
    env = dict(os.environ if base is None else base)
    if foreign:
        env = {k: v for k, v in env.items() if not k.startswith("GIT_")}
        env.update({"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_ALLOW_PROTOCOL": "file", "GIT_NO_REPLACE_OBJECTS": "1",
                    "GIT_ATTR_NOSYSTEM": "1", "GIT_OPTIONAL_LOCKS": "0"})
    for key in ("GIT_EXTERNAL_DIFF", "GIT_DIR", "GIT_WORK_TREE", "GIT_ALTERNATE_OBJECT_DIRECTORIES",
                "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR", "GIT_TEMPLATE_DIR"):
        env.pop(key, None)
    env.update({"GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0", "GIT_PAGER": "cat", "PAGER": "cat",
                "GIT_CONFIG_COUNT": str(len(NEUTRAL_CONFIG))})
    for i, (key, value) in enumerate(NEUTRAL_CONFIG.items()):
        env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = key, value
    return env


def _refuse(what: str, target: Path, root: Path) -> SourceError:
    return SourceError(f"{what} leads outside {root} (to {target}); readfirst reads only a git repository that "
                       f"lies inside the folder it is given")


def _inside(path: Path, root: Path, what: str) -> Path:
    real = path.resolve()
    if not real.is_relative_to(root):
        raise _refuse(what, real, root)
    return real


def _small_text(path: Path, limit: int = MAX_REF_BYTES) -> str | None:
    """A regular file's text (never through a link, never larger than `limit`); None otherwise."""
    try:
        st = path.lstat()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
        return None
    with open(path, "rb") as f:
        return f.read(limit + 1)[:limit].decode("utf-8", "replace")


def find_top(folder: Path) -> Path | None:
    """The nearest folder at or above `folder` that holds a `.git` (as git would find it, without git)."""
    for candidate in (folder.resolve(), *folder.resolve().parents):
        if os.path.lexists(candidate / ".git"):
            return candidate
    return None


def locate(top: Path) -> tuple[Path, Path]:
    """(git dir, common dir) of the repository whose work tree is `top`, both checked to lie inside it."""
    root = top.resolve()
    dotgit = root / ".git"
    if dotgit.is_symlink() or dotgit.is_dir():
        git_dir = _inside(dotgit, root, str(dotgit))
    else:
        text = _small_text(dotgit)
        match = re.fullmatch(r"gitdir: ?(.+?)\s*", text or "")
        if match is None:
            raise SourceError(f"{dotgit} is neither a git directory nor a `gitdir:` link")
        git_dir = _inside(root / match.group(1), root, str(dotgit))
    if not git_dir.is_dir():
        raise SourceError(f"{dotgit} leads to {git_dir}, which is not a git directory")
    pointer = _small_text(git_dir / "commondir")
    common = _inside(git_dir / pointer.strip(), root, str(git_dir / "commondir")) if pointer else git_dir
    if (common / "reftable").exists():
        raise SourceError(f"{common} keeps its refs in the reftable format, which readfirst does not read")
    return git_dir, common


def _check_links(objects: Path, root: Path) -> None:
    """A link anywhere within an object store (`objects/pack`, a fan-out folder, `objects/info`) must lead inside
    the folder too: git follows it, and would read another repository's objects through it."""
    for dirpath, dirnames, filenames in os.walk(objects, followlinks=False):
        for name in (*dirnames, *filenames):
            path = Path(dirpath) / name
            if path.is_symlink():
                _inside(path, root, str(path))


def _check_alternates(objects: Path, root: Path, depth: int = 0) -> None:
    """Every object store `objects` borrows from, and those they borrow from, must lie inside the folder too,
    and so must whatever their links lead to."""
    _check_links(objects, root)
    listing = objects / "info" / "alternates"
    if not os.path.lexists(listing):
        return
    text = _small_text(listing, 1 << 16)
    if text is None or depth >= MAX_ALTERNATE_DEPTH:
        raise SourceError(f"{listing} is not a plain list of object stores readfirst can check")
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith('"'):
            raise SourceError(f"{listing} names a quoted object store, which readfirst does not follow")
        store = _inside(objects / line, root, str(listing))
        _check_alternates(store, root, depth + 1)


def _valid_ref_text(text: str) -> bool:
    text = text.strip()
    return bool(_HEX.fullmatch(text)) or (text.startswith("ref: ") and bool(_REF.fullmatch(text[5:])))


def _copy_refs(common: Path, ours: Path) -> None:
    """The loose refs under `common/refs` (regular files, never through links) and packed-refs, checked line by
    line: anything that is not a ref name and an object id is left out."""
    count = 0
    refs = common / "refs"
    for dirpath, dirnames, filenames in os.walk(refs, followlinks=False):
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(common).as_posix()
            text = _small_text(path)
            if text is None or not _REF.fullmatch(rel) or not _valid_ref_text(text):
                continue
            count += 1
            if count > MAX_REFS:
                raise SourceError(f"{common} has more than {MAX_REFS} refs")
            (ours / rel).parent.mkdir(parents=True, exist_ok=True)
            (ours / rel).write_text(text.strip() + "\n")
    packed = _small_text(common / "packed-refs", MAX_PACKED_REFS_BYTES)
    if packed:
        kept = [line for line in packed.splitlines()
                if line.startswith("# pack-refs with:")
                or (line.startswith("^") and _HEX.fullmatch(line[1:]))
                or (len(parts := line.split(" ")) == 2 and _HEX.fullmatch(parts[0]) and _REF.fullmatch(parts[1]))]
        (ours / "packed-refs").write_text("\n".join(kept) + "\n")
    shallow = _small_text(common / "shallow", MAX_PACKED_REFS_BYTES)
    if shallow:
        (ours / "shallow").write_text("\n".join(ln for ln in shallow.split() if _HEX.fullmatch(ln)) + "\n")


def _object_format(git_dir: Path, common: Path) -> str:
    for path in (git_dir / "HEAD", common / "packed-refs"):
        found = _HEX.search(_small_text(path, MAX_PACKED_REFS_BYTES) or "")
        if found:
            return "sha256" if len(found.group(0)) == 64 else "sha1"
    for dirpath, _, filenames in os.walk(common / "refs", followlinks=False):
        for name in filenames:
            found = _HEX.fullmatch((_small_text(Path(dirpath) / name) or "").strip())
            if found:
                return "sha256" if len(found.group(0)) == 64 else "sha1"
    return "sha1"


class ForeignRepo:
    """A bare repository of ours that sees a foreign folder's objects and refs, and nothing of its configuration.
    Use it as a context manager; its scratch directory is removed on exit."""

    def __init__(self, top: Path):
        self.top = top.resolve()
        git_dir, common = locate(self.top)
        objects = _inside(common / "objects", self.top, str(common / "objects"))
        if not objects.is_dir():
            raise SourceError(f"{common} has no object store")
        _check_alternates(objects, self.top)
        self._scratch = Path(tempfile.mkdtemp(prefix="readfirst-foreign-"))
        try:
            self.git_dir = self._scratch / "repo.git"
            self._run("init", "-q", "--bare", "--template=", f"--object-format={_object_format(git_dir, common)}",
                      str(self.git_dir), git_dir=False)
            (self.git_dir / "objects" / "info" / "alternates").write_text(f"{objects}\n")
            _copy_refs(common, self.git_dir)
            head = _small_text(git_dir / "HEAD")
            if head is not None and _valid_ref_text(head):
                (self.git_dir / "HEAD").write_text(head.strip() + "\n")
        except BaseException:
            self.close()
            raise

    def _run(self, *args: str, git_dir: bool = True, check: bool = True, text: bool = True
             ) -> subprocess.CompletedProcess:
        cmd = ["git", "--no-pager", *(["--git-dir", str(self.git_dir)] if git_dir else []), *args]
        proc = subprocess.run(cmd, capture_output=True, text=text, env=hardened_env(foreign=True), cwd=self._scratch,
                              **({"errors": "replace"} if text else {}))
        if check and proc.returncode != 0:
            err = proc.stderr if text else proc.stderr.decode("utf-8", "replace")
            raise SourceError(f"git {' '.join(args[:2])} failed on the copy of {self.top}: {err.strip()[-400:]}")
        return proc

    def git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self._run(*args, check=check)

    def commit(self, ref: str = "HEAD") -> str | None:
        proc = self._run("rev-parse", "-q", "--verify", "--end-of-options", f"{ref}^{{commit}}", check=False)
        return proc.stdout.strip() or None if proc.returncode == 0 else None

    def files(self, revision: str, prefix: str = "") -> list[str]:
        """Paths (from the top) of the files committed at `revision`, under `prefix` when given."""
        scope = ["--", prefix] if prefix and prefix != "." else []
        return self._run("ls-tree", "-r", "--name-only", "--full-tree", revision, *scope).stdout.splitlines()

    def clone_to(self, dest: Path) -> None:
        """A repository of our own at `dest` with every object and ref: a real copy (not borrowing the folder's
        objects), made by git's pack protocol from our bare copy."""
        self._run("clone", "-q", "--no-local", "--no-hardlinks", "--template=", str(self.git_dir), str(dest),
                  git_dir=False)

    def close(self) -> None:
        shutil.rmtree(self._scratch, ignore_errors=True)

    def __enter__(self) -> "ForeignRepo":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
