"""Issue 29 item 5: a busy machine measured as if it were quiet. The machine lock keeps readfirst's own commands
away from a benchmark, nothing else: a CPU hog started outside readfirst (one `sha256sum /dev/zero` per CPU, as
a compile or a browser would) shares the benchmark's CPUs, and its figure reads slow as if the code were.

- a hog that stops once the load is seen: the run is retaken, and the measurement kept is the quiet one;
- a hog that stays: the measurement goes on, marked contaminated, and the user is told in one line with the
  figure (sandbox.host_load.LoadWatch).

The bench is the LZ4 harness of tests/config_project.py (a readfirst.toml project), built and run for real."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from config_project import make_project  # noqa: E402

from readfirst.sandbox.host_load import FOREIGN_MAX, MAX_RETAKES  # noqa: E402
from readfirst.targets import make_spec  # noqa: E402

pytestmark = [pytest.mark.docker]


@pytest.fixture(scope="module")
def lz4(tmp_path_factory, shared_cache):
    return make_project(tmp_path_factory.mktemp("load") / "lz4", shared_cache / "sdists", bench="./bench/lz4bench 60")


@pytest.fixture
def measured(lz4, paths, docker_client, base_image):
    from readfirst.graph.deps import compose_target
    said: list[str] = []
    _, target = compose_target(paths, make_spec(None, source=str(lz4)), say=said.append)
    baseline = target.prepare()
    said.clear()  # what preparing said
    target.said = said
    target.baseline = baseline
    target.measure_baseline = lambda: target.measure(baseline.commit, baseline.variant)
    return target


class Hog:
    """One spinning process per CPU this process may use, started outside readfirst; stopped by pid."""

    def __init__(self):
        self.procs = [subprocess.Popen(["sha256sum", "/dev/zero"], stdout=subprocess.DEVNULL)
                      for _ in os.sched_getaffinity(0)]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def stop_when_seen(watch, hog: Hog) -> threading.Event:
    """Stops the hog as soon as the watch has recorded a busy take (it then waits before the retake)."""
    done = threading.Event()

    def look() -> None:
        while not done.wait(0.02):
            if any(share > FOREIGN_MAX for share in list(watch.recent)):
                hog.stop()
                return
    threading.Thread(target=look, daemon=True).start()
    return done


def test_a_run_under_a_cpu_hog_is_retaken_and_the_quiet_take_is_kept(attack, measured):
    quiet = measured.measure_baseline()
    if getattr(quiet, "contaminated", False):  # someone else's work: the premise, a quiet machine, is not there
        pytest.skip(f"the machine was busy before the hog started (foreign share {quiet.foreign_share:.0%})")
    measured.load_watch.recent.clear()
    hog = Hog()
    done = stop_when_seen(measured.load_watch, hog)
    try:
        m = measured.measure_baseline()
    finally:
        done.set()
        hog.stop()
    first = measured.load_watch.recent[0] if measured.load_watch.recent else None
    if not getattr(m, "retakes", 0):
        attack.escaped(f"a run taken beside a CPU hog was kept as if the machine were quiet "
                       f"({m.values}, foreign share {getattr(m, 'foreign_share', None)})")
    assert first is not None and first > FOREIGN_MAX, list(measured.load_watch.recent)
    assert m.foreign_share is not None and m.foreign_share <= FOREIGN_MAX and not m.contaminated, m
    assert measured.said == [], measured.said  # a retake that came out quiet is not worth a line


def test_a_machine_that_stays_busy_is_measured_marked_and_said(attack, measured):
    hog = Hog()
    try:
        m = measured.measure_baseline()
    finally:
        hog.stop()
    if not getattr(m, "contaminated", False):
        attack.escaped(f"a run taken beside a CPU hog throughout was not marked ({m.values}, foreign share "
                       f"{getattr(m, 'foreign_share', None)})")
    assert m.retakes == MAX_RETAKES and m.foreign_share > FOREIGN_MAX, m
    lines = [s for s in measured.said if s.startswith("other processes used")]
    assert len(lines) == 1, measured.said
    share, busy, runs = map(int, re.match(r"other processes used (\d+)% of the CPUs during (\d+) of the last (\d+) "
                                          r"runs", lines[0]).groups())
    assert busy == runs == MAX_RETAKES + 1 and share > 100 * FOREIGN_MAX, lines[0]


def test_a_calibration_beside_a_hog_is_retaken_to_the_quiet_machines_noise(attack, measured):
    """The hog starts after the calibration's second run and stops once a take has seen it: the runs it disturbed
    are taken again, so the noise the verdicts will pool is the quiet machine's, not the hog's."""
    from readfirst.agents.experiment import calibrate_build
    commit, variant = measured.baseline.commit, measured.baseline.variant
    quiet = calibrate_build(measured, commit, variant, pairs=3).floors[measured.objective.metric]
    if measured.load_watch.contaminated:  # someone else's work: the premise, a quiet machine, is not there
        pytest.skip(f"the machine was busy before the hog started: {list(measured.load_watch.recent)}")
    retaken_quiet = measured.load_watch.retaken
    watch = measured.load_watch
    started = threading.Event()
    done = threading.Event()
    hogs: list[Hog] = []
    measured_before = watch.measured

    def hog_mid_calibration() -> None:
        while not done.wait(0.02):
            if not started.is_set() and watch.measured >= measured_before + 2:
                hogs.append(Hog())
                started.set()
                watch.recent.clear()
            elif started.is_set() and any(share > FOREIGN_MAX for share in list(watch.recent)):
                hogs[0].stop()
                return
    threading.Thread(target=hog_mid_calibration, daemon=True).start()
    try:
        busy = calibrate_build(measured, commit, variant, pairs=3).floors[measured.objective.metric]
    finally:
        done.set()
        for h in hogs:
            h.stop()
    assert started.is_set(), "the calibration ended before the hog could start"
    if watch.retaken == retaken_quiet:
        attack.escaped(f"a calibration run taken beside a CPU hog was kept (run noise {busy.run_cv:.1%} against "
                       f"{quiet.run_cv:.1%} quiet)")
    # within the quiet machine's noise: a disturbed run kept would read the hog's slowdown (about half the speed)
    assert busy.run_cv <= max(2 * quiet.run_cv, quiet.run_cv + 0.03), (busy.run_cv, quiet.run_cv)
