"""One machine, one measurement at a time, and nothing else beside it.

Benchmarks (and the bandwidth probe) take the machine's lock exclusively; every other sandbox command (builds,
tests, logits checks) takes it shared. So builds may run beside builds (`--workers 2`), but never beside a
measurement, across threads and across processes that share the cache: on a 2-core machine a build beside a
benchmark read as an A/A bias of -8% between identical builds. flock(2) on a file in the cache: released by the
kernel when a process dies, and each `with` opens its own descriptor, so threads of one process exclude each
other too.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = "machine.lock"


@contextmanager
def machine_lock(cache: Path, *, exclusive: bool):
    cache.mkdir(parents=True, exist_ok=True)
    fd = os.open(cache / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
