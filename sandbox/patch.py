"""Patches: checked before anything applies them, then committed on top of a known base.

A patch may not reach outside the tree (absolute paths, '..'), into `.git/`, or plant a symlink that leaves the
tree; and a target may protect paths (its benchmark and tests are read-only to the implementer). A safe patch
that does not apply is a PatchDoesNotApply naming the file and the hunk.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import posixpath
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import PatchDoesNotApply, PatchRejected
from ..sources import git

_DIFF_GIT = re.compile(r"^diff --git (?P<a>\S+) (?P<b>\S+)$")
_HUNK = re.compile(r"^@@ -(?P<old>\d+)(?:,(?P<oldn>\d+))? \+(?P<new>\d+)(?:,(?P<newn>\d+))? @@")


@dataclass(frozen=True)
class PatchFile:
    path: str
    hunks: list[tuple[int, int]]  # (old start, old length) per hunk, in order
    symlink_target: str | None = None


def patch_id(patch: str) -> str:
    """A stable key for a patch: re-running an experiment with the same patch finds its recorded results."""
    return hashlib.sha256(patch.encode()).hexdigest()[:16]


def _strip_prefix(raw: str) -> str | None:
    if raw == "/dev/null":
        return None
    raw = raw.split("\t", 1)[0]
    if raw.startswith('"'):
        raise PatchRejected(f"quoted path {raw} in patch: refusing unusual file names")
    return raw[2:] if raw[:2] in ("a/", "b/") else raw


def _check_path(path: str) -> None:
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise PatchRejected(f"patch names a path with control characters: {path!r}")
    if not path or path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise PatchRejected(f"patch names an absolute path: {path!r}")
    parts = path.split("/")
    if ".." in parts:
        raise PatchRejected(f"patch path leaves the tree: {path!r}")
    if ".git" in parts:
        raise PatchRejected(f"patch touches git metadata: {path!r}")


def parse_patch(patch: str) -> list[PatchFile]:
    """Every file a unified / git diff touches, with its hunks; refuses unsafe paths."""
    files: list[PatchFile] = []
    current: dict | None = None
    lines = patch.splitlines()
    i = 0

    def flush():
        if current is not None:
            files.append(PatchFile(current["path"], current["hunks"], current.get("symlink")))

    while i < len(lines):
        line = lines[i]
        m = _DIFF_GIT.match(line)
        if m:
            flush()
            for raw in (m["a"], m["b"]):
                p = _strip_prefix(raw)
                if p is not None:
                    _check_path(p)
            current = {"path": _strip_prefix(m["b"]) or _strip_prefix(m["a"]), "hunks": [], "mode": None}
        elif line.startswith(("rename from ", "rename to ", "copy from ", "copy to ")):
            _check_path(line.split(" ", 2)[2])
        elif line.startswith(("new file mode ", "new mode ")) and current is not None:
            current["mode"] = line.rsplit(" ", 1)[1]
        elif line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            old, new = _strip_prefix(line[4:]), _strip_prefix(lines[i + 1][4:])
            for p in (old, new):
                if p is not None:
                    _check_path(p)
            if current is None or current["path"] != (new or old):
                flush()
                current = {"path": new or old, "hunks": [], "mode": None}
            i += 1
        elif line.startswith("GIT binary patch"):
            raise PatchRejected(f"binary patch for {current and current['path']}: refusing binary content")
        elif (h := _HUNK.match(line)) and current is not None:
            current["hunks"].append((int(h["old"]), int(h["oldn"] or 1)))
            if current.get("mode") == "120000":
                # A new symlink: its target is the single added line of its hunk.
                target = next((ln[1:] for ln in lines[i + 1:i + 4] if ln.startswith("+")), "")
                current["symlink"] = target
                _check_symlink(current["path"], target)
        i += 1
    flush()
    if not files:
        raise PatchRejected("the patch touches no file (not a unified diff?)")
    return files


def _check_symlink(path: str, target: str) -> None:
    if target.startswith("/"):
        raise PatchRejected(f"symlink {path} -> {target} leaves the tree (absolute target)")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    if resolved == ".." or resolved.startswith("../"):
        raise PatchRejected(f"symlink {path} -> {target} leaves the tree")


def check_patch(patch: str, *, protected: Sequence[str] = ()) -> list[PatchFile]:
    """Parse and vet a patch; `protected` are glob patterns of paths the patch may not touch."""
    files = parse_patch(patch)
    for f in files:
        for pattern in protected:
            if fnmatch.fnmatch(f.path, pattern):
                raise PatchRejected(f"the patch edits {f.path}, which is protected ({pattern}): benchmarks and "
                                    "tests are read-only to experiments")
    return files


def commit_patch(repo: Path, patch: str, *, base: str, message: str, protected: Sequence[str] = ()) -> str:
    """Apply `patch` to `base` in a scratch index (no checkout touched) and return the new commit.

    The commit is also kept on a branch `exp/<patch id>` so that it stays reachable and inspectable.
    """
    files = check_patch(patch, protected=protected)
    # An existing symlink in the tree that points outside must not be written through either.
    for f in files:
        mode = git(repo, "ls-tree", base, "--", f.path, check=False).stdout.split(" ", 1)[0]
        if mode == "120000":
            target = git(repo, "cat-file", "-p", f"{base}:{f.path}").stdout
            _check_symlink(f.path, target)
    with tempfile.TemporaryDirectory(prefix="readfirst-index-") as tmp:
        env = {"GIT_INDEX_FILE": os.path.join(tmp, "index")}
        git(repo, "read-tree", base, env=env)
        proc = git(repo, "apply", "--cached", "--verbose", "-", input=patch if patch.endswith("\n") else patch + "\n",
                   env=env, check=False)
        if proc.returncode != 0:
            raise PatchDoesNotApply(_explain_failure(proc.stderr, files))
        _vet_applied(repo, base, env, protected)
        tree = git(repo, "write-tree", env=env).stdout.strip()
    # Dated like its base, so that the same patch on the same base with the same message is the same commit:
    # builds and artifacts are keyed by commit, and a resumed run, a second run or a replay with real builds
    # then finds the build already made instead of a new commit id for the same code.
    base_date = git(repo, "show", "-s", "--format=%cI", base).stdout.strip()
    commit = git(repo, "commit-tree", tree, "-p", base, "-m", message,
                 env={"GIT_AUTHOR_DATE": base_date, "GIT_COMMITTER_DATE": base_date}).stdout.strip()
    git(repo, "update-ref", f"refs/heads/exp/{patch_id(patch)}", commit)
    return commit


def _vet_applied(repo: Path, base: str, env: dict[str, str], protected: Sequence[str]) -> None:
    """Vet what git did, not what a parse of the text says it will do: every path the applied index changes,
    added or removed (renames as both), against the protected globs; every symlink's target; no submodule.
    The parse above is a cheap first pass; a patch that fools it (odd prefixes, lone CRs, spaces in a header,
    renames) is caught here, before its tree is written."""
    raw = git(repo, "diff-index", "--cached", "-z", "--no-renames", base, env=env).stdout.split("\0")
    for meta, path in zip(raw[0::2], raw[1::2]):
        if not meta.startswith(":"):
            continue
        _, new_mode, _, new_sha, status = meta[1:].split(" ", 4)
        _check_path(path)
        for pattern in protected:
            if fnmatch.fnmatch(path, pattern):
                verb = "removes" if status == "D" else "edits"
                raise PatchRejected(f"the patch {verb} {path}, which is protected ({pattern}): benchmarks and "
                                    "tests are read-only to experiments")
        if new_mode == "160000":
            raise PatchRejected(f"the patch makes {path} a submodule: refusing")
        if new_mode == "120000":
            _check_symlink(path, git(repo, "cat-file", "blob", new_sha).stdout)


def _explain_failure(stderr: str, files: list[PatchFile]) -> str:
    m = re.search(r"patch failed: (?P<path>.+?):(?P<line>\d+)", stderr)
    if m:
        path, line = m["path"], int(m["line"])
        pf = next((f for f in files if f.path == path), None)
        if pf is not None:
            for n, (start, _) in enumerate(pf.hunks, 1):
                if start == line:
                    return f"the patch does not apply: {path}, hunk {n} of {len(pf.hunks)} (at line {line})"
        return f"the patch does not apply: {path}, hunk at line {line}"
    m = re.search(r"error: (?P<path>\S+): does not exist in index", stderr)
    if m:
        return f"the patch does not apply: {m['path']} does not exist in the base"
    last = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    return "the patch does not apply: " + (last[-1][7:] if last else stderr.strip()[-300:])
