"""How much of the machine other processes took while a measurement ran.

The machine lock keeps readfirst's own commands away from a benchmark; nothing keeps a browser, a compile or
another user's job away. On a busy 2-core machine llama-bench read 6.9 t/s where the quiet machine gave 21.1, and
the profile reasoned from that figure. So every sandbox command is bracketed by two samples: the busy CPU time of
the CPUs it was pinned to (/proc/stat), less the CPU time of its own container (its cgroup's counter). What is
left was spent by other processes; as a share of those CPUs' capacity over the wall time, it is the run's foreign
load. A measurement taken above FOREIGN_MAX is retaken (LoadWatch), and one that stays busy is marked.

Unknown (None) when the container's cgroup is not on this host (a remote engine): the host's /proc then says
nothing about the machine that ran it.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

CGROUP_ROOT = Path("/sys/fs/cgroup")
# Measured (docs/RELIABILITY.md): bench runs of 0.3-3 s on this 2-core machine with nothing else running read
# 0-4% (the engine's attach stream and readfirst's own watch threads count as foreign); one `sha256sum
# /dev/zero` on one of two pinned CPUs reads about 50%.
FOREIGN_MAX = 0.10
MAX_RETAKES = 3
RETAKE_WAIT_S = 2.0
RECENT_RUNS = 10  # the window the "during N of the last M runs" line counts over

R = TypeVar("R")


@dataclass(frozen=True)
class HostLoad:
    """Other processes' CPU time during one run, as a share of the pinned CPUs' capacity over its wall time."""
    foreign_share: float
    cpus: str
    wall_s: float

    @property
    def busy(self) -> bool:
        return self.foreign_share > FOREIGN_MAX


def cpu_list(spec: str | None) -> list[int]:
    """"0,2-3" as [0, 2, 3]; None or "" as every CPU /proc/stat lists."""
    if not spec:
        return sorted(_per_cpu_busy())
    cpus: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        cpus += range(int(lo), int(hi or lo) + 1)
    return cpus


def _per_cpu_busy() -> dict[int, float]:
    """Busy seconds per CPU since boot: user, nice, system, irq, softirq and steal (a hypervisor's other guests
    are foreign load too); idle and iowait are not busy. guest time is already inside user."""
    tick = os.sysconf("SC_CLK_TCK")
    busy = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                v = [int(x) for x in fields[:8]] + [0] * (8 - len(fields[:8]))
                busy[int(name[3:])] = (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / tick
    return busy


def busy_seconds(cpus: list[int]) -> float:
    per_cpu = _per_cpu_busy()
    return sum(per_cpu.get(c, 0.0) for c in cpus)


def container_cpu_counter(container_id: str, pid: int | None = None) -> ContainerCpu | None:
    """The container's CPU time from its cgroup's parent, or None when its cgroup is not on this host. The
    init's /proc/PID/cgroup names it in any layout; the engine's usual paths (cgroupfs and systemd drivers, v1
    and v2) are tried without it."""
    for path in _cgroup_candidates(container_id, pid):
        if path.is_file():
            return ContainerCpu(path.parent.parent, path.name, path.parent.name)
    return None


class ContainerCpu:
    """The engine removes a container's cgroup as soon as its command exits, before anyone can read its final
    count. Its parent's count keeps what its children used (v1 cpuacct charges every ancestor, v2 flushes a
    child's stats into its parent when it goes), so the container's time is the parent's growth less that of
    its siblings (other containers, or services under a systemd slice). A sibling that goes during the run
    counts as the container's: foreign load is never overstated by it."""

    def __init__(self, parent: Path, counter: str, own: str):
        self.parent, self.counter, self.own = parent, counter, own

    def snapshot(self) -> tuple[float, dict[str, float]] | None:
        total = _read_cpu_seconds(self.parent / self.counter)
        if total is None:
            return None
        siblings = {}
        for child in self.parent.iterdir():
            if child.name != self.own and child.is_dir():
                used = _read_cpu_seconds(child / self.counter)
                if used is not None:
                    siblings[child.name] = used
        return total, siblings

    @staticmethod
    def used(before: tuple[float, dict[str, float]], after: tuple[float, dict[str, float]]) -> float:
        grown = after[0] - before[0]
        return grown - sum(used - before[1].get(name, 0.0) for name, used in after[1].items())


def _cgroup_candidates(container_id: str, pid: int | None) -> list[Path]:
    found: list[Path] = []
    if pid:
        try:
            for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
                _, controllers, rel = line.split(":", 2)
                rel = rel.lstrip("/")
                if controllers == "":
                    found.append(CGROUP_ROOT / rel / "cpu.stat")  # v2
                elif "cpuacct" in controllers.split(","):
                    found.append(CGROUP_ROOT / controllers / rel / "cpuacct.usage")
        except (OSError, ValueError):
            pass
    for rel in (f"docker/{container_id}", f"system.slice/docker-{container_id}.scope"):
        found += [CGROUP_ROOT / "cpuacct" / rel / "cpuacct.usage", CGROUP_ROOT / "cpu,cpuacct" / rel / "cpuacct.usage",
                  CGROUP_ROOT / rel / "cpu.stat"]
    return found


def _read_cpu_seconds(path: Path) -> float | None:
    try:
        text = path.read_text()
    except OSError:
        return None  # gone with its container
    if path.name == "cpuacct.usage":
        return int(text) / 1e9
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) / 1e6
    return None


class Sampler:
    """Begun when the measured container has started, ended when it has finished: what others used in between."""

    def __init__(self, cpus: str | None, own: ContainerCpu):
        self.cpus = cpus or ""
        self._cpus = cpu_list(cpus)
        self._own = own
        self._t0 = time.monotonic()
        self._busy0 = busy_seconds(self._cpus)
        self._own0 = own.snapshot()

    def end(self) -> HostLoad | None:
        own1, busy1, wall = self._own.snapshot(), busy_seconds(self._cpus), time.monotonic() - self._t0
        if self._own0 is None or own1 is None or wall <= 0:
            return None
        foreign = (busy1 - self._busy0) - self._own.used(self._own0, own1)
        share = min(1.0, max(0.0, foreign / (len(self._cpus) * wall)))
        return HostLoad(round(share, 4), self.cpus or ",".join(map(str, self._cpus)), round(wall, 3))


class LoadWatch:
    """A target's measurements under foreign load: each run is retaken while the machine is busy (up to
    MAX_RETAKES, RETAKE_WAIT_S apart); when it stays busy the last take is kept, marked, and the user told in
    one line with the figure. Counts what it retook and marked, for the run's summary."""

    def __init__(self, say: Callable[[str], None], *, wait_s: float = RETAKE_WAIT_S):
        self.say = say
        self.wait_s = wait_s
        self.recent: deque[float] = deque(maxlen=RECENT_RUNS)  # each take's foreign share
        self.measured = self.retaken = self.contaminated = 0
        self._lock = threading.Lock()

    def take(self, run: Callable[[], R], share: Callable[[R], float | None],
             discard: Callable[[R], None] = lambda _r: None, *, what: str = "a measurement") -> tuple[R, int]:
        """`run` until its `share` is not busy, at most 1 + MAX_RETAKES times; (the take kept, retakes)."""
        retakes = 0
        while True:
            result = run()
            s = share(result)
            with self._lock:
                if s is not None:
                    self.recent.append(s)
            if s is None or s <= FOREIGN_MAX or retakes == MAX_RETAKES:
                break
            discard(result)
            retakes += 1
            time.sleep(self.wait_s)
        with self._lock:
            self.measured += 1
            self.retaken += retakes
            if s is not None and s > FOREIGN_MAX:
                self.contaminated += 1
                busy = [x for x in self.recent if x > FOREIGN_MAX]
                self.say(f"other processes used {sum(busy) / len(busy):.0%} of the CPUs during {len(busy)} of the "
                         f"last {len(self.recent)} runs: {what} is kept but marked contaminated (its figure is "
                         f"unreliable)")
        return result, retakes

    def report(self) -> dict[str, int]:
        return {"measured": self.measured, "retaken": self.retaken, "contaminated": self.contaminated}


def is_busy(share: float | None) -> bool:
    return share is not None and share > FOREIGN_MAX
