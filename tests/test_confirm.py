"""The confirmation at the end of a run: the final stack against the baseline in one more interleaved A/B, on the
stand-in target (the real graph and evaluator; the stand-in's benchmark makes any added build flag 8% faster)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from test_trace_standin import SMALL, StandInTarget, record_run  # noqa: E402

from readfirst.graph.report_data import last_state, run_figures
from readfirst.graph.runner import read_meta


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
