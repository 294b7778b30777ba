"""Per-worker checkouts and build directories, so that a patch to one file rebuilds only that file.

Each worker owns one git worktree of the source repository and, per build configuration, one build directory.
Switching the worktree to an experiment's commit rewrites only the files that differ, so their mtimes alone
change and make rebuilds incremental; the container always sees the same paths (/src, /build), so CMake's cache
stays valid. A file lock per worker keeps two processes from using one worker at once.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from ..sources import SourceRepo, git


def cpu_signature() -> str:
    """The CPU model and flags: native builds and their ccache are only valid on the CPU that made them."""
    model, flags = "unknown", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{model}|{flags}"


def cpu_model() -> str:
    return cpu_signature().split("|", 1)[0]


def cpu_has(flag: str) -> bool:
    return flag in cpu_signature().split("|", 1)[1].split()


def bench_cpus(threads: int, allowed: set[int] | None = None) -> str:
    """The CPUs a benchmark with `threads` threads is pinned to, the same set every run: the last `threads` of
    those this process may use (CPU 0 takes most interrupts and housekeeping), or all of them when there are no
    more than that (a 2-core machine: pinned to both, which fixes the set without narrowing it)."""
    cpus = sorted(allowed if allowed is not None else os.sched_getaffinity(0))
    return ",".join(str(c) for c in cpus[-max(1, threads):])


def short_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Worker:
    root: Path
    source: SourceRepo
    index: int

    @property
    def src(self) -> Path:
        return self.root / "src"

    def build_dir(self, config_key: str) -> Path:
        path = self.root / f"build-{config_key}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def checkout(self, commit: str) -> Path:
        """Point this worker's tree at `commit`, touching only files that differ."""
        if not (self.src / ".git").exists():
            self.root.mkdir(parents=True, exist_ok=True)
            git(self.source.path, "worktree", "prune")
            git(self.source.path, "worktree", "add", "-q", "--detach", "-f", str(self.src), commit)
        else:
            git(self.src, "checkout", "-q", "--detach", "-f", commit)
            git(self.src, "clean", "-q", "-fdx")
        return self.src

    @contextmanager
    def locked(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / ".lock")):
            yield self


def worker(builds_dir: Path, source: SourceRepo, index: int) -> Worker:
    return Worker(builds_dir / source.key / f"w{index}", source, index)
