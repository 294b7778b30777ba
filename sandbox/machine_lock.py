"""One machine, one measurement at a time, and nothing else beside it.

Benchmarks (and the bandwidth probe) take the machine's lock exclusively; every other sandbox command (builds,
tests, logits checks) takes it shared. So builds may run beside builds (`--workers 2`), but never beside a
measurement, across threads and across processes that share the cache: on a 2-core machine a build beside a
benchmark read as an A/A bias of -8% between identical builds. flock(2) on a file in the cache: released by the
kernel when a process dies, and each `with` opens its own descriptor, so threads of one process exclude each
other too.

A wait is said, with its length, when a `say` is given: a run that stalls behind another process's benchmark
(or a benchmark behind another's builds) should not look hung.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = "machine.lock"
SAY_WAITS_FROM_S = 1.0  # shorter waits (a build finishing its last step) are not worth a line


@contextmanager
def machine_lock(cache: Path, *, exclusive: bool, say: Callable[[str], None] | None = None, what: str = ""):
    cache.mkdir(parents=True, exist_ok=True)
    fd = os.open(cache / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            began = time.monotonic()
            fcntl.flock(fd, mode)
            waited = time.monotonic() - began
            if say is not None and waited >= SAY_WAITS_FROM_S:
                why = ("a measurement needs the machine to itself" if exclusive
                       else "a measurement had the machine to itself")
                say(f"{what or 'this step'} waited {waited:.0f} s for the machine: {why} (another run or worker "
                    f"sharing the cache {cache})")
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
