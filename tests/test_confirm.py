"""The confirmation at the end of a run: the final stack against the baseline in one more interleaved A/B, on the
stand-in target (the real graph and evaluator; the stand-in's benchmark makes any added build flag 8% faster),
from clean builds; with more than one win kept, each win against what it was kept over as well."""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from test_trace_standin import SMALL, StandInTarget, record_run  # noqa: E402

from readfirst.graph.report_data import last_state, run_figures
from readfirst.graph.runner import read_meta
from readfirst.records import Measurement


def test_a_kept_stack_is_measured_again_against_the_baseline(tmp_path):
    directory, summary, target = record_run(tmp_path, options=replace(SMALL, kinds=("build",)))
    assert summary["kept"], summary
    confirmation = summary["confirmation"]
    assert confirmation["stack"] == summary["kept"] and confirmation["decision"] == "keep"
    assert 0.06 < confirmation["speedup"] < 0.10 and confirmation["ci_low"] > 0.0 and confirmation["pairs"] >= 2
    assert abs(confirmation["estimated"] - summary["best_speedup"]) < 1e-9  # the estimate is beside it
    assert "clean builds" in confirmation["builds"]  # says which builds were measured
    # both arms were built again from nothing, and only those were measured after the experiments
    cleans = [c for c in target.sandbox.commands if c.endswith("--clean")]
    assert len(cleans) == 2 and cleans[0].startswith(f"make {target.baseline_commit[:8]}")
    assert "-DFAST=ON" in cleans[1]
    assert confirmation["build_minutes"] is not None
    assert last_state(directory)["confirmation"] == confirmation
    assert run_figures(directory, read_meta(directory))["confirmed"] == confirmation["speedup"]


def test_nothing_kept_nothing_to_confirm_and_it_can_be_turned_off(tmp_path):
    _, summary, target = record_run(tmp_path, options=replace(SMALL, kinds=("runtime",)))
    assert not summary["kept"] and summary["confirmation"] is None
    _, summary, target = record_run(tmp_path / "off", options=replace(SMALL, kinds=("build",), confirm=False))
    assert summary["kept"] and summary["confirmation"] is None


class StaleWinTarget(StandInTarget):
    """Its one candidate flag is 8% faster in the run's incremental builds only: a stale object's win."""
    stale_flags = ("-DSTALE=ON",)

    def variants(self, variant):
        if "-DSTALE=ON" in variant["flags"]:
            return []
        return [{"kind": "build", "title": "build with -DSTALE=ON", "rationale": "",
                 "change": {"flags_add": ["-DSTALE=ON"]}}]


def test_a_win_that_only_incremental_builds_have_is_not_confirmed(tmp_path):
    _, summary, _ = record_run(tmp_path, options=replace(SMALL, kinds=("build",)), target_class=StaleWinTarget)
    assert summary["kept"] and summary["best_speedup"] > 0.06  # the run's own builds showed it
    confirmation = summary["confirmation"]
    assert confirmation["decision"] != "keep" and abs(confirmation["speedup"]) < 0.02, confirmation


class TwoWinsTarget(StandInTarget):
    """Each of its two flags is 8% faster; -DSTALE=ON only in the run's incremental builds."""
    stale_flags = ("-DSTALE=ON",)

    def variants(self, variant):
        return [{"kind": "build", "title": f"build with {f}", "rationale": "", "change": {"flags_add": [f]}}
                for f in ("-DREAL=ON", "-DSTALE=ON") if f not in variant["flags"]]

    def measure(self, commit, variant, metrics=None):
        self.sandbox.run(f"bench -t {variant['threads']}")
        self.benches += 1
        won = [f for f in variant["flags"] if not (variant.get("clean") and f in self.stale_flags)]
        wobble = 1 + 0.004 * math.sin(self.benches)
        return Measurement({"pp16": 200.0 * wobble, "tg8": 40.0 * 1.08 ** len(won) * wobble}, {"cpu": "stand-in"})


def test_with_two_kept_each_win_is_confirmed_against_what_it_was_kept_over(tmp_path):
    _, summary, _ = record_run(tmp_path, options=replace(SMALL, kinds=("build",), workers=1),
                               target_class=TwoWinsTarget)
    assert len(summary["kept"]) == 2, summary
    confirmation = summary["confirmation"]
    steps = {s["title"]: s for s in confirmation["steps"]}
    assert [s["id"] for s in confirmation["steps"]] == summary["kept"]
    real, stale = steps["build with -DREAL=ON"], steps["build with -DSTALE=ON"]
    assert real["decision"] == "keep" and 0.06 < real["speedup"] < 0.10 and "clean builds" in real["builds"]
    assert stale["decision"] != "keep" and abs(stale["speedup"]) < 0.02 and stale["estimated"] > 0.06
    # the stack holds the real win only
    assert 0.06 < confirmation["speedup"] < 0.10 and confirmation["estimated"] > 0.14
