"""What every target built on a git source shares: the repository, patches as commits, worker checkouts, and
commands run in the sandbox with a fresh scratch directory and a log file.

Container layout for every command: /out a fresh scratch directory whose files are read back without following
symlinks, plus the mounts the target adds (its checkout, its build, its caches).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..config import Paths
from ..protocols import Sandbox
from ..records import BenchResult, CommandResult, Mount
from ..sandbox.host_load import LoadWatch, is_busy
from ..sandbox.machine_lock import machine_lock
from ..sandbox.patch import commit_patch
from ..sandbox.workers import Worker, worker
from ..sources import SourceRepo

Say = Callable[[str], None]


def failed_stage(r: CommandResult, *, link: Callable[[str], bool] = lambda _tail: False) -> str:
    """Where a failed build command stopped, from what the sandbox observed: its timeout, the kernel's OOM kill,
    the disk limit, else a link error when `link` recognizes the output, else the compile stage."""
    if r.timed_out:
        return "timeout"
    if r.oom_killed:
        return "out of memory"
    if r.disk_exceeded:
        return "disk limit"
    return "link" if link(r.output_tail) else "compile"


class GitTarget:
    """A source prepared as a git repository (`baseline` tag), patched by commits, built in per-worker checkouts."""

    protected: tuple[str, ...] = ()

    def __init__(self, paths: Paths, sandbox: Sandbox, source: SourceRepo, *, say: Say = lambda _: None):
        self.paths = paths
        self.sandbox = sandbox
        self.source = source
        self.say = say
        self.load_watch = LoadWatch(lambda line: self.say(line))  # self.say may be replaced after construction

    @property
    def repository(self) -> Path:
        return self.source.path

    def commit_patch(self, patch: str, *, base: str | None = None, message: str = "experiment") -> str:
        return commit_patch(self.source.path, patch, base=base or self.source.baseline, message=message,
                            protected=self.protected)

    def _worker(self, index: int) -> Worker:
        return worker(self.paths.builds, self.source, index)

    def _run(self, command: str, *, timeout_s: float, log_name: str, mounts: Sequence[Mount],
             workdir: str = "/tmp", cpuset: str | None = None, env: Mapping[str, str] | None = None,
             measuring: bool = False, collect: str | tuple[str, ...] | None = None) -> tuple[CommandResult, Path]:
        """Run `command` with a fresh /out; the caller reads what it needs from the returned /out and discards it.
        A measurement (`measuring`) has the machine to itself; anything else only shares it with non-measurements."""
        def once() -> tuple[CommandResult, Path]:
            out = self.paths.cache / "scratch" / uuid.uuid4().hex
            out.mkdir(parents=True)
            log = self.paths.logs / f"{log_name}-{out.name[:8]}.log"
            with machine_lock(self.paths.cache, exclusive=measuring, say=self.say, what=log_name):
                result = self.sandbox.run(command, mounts=[Mount(out, "/out", False), *mounts], workdir=workdir,
                                          timeout_s=timeout_s, env=dict(env or {}), log_path=log, cpuset=cpuset,
                                          collect=collect)
            return result, out

        if not measuring:
            return once()
        # Another process's load on the machine is outside the lock: a run it disturbed is taken again. A failed
        # run is not a figure, so it is not retaken for the load it ran under.
        (result, out), retakes = self.load_watch.take(
            once, lambda taken: taken[0].foreign_share if taken[0].ok else None,
            lambda taken: self._discard(taken[1]), what=f"the {log_name} run")
        result.retakes = retakes
        return result, out

    @staticmethod
    def load_fields(r: CommandResult | BenchResult) -> dict:
        """A measured run's foreign load, as Measurement's fields (none known for a result that carries none)."""
        share = getattr(r, "foreign_share", None)
        return {"foreign_share": share, "retakes": getattr(r, "retakes", 0) or 0, "contaminated": is_busy(share)}

    @staticmethod
    def _discard(out: Path) -> None:
        shutil.rmtree(out, ignore_errors=True)
