"""The machine lock between real processes: a measurement is not starved by builds that keep overlapping, its
wait is said when it starts with who holds the machine, and a dead waiter's intent blocks nobody."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from readfirst.sandbox import machine_lock as ml

pytestmark = pytest.mark.timeout(120)

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from readfirst.sandbox.machine_lock import machine_lock, set_run
    cache, mode, run, what, flag, release = sys.argv[1:7]
    set_run(run)
    with machine_lock(Path(cache), exclusive=mode == "ex", what=what):
        Path(flag).write_text("held")
        while not Path(release).exists():
            time.sleep(0.02)
""")

BUILDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from readfirst.sandbox.machine_lock import machine_lock
    cache, offset, rounds, done = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    time.sleep(offset)
    for _ in range(rounds):  # back to back: between this builder's rounds the others hold the machine
        with machine_lock(Path(cache), exclusive=False, what="build"):
            Path(done + ".started").touch()
            time.sleep(0.3)
    Path(done).write_text("done")
""")


def _python(code: str, *args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)])


def _until(condition, what: str, limit_s: float = 60.0) -> None:
    """Wait for another process's doing; the limit only keeps a broken case from hanging the suite."""
    end = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.02)


def test_a_measurement_is_not_starved_by_builds_that_keep_overlapping(tmp_path):
    builders = [_python(BUILDER, tmp_path, i * 0.15, 40, tmp_path / f"done-{i}") for i in range(3)]
    try:
        _until(lambda: all((tmp_path / f"done-{i}.started").exists() for i in range(3)), "the builders overlap")
        with ml.machine_lock(tmp_path, exclusive=True, what="bench"):
            # the builders, 12 s of rounds each, are still at it
            finished = [i for i in range(3) if (tmp_path / f"done-{i}").exists()]
        assert finished == [], "the measurement got the machine only once the stream of builds had ended"
    finally:
        for b in builders:
            b.kill()
            b.wait()


def test_a_wait_is_said_when_it_starts_with_the_holder(tmp_path, monkeypatch):
    monkeypatch.setattr(ml, "WAIT_GRACE_S", 0.2)
    monkeypatch.setattr(ml, "SAY_WAITS_FROM_S", 0.1)
    flag, release = tmp_path / "held", tmp_path / "release"
    holder = _python(HOLDER, tmp_path / "cache", "ex", "20261207-run-a", "bench", flag, release)
    said: list[str] = []
    try:
        _until(flag.exists, "the other run holds the machine")
        def build() -> None:
            with ml.machine_lock(tmp_path / "cache", exclusive=False, say=said.append, what="build"):
                pass
        waiter = threading.Thread(target=build)
        waiter.start()
        _until(lambda: said, "the wait is said")  # while it waits: the holder lets go only once release is written
        first = said[0]
        assert first.startswith("build is waiting for the machine (")
        assert "run 20261207-run-a, step bench (measuring" in first and f"pid {holder.pid}" in first
        release.write_text("go")
        waiter.join(timeout=60)
        assert any(s.startswith("build waited") for s in said[1:])
    finally:
        release.write_text("go")
        holder.wait(timeout=60)


def test_a_dead_measurements_intent_blocks_no_build(tmp_path):
    flag, release = tmp_path / "held", tmp_path / "release"
    build = _python(HOLDER, tmp_path, "sh", "run-b", "build", flag, release)
    try:
        _until(flag.exists, "a build holds the machine")
        # a measurement queues (holding the intent) behind the build, then dies while it waits
        measurement = _python(HOLDER, tmp_path, "ex", "run-c", "bench", tmp_path / "never", tmp_path / "never")
        _until(lambda: _intent_held(tmp_path), "the measurement's intent is taken")
        measurement.send_signal(signal.SIGKILL)
        measurement.wait(timeout=60)
        # a new build passes while the first still holds the machine: the intent died with its process
        with ml.machine_lock(tmp_path, exclusive=False, what="build"):
            assert build.poll() is None and not release.exists()
    finally:
        release.write_text("go")
        build.wait(timeout=60)


def _intent_held(cache: Path) -> bool:
    import fcntl
    fd = os.open(cache / ml.INTENT_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def test_a_thread_counts_the_seconds_it_waited(tmp_path):
    held, release = threading.Event(), threading.Event()

    def bench() -> None:
        with ml.machine_lock(tmp_path, exclusive=True):
            held.set()
            release.wait(60)

    t = threading.Thread(target=bench)
    t.start()
    held.wait(60)
    before = ml.waited_s()
    threading.Timer(0.5, release.set).start()
    with ml.machine_lock(tmp_path, exclusive=False):
        pass
    t.join(60)
    assert ml.waited_s() - before > 0.1
