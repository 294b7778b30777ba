"""Issue 13 item 4 on a readfirst.toml project: code under test runs inside the project's own bench, so a patched
library can print METRIC lines of its own. Two forgeries of LZ4's throughput (tests/config_project.py), each
built, tested and measured for real, the library's numerics untouched:
- **added lines**: the library prints two `METRIC mb_per_s=` lines of its own as the bench exits, and the median
  of the three is its figure. The bench printed one line a run for the baseline: the candidate's runs are not
  the same benchmark (agents.experiment.ArmBench.changed_signature), a discard at gate "signature";
- **replaced lines**: the library writes its own lines and leaves with `_exit(0)`, so the bench's buffered line
  is never written: the same lines, a 10x claim. The file declares `work` (MB per run), so every run claims
  work / rate seconds, and the host's clock for the same runs refutes the saving (gate "clock").
And the control: the honest fix (the planted redundant passes removed, a 1.5x win) is kept with the same
declaration, the clock seeing the saving it claims.

300 rounds of 4 MiB: a baseline run lasts about 3 s here, so that an honest or forged saving is above the
clock's noise (container start, a copy of the build)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from config_project import ANCHOR, SLOWDOWN, make_project, patch_at_baseline  # noqa: E402

from readfirst.agents.experiment import evaluator_for, run_experiment  # noqa: E402
from readfirst.targets import make_spec  # noqa: E402

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROUNDS = 300
WORK_MB = ROUNDS * (4 << 20) / 1e6  # what one bench run compresses, in the metric's MB

# Put into lz4.c before LZ4_compress_default: only the bench binary is touched (the round-trip test runs the same library, unchanged).
ADDED_LINES = r'''
#include <stdio.h>
#include <string.h>
extern char *program_invocation_short_name;
__attribute__((destructor)) static void readfirst_forge(void) {
    if (!strstr(program_invocation_short_name, "lz4bench")) return;
    printf("METRIC mb_per_s=9999.0\nMETRIC mb_per_s=9999.0\n");
}
'''
REPLACED_LINES = r'''
#include <string.h>
#include <unistd.h>
extern char *program_invocation_short_name;
__attribute__((destructor)) static void readfirst_forge(void) {
    if (!strstr(program_invocation_short_name, "lz4bench")) return;
    static const char forged[] = "METRIC mb_per_s=4500.0\nMETRIC ratio=1.0255\n";
    write(1, forged, sizeof forged - 1);
    _exit(0);  /* stdio is never flushed: the bench's own lines are lost */
}
'''
# Issue 29 item 2: 160 KB of blank lines at exit push the bench's own lines out of the 64 KiB output tail, and
# the library's lines are all that is left there: the same names, once each, the signature of the baseline's.
FLOODED_LINES = r'''
#include <stdio.h>
#include <string.h>
extern char *program_invocation_short_name;
__attribute__((destructor)) static void readfirst_forge(void) {
    if (!strstr(program_invocation_short_name, "lz4bench")) return;
    for (int i = 0; i < 170000; i++) putchar('\n');
    printf("METRIC mb_per_s=9999.0\nMETRIC ratio=2.1\n");
}
'''


@pytest.fixture(scope="module")
def clocked_lz4(tmp_path_factory, shared_cache):
    root = tmp_path_factory.mktemp("forged")
    return make_project(root / "lz4", shared_cache / "sdists", bench=f"./bench/lz4bench {ROUNDS}",
                        objective_extra=f"work = {WORK_MB:g}\n")


@pytest.fixture(scope="module")
def unclocked_lz4(tmp_path_factory, shared_cache):
    """No `work` declared: the host's clock cannot judge a claim, only the lines can."""
    root = tmp_path_factory.mktemp("forged-unclocked")
    return make_project(root / "lz4", shared_cache / "sdists", bench=f"./bench/lz4bench {ROUNDS}")


@pytest.fixture
def experiment(clocked_lz4, paths, docker_client, base_image):
    return experiment_on(clocked_lz4, paths)


@pytest.fixture
def unclocked_experiment(unclocked_lz4, paths, docker_client, base_image):
    return experiment_on(unclocked_lz4, paths)


def experiment_on(project: Path, paths):
    from readfirst.graph.deps import compose_target
    _, target = compose_target(paths, make_spec(None, source=str(project)), say=lambda _: None)
    baseline = target.prepare()

    def run(title: str, patch: str) -> dict:
        return run_experiment({"id": "F1", "key": title, "kind": "patch", "title": title, "change": {"patch": patch}},
                              target=target, best={"commit": baseline.commit, "variant": baseline.variant},
                              baseline=baseline, evaluator_config=evaluator_for(target, max_runs=14))
    run.repository = target.repository
    return run


def appended(repository: Path, code: str) -> str:
    return patch_at_baseline(repository, ANCHOR, code + "\n" + ANCHOR)


def test_a_library_that_adds_metric_lines_of_its_own_is_discarded_as_tampered(attack, experiment):
    row = experiment("added METRIC lines", appended(experiment.repository, ADDED_LINES))
    assert row["build"]["ok"] and all(c["passed"] for c in row["checks"]["results"]), row["reason"]
    assert row["speedup"] > 1, row["reason"]  # the forgery worked on the figures: the median is its own
    if row["decision"] == "keep":
        attack.escaped(f"a library that printed its own METRIC lines was kept: {row['reason']}")
    assert row["verdict"]["gate"] == "signature" and "METRIC lines {mb_per_s: 3, ratio: 1}" in row["reason"], \
        row["reason"]


def test_a_library_that_replaces_the_benchs_lines_is_refuted_by_the_hosts_clock(attack, experiment):
    row = experiment("replaced METRIC lines", appended(experiment.repository, REPLACED_LINES))
    assert row["build"]["ok"] and all(c["passed"] for c in row["checks"]["results"]), row["reason"]
    if row["decision"] == "keep":
        attack.escaped(f"a library that rewrote the bench's METRIC lines was kept: {row['reason']}")
    assert row["verdict"]["gate"] == "clock" and row["reason"].startswith("tampered: the host's clock"), row["reason"]
    assert any(cell["arm"] == "candidate" for cell in row["clock"]["cells"])


def test_the_honest_fix_is_kept_by_the_same_clock(experiment):
    row = experiment("drop the redundant passes", patch_at_baseline(experiment.repository, SLOWDOWN, ""))
    assert row["decision"] == "keep", row["reason"]
    cells = {cell["arm"]: cell for cell in row["clock"]["cells"]}
    saved = cells["baseline"]["claimed_s"] - cells["candidate"]["claimed_s"]
    assert saved > 0.5 and cells["baseline"]["host_s"] - cells["candidate"]["host_s"] > saved / 2, row["clock"]


def test_a_library_that_floods_the_output_tail_before_its_lines_is_discarded(attack, unclocked_experiment):
    """The figures come from the whole output stream: the bench's lines are still there, the library's beside them
    (on a project that declares no `work`, so that the lines alone must tell)."""
    experiment = unclocked_experiment
    row = experiment("flooded METRIC lines", appended(experiment.repository, FLOODED_LINES))
    assert row["build"]["ok"] and all(c["passed"] for c in row["checks"]["results"]), row["reason"]
    if row["decision"] == "keep":
        attack.escaped(f"a library that pushed the bench's METRIC lines out of the tail was kept: {row['reason']}")
    assert row["verdict"]["gate"] == "signature" and "METRIC lines {mb_per_s: 2, ratio: 2}" in row["reason"], \
        row["reason"]
