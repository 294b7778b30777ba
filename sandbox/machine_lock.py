"""One machine, one measurement at a time, and nothing else beside it.

Benchmarks (and the bandwidth probe) take the machine's lock exclusively; every other sandbox command (builds,
tests, logits checks) takes it shared. So builds may run beside builds (`--workers 2`), but never beside a
measurement, across threads and across processes that share the cache: on a 2-core machine a build beside a
benchmark read as an A/A bias of -8% between identical builds. flock(2) on a file in the cache: released by the
kernel when a process dies, and each `with` opens its own descriptor, so threads of one process exclude each
other too.

Measurements go first. flock has no writer priority: builds that keep overlapping held the lock shared for 19
minutes while a benchmark waited. So an exclusive locker first takes a second lock, the intent, exclusively and
keeps it while it waits; a shared locker passes through the intent (shared) before it takes the machine, so new
builds queue behind a waiting measurement. The intent is a flock too: a dead waiter's intent is gone with it.

A wait is said when it begins (after WAIT_GRACE_S) with who holds the machine, then every SAY_EVERY_S with the
time so far, and at its end with its length: a run that stalls behind another should not look hung. Each holder
leaves a small record beside the lock (its pid, run, step, since when) for that sentence; the records are read
as untrusted files (no link followed, size capped, a dead pid's record ignored). The time a thread waited is
counted (waited_s) so that a step's or an experiment's time can show the wait as its own part.
"""

from __future__ import annotations

import contextvars
import fcntl
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from .readback import read_bytes_inside

LOCK_NAME = "machine.lock"
INTENT_NAME = "machine.intent"
HOLDERS_DIR = "machine.holders"
WAIT_GRACE_S = 2.0  # a wait is said once it lasts this long: shorter ones (a build's last step) are not news
SAY_WAITS_FROM_S = 1.0  # and its length at its end from this long
SAY_EVERY_S = 30.0
HOLDER_MAX_BYTES = 4096
HOLDERS_READ_MAX = 16

_local = threading.local()  # per thread: how deep in machine locks, and the seconds waited so far
_run = {"id": ""}  # the run this process works for, named in its holder records


def set_run(run_id: str) -> None:
    """Name the run this process works for in the records of the locks it holds."""
    _run["id"] = run_id


def waited_s() -> float:
    """Seconds this thread has waited for the machine, in all: a step subtracts its start's value from its end's."""
    return getattr(_local, "waited", 0.0)


@contextmanager
def machine_lock(cache: Path, *, exclusive: bool, say: Callable[[str], None] | None = None, what: str = ""):
    cache.mkdir(parents=True, exist_ok=True)
    depth = getattr(_local, "depth", 0)
    fd = os.open(cache / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    intent = None
    record = None
    try:
        began = time.monotonic()
        with _announced(cache, exclusive, say, what, began):
            # A thread that holds the machine already passes no intent: it would wait on a measurement that
            # waits on it.
            intent = _take_intent(cache, exclusive) if depth == 0 else None
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            if intent is not None:
                # a build only passed through it; a measurement kept it while it waited, and has the machine now
                os.close(intent)
                intent = None
        waited = time.monotonic() - began
        _local.waited = waited_s() + waited
        if say is not None and waited >= SAY_WAITS_FROM_S:
            why = ("a measurement needs the machine to itself" if exclusive
                   else "a measurement had the machine to itself")
            say(f"{what or 'this step'} waited {waited:.0f} s for the machine: {why} (another run or worker "
                f"sharing the cache {cache})")
        record = _write_holder(cache, exclusive, what)
        _local.depth = depth + 1
        yield
    finally:
        _local.depth = depth
        if record is not None:
            _remove(record)
        if intent is not None:
            os.close(intent)
        os.close(fd)  # closing the descriptor releases the lock


def _take_intent(cache: Path, exclusive: bool) -> int:
    fd = os.open(cache / INTENT_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def _announced(cache: Path, exclusive: bool, say: Callable[[str], None] | None, what: str, began: float):
    """While the body waits, say so after WAIT_GRACE_S and then every SAY_EVERY_S, from a thread of its own (in
    the caller's context, so a traced say is recorded in the caller's step)."""
    if say is None:
        yield
        return
    done = threading.Event()
    context = contextvars.copy_context()

    def announce() -> None:
        delay = WAIT_GRACE_S
        while not done.wait(delay):
            context.run(say, wait_sentence(cache, exclusive, what, time.monotonic() - began))
            delay = SAY_EVERY_S

    thread = threading.Thread(target=announce, name="machine-lock-wait", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def wait_sentence(cache: Path, exclusive: bool, what: str, so_far: float) -> str:
    """What a waiter says: what waits, for how long so far, why, and who holds the machine."""
    why = "a measurement needs the machine to itself" if exclusive else "a measurement has the machine"
    holders = [_describe(h) for h in read_holders(cache)]
    held = "; ".join(holders) if holders else "by another process sharing the cache (it left no record)"
    return (f"{what or 'this step'} is waiting for the machine ({so_far:.0f} s so far; {why}): held "
            f"{'by ' if holders else ''}{held} (cache {cache})")


def _describe(h: dict) -> str:
    run = f"run {h['run']}" if h.get("run") else f"process {h['pid']}"
    since = time.time() - h["since"]
    doing = "measuring" if h.get("exclusive") else "sharing it"
    return f"{run}, step {h.get('what') or '?'} ({doing}, for {max(since, 0):.0f} s, pid {h['pid']})"


def _write_holder(cache: Path, exclusive: bool, what: str) -> Path | None:
    """This holder's record beside the lock; None when it could not be written (the lock stands without it)."""
    folder = cache / HOLDERS_DIR
    path = folder / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.json"
    body = json.dumps({"pid": os.getpid(), "run": _run["id"], "what": str(what)[:200], "exclusive": exclusive,
                       "since": time.time()})
    try:
        folder.mkdir(exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(body)
    except OSError:
        return None
    return path


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def read_holders(cache: Path) -> list[dict]:
    """The live holders' records: read without following links or waiting on FIFOs, at most HOLDER_MAX_BYTES
    each and HOLDERS_READ_MAX in all; a record that is not one, or whose pid is gone, is left out (and a dead
    pid's removed)."""
    folder = cache / HOLDERS_DIR
    try:
        names = sorted(os.listdir(folder))[:HOLDERS_READ_MAX]
    except OSError:
        return []
    found = []
    for name in names:
        h = _read_record(folder / name)
        if h is None:
            continue
        if not _alive(h["pid"]):
            _remove(folder / name)
            continue
        found.append(h)
    return found


def _read_record(path: Path) -> dict | None:
    try:
        h = json.loads(read_bytes_inside(path.parent, path.name, limit=HOLDER_MAX_BYTES).decode("utf-8", "replace"))
    except (OSError, ValueError):
        return None
    ok = (isinstance(h, dict) and type(h.get("pid")) is int and 0 < h["pid"] < 2 ** 22
          and isinstance(h.get("since"), (int, float)) and isinstance(h.get("what", ""), str)
          and isinstance(h.get("run", ""), str))
    if not ok:
        return None
    # said on a terminal: no escape sequence from a file anyone sharing the cache could write
    return {**h, **{k: "".join(c for c in h.get(k, "")[:200] if c.isprintable()) for k in ("what", "run")},
            "exclusive": h.get("exclusive") is True}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
