"""The evaluator's schedule, adaptive stopping, budget and gates, against a seeded fake benchmark and clock."""

from __future__ import annotations

import math

import numpy as np
import pytest

from readfirst.agents.evaluator import (BASELINE, CANDIDATE, Calibration, EvaluatorConfig, Verdict, calibrate,
                                        evaluate, gates)
from readfirst.agents.statistics import DecisionRule
from readfirst.records import CheckResult, Checks, Guard, Objective

FAST = DecisionRule(n_resamples=1000)


class FakeBench:
    """llama-bench stand-in: known true effects, log-normal run noise, optional drift, hit runs and slow warm-up.

    Each call advances a fake clock by the run's duration, so budgets are tested without sleeping.
    """

    def __init__(self, *, tg_effect: float = 0.0, pp_effect: float | None = 0.0, cv: float = 0.015,
                 drift_per_run: float = 0.0, run_s: float | list[float] = 25.0, hit_every: int = 0,
                 hit: float = 0.65, warmup_factor: float = 1.0, pp_cv: float | None = None, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.tg_effect, self.pp_effect, self.cv = tg_effect, pp_effect, cv
        self.drift_per_run, self.run_s, self.hit_every, self.hit = drift_per_run, run_s, hit_every, hit
        self.warmup_factor = warmup_factor
        self.pp_cv = cv if pp_cv is None else pp_cv
        self.now = 1000.0
        self.calls: list[str] = []
        self.asked: list[tuple[str, ...] | None] = []  # the metrics each run was asked for

    def clock(self) -> float:
        return self.now

    def measure(self, which: str, metrics: tuple[str, ...] | None = None) -> dict[str, float]:
        i = len(self.calls)
        self.asked.append(metrics)
        self.calls.append(which)
        durations = self.run_s if isinstance(self.run_s, list) else [self.run_s]
        self.now += durations[i % len(durations)]
        level = math.exp(self.drift_per_run * i)
        if self.hit_every and i % self.hit_every == self.hit_every - 1:
            level *= self.hit  # a neighbour's build ran during this one
        if self.calls.count(which) == 1:
            level *= self.warmup_factor
        cand = which == CANDIDATE
        out = {"tg128": 70.0 * level * (1 + self.tg_effect * cand) * math.exp(self.rng.normal(0, self.cv))}
        if self.pp_effect is not None and (metrics is None or any(m.startswith("pp") for m in metrics)):
            out["pp512"] = 290.0 * level * (1 + self.pp_effect * cand) * math.exp(self.rng.normal(0, self.pp_cv))
        return out


def run(bench: FakeBench, **config) -> Verdict:
    return evaluate(bench.measure, EvaluatorConfig(**{"rule": FAST, **config}), clock=bench.clock)


# --- schedule -----------------------------------------------------------------------------------------------

def test_runs_are_interleaved_abba_after_discarded_warmups():
    bench = FakeBench(tg_effect=-0.10, warmup_factor=3.0)  # a first run 3x faster must not count
    verdict = run(bench)
    assert bench.calls[:2] == [BASELINE, CANDIDATE]
    assert bench.calls[2:] == [BASELINE, CANDIDATE, CANDIDATE, BASELINE] * ((len(bench.calls) - 2) // 4)
    assert [r.warmup for r in verdict.runs[:3]] == [True, True, False]
    assert bench.asked[:2] == [("tg",), ("tg",)]  # a warm-up pages everything in: the objective's run is enough
    assert verdict.decision == "discard" and verdict.objective.estimate == pytest.approx(-0.10, abs=0.02)
    assert verdict.runs_used == len(bench.calls) == len(verdict.runs)


def test_abba_order_cancels_a_linear_drift():
    bench = FakeBench(drift_per_run=-0.01, cv=0.002, pp_effect=None)  # the machine slows 1% per run
    verdict = run(bench)
    measured = [r for r in verdict.runs if not r.warmup]
    baseline_first = [math.log(measured[i + 1].values["tg128"] / measured[i].values["tg128"])
                      for i in range(0, len(measured), 4)]
    assert np.mean(baseline_first) < -0.007  # the premise: pairs in one order alone would show a -1% "effect"
    assert abs(verdict.objective.estimate) < 0.003
    assert verdict.decision == "discard"


# --- sequential stopping ------------------------------------------------------------------------------------

def calibrated(cv: float = 0.015, seed: int = 50) -> dict:
    """The priors of an 8-pair A/A calibration on the same noise."""
    bench = FakeBench(cv=cv, seed=seed)
    return calibrate(bench.measure, EvaluatorConfig(rule=FAST), pairs=8, clock=bench.clock).priors()


def test_a_decisive_win_is_kept_on_its_first_blocks_when_the_calibration_knows_the_noise():
    verdict = run(FakeBench(tg_effect=0.20, pp_effect=None), priors=calibrated())  # tg alone: the first block
    assert (verdict.decision, verdict.stopped, verdict.gate) == ("keep", "clear", "performance")
    assert verdict.runs_used == 2 + 4 and verdict.pairs_used == 2
    assert verdict.effects["tg128"].estimate == pytest.approx(0.20, abs=0.03)
    assert "A/A calibration" in verdict.objective.noise
    # with pp guarded and as quiet, the first block decides too; with pp twice as noisy (calibrated so), its 2
    # pairs still reach past twice its limit: one more block
    assert run(FakeBench(tg_effect=0.20), priors=calibrated()).runs_used == 2 + 4
    noisy_pp = FakeBench(pp_cv=0.03, seed=50)
    priors = calibrate(noisy_pp.measure, EvaluatorConfig(rule=FAST), pairs=8, clock=noisy_pp.clock).priors()
    guarded = run(FakeBench(tg_effect=0.20, pp_cv=0.03), priors=priors)
    assert guarded.kept and guarded.runs_used == 2 + 8 and "pp512" in guarded.effects
    # without a calibration its own pairs must show the noise first
    alone = run(FakeBench(tg_effect=0.20))
    width = lambda v: v.objective.high - v.objective.low  # noqa: E731
    assert alone.kept and alone.runs_used >= guarded.runs_used and width(alone) > 1.5 * width(guarded)


def test_a_decisive_loss_stops_at_the_first_look():
    verdict = run(FakeBench(tg_effect=-0.10), priors=calibrated())
    assert (verdict.decision, verdict.stopped, verdict.runs_used) == ("discard", "clear", 6)
    assert "cannot reach" in verdict.reason


def test_no_effect_is_given_up_as_futile_long_before_the_cap():
    verdicts = [run(FakeBench(pp_effect=None, seed=s), priors=calibrated()) for s in range(30)]
    assert all(not v.kept for v in verdicts)
    assert sum(v.stopped == "futile" for v in verdicts) >= 20
    assert np.median([v.runs_used for v in verdicts]) <= 18  # of 62
    futile = next(v for v in verdicts if v.stopped == "futile")
    assert "futile" in futile.reason and not futile.reason.startswith("not shown")


def test_an_effect_at_the_minimum_gets_more_runs_than_a_clear_one_then_is_discarded():
    clear = run(FakeBench(tg_effect=0.10, pp_effect=None, seed=1), priors=calibrated())
    edge = run(FakeBench(tg_effect=0.01, pp_effect=None, seed=1), priors=calibrated())  # exactly the minimum: never provable
    assert edge.runs_used > clear.runs_used and edge.decision == "discard"
    assert edge.stopped in ("futile", "max runs")


def test_guards_are_measured_every_other_block_once_proven_and_every_block_while_open():
    bench = FakeBench(tg_effect=0.025, cv=0.01, seed=4)  # an effect that takes several blocks to decide
    verdict = run(bench, priors=calibrated(cv=0.01), max_runs=42)
    blocks = [bench.asked[i] for i in range(2, len(bench.asked), 4)]
    assert all(bench.asked[i:i + 4] == [blocks[(i - 2) // 4]] * 4 for i in range(2, len(bench.asked), 4))
    assert blocks[0] is None  # the first block measures everything
    assert ("tg",) in blocks and None in blocks[1:]
    assert not any(blocks[i] == blocks[i + 1] == ("tg",) for i in range(len(blocks) - 1))  # every other block
    assert verdict.effects["pp512"].n_pairs < verdict.effects["tg128"].n_pairs == verdict.pairs_used
    noisy_pp = FakeBench(tg_effect=0.015, cv=0.01, pp_cv=0.06, seed=3)
    run(noisy_pp, priors=calibrated(cv=0.01), max_runs=30)
    assert all(m is None for m in noisy_pp.asked[2:])  # pp's interval stays open: measured every block


def test_a_tg_win_with_a_pp_regression_is_discarded():
    verdict = run(FakeBench(tg_effect=0.10, pp_effect=-0.10))
    assert verdict.decision == "discard" and "pp512" in verdict.reason and "regresses" in verdict.reason


def test_a_clear_win_with_noisy_pp_is_kept_on_the_pp_estimate():
    verdict = run(FakeBench(tg_effect=0.10, pp_cv=0.08, seed=0), priors=calibrated())
    assert verdict.decision == "keep" and "by its estimate" in verdict.reason


def test_aa_is_rarely_kept_by_the_sequential_loop():
    # Peeking after every block inflates false keeps of a fixed-n interval; the confidence sequence must hold
    # them under 5%, with drift and occasional hit runs as on the shared machine, and with the calibration pooled.
    priors = calibrated()
    kept = sum(run(FakeBench(pp_effect=None, drift_per_run=0.002, hit_every=11, seed=s), priors=priors).kept
               for s in range(80))
    assert kept / 80 <= 0.05


def test_a_three_percent_gain_is_usually_found_within_the_run_cap():
    priors = calibrated()
    verdicts = [run(FakeBench(tg_effect=0.03, pp_effect=None, seed=s), priors=priors) for s in range(40)]
    assert sum(v.kept for v in verdicts) / 40 >= 0.8
    assert np.median([v.runs_used for v in verdicts if v.kept]) < 62  # often decided before the cap


def test_hit_runs_do_not_hide_a_win():
    verdict = run(FakeBench(tg_effect=0.05, hit_every=9, hit=0.6, seed=2), priors=calibrated())
    assert verdict.kept
    assert verdict.objective.estimate == pytest.approx(0.05, abs=0.015)


# --- limits -------------------------------------------------------------------------------------------------

def test_the_time_budget_is_respected_even_with_uneven_runs():
    bench = FakeBench(tg_effect=0.01, run_s=[10.0, 40.0, 25.0])
    never_futile = DecisionRule(futility=0.0, n_resamples=1000)  # an edge effect runs until the budget ends it
    verdict = run(bench, time_budget_s=400.0, max_runs=1000, rule=never_futile)
    assert verdict.stopped == "time budget" and verdict.decision == "discard"
    assert verdict.time_spent_s == bench.now - 1000.0 <= 400.0
    assert 400.0 - verdict.time_spent_s < 4 * 40.0  # it stopped because the next block would not fit
    assert "time budget" in verdict.reason


def test_the_run_cap_is_respected():
    bench = FakeBench(tg_effect=0.01)
    verdict = run(bench, max_runs=13)
    assert len(bench.calls) == verdict.runs_used == 10 and verdict.stopped == "max runs"


def test_a_budget_too_small_for_one_block_discards_with_no_pairs():
    verdict = run(FakeBench(tg_effect=0.5), time_budget_s=60.0)
    assert (verdict.decision, verdict.pairs_used, verdict.objective) == ("discard", 0, None)
    assert verdict.runs_used == 2 and "time budget" in verdict.reason


def test_a_broken_measurement_is_an_error_not_a_result():
    with pytest.raises(ValueError, match="candidate"):
        evaluate(lambda which, metrics=None: {"tg128": 0.0 if which == CANDIDATE else 70.0})
    with pytest.raises(ValueError):
        evaluate(lambda which, metrics=None: {})


# --- calibration --------------------------------------------------------------------------------------------

def test_calibration_measures_only_the_baseline_and_states_the_floor():
    bench = FakeBench(tg_effect=0.5, cv=0.015, seed=3)  # the candidate's +50% must never appear
    calibration = calibrate(bench.measure, EvaluatorConfig(rule=FAST), pairs=16, clock=bench.clock)
    assert set(bench.calls) == {BASELINE} and len(bench.calls) == 2 + 32
    tg = calibration.floors["tg128"]
    assert tg.bias.low <= 0 <= tg.bias.high
    assert 0.008 < tg.run_cv < 0.025 and tg.planned_pairs == 30
    assert 0.015 < tg.detectable_effect < 0.05
    assert calibration.floors["pp512"].pairs == 8 and tg.pairs == 16  # guards every other block
    assert calibration.priors()["tg128"].df == 15
    assert "smallest detectable effect" in calibration.describe()
    assert Calibration.from_dict({**calibration.to_dict(), "new_field": 1}) == calibration


# --- gates --------------------------------------------------------------------------------------------------

def passing_checks() -> Checks:
    return Checks([CheckResult("tests", True, "", 4.0), CheckResult("logits", True, "", 2.0)])


@pytest.fixture(scope="module")
def kept() -> Verdict:
    return run(FakeBench(tg_effect=0.10))


def test_gates_pass_a_correct_fast_candidate_through(kept):
    assert gates(passing_checks(), kept) is kept


def test_the_first_failed_check_decides_and_the_evidence_stays(kept):
    checks = Checks([CheckResult("tests", False, "tests failed: test-rope (1 of 4)."),
                     CheckResult("logits", False, "logits differ from the baseline's: mean KLD 5.00e-02 > 1e-05.")])
    verdict = gates(checks, kept)
    assert (verdict.decision, verdict.gate, verdict.reason) == ("discard", "tests", "tests failed: test-rope (1 of 4).")
    assert verdict.effects == kept.effects and verdict.runs_used == kept.runs_used  # evidence kept
    later = gates(Checks([CheckResult("tests", True), CheckResult("logits", False, "mean KLD too high")]), kept)
    assert (later.gate, later.reason) == ("logits", "mean KLD too high")
    unnamed = gates(Checks([CheckResult("fuzz", False)]), kept)
    assert (unnamed.gate, unnamed.reason) == ("fuzz", "the fuzz check failed.")


def test_a_slow_but_correct_candidate_is_discarded_by_performance():
    slow = run(FakeBench(tg_effect=-0.1))
    verdict = gates(passing_checks(), slow)
    assert (verdict.decision, verdict.gate) == ("discard", "performance") and verdict.reason == slow.reason


def test_missing_evidence_fails_its_gate(kept):
    assert gates(None, kept).reason == "the checks did not run."
    assert gates(Checks([]), kept).gate == "checks"  # no check at all is no evidence
    unmeasured = gates(passing_checks(), None)
    assert (unmeasured.decision, unmeasured.gate, unmeasured.stopped) == ("discard", "performance", "not measured")


# --- objectives other than llama.cpp's -----------------------------------------------------------------------

def seconds_bench(effect: float, *, seed: int = 0, guard_effect: float = 0.0):
    """A bench whose objective is a time (lower is better): the candidate takes (1 - effect) of the time."""
    rng = np.random.default_rng(seed)

    def measure(which: str, metrics=None) -> dict[str, float]:
        cand = which == CANDIDATE
        return {"seconds": 2.0 * (1 - effect * cand) * math.exp(rng.normal(0, 0.01)),
                "ratio": 3.0 * (1 + guard_effect * cand) * math.exp(rng.normal(0, 0.002)),
                "iterations": 1000.0 * (0.5 if cand else 1.0)}  # reported, not guarded
    return measure


def test_a_lower_is_better_objective_keeps_a_faster_candidate_and_reads_as_an_improvement():
    objective = Objective("seconds", direction="lower", guards={"ratio": Guard(0.01)})
    rule = DecisionRule.for_objective(objective, n_resamples=1000)
    faster = evaluate(seconds_bench(0.10), EvaluatorConfig(rule=rule))
    assert faster.decision == "keep", faster.reason
    assert 0.08 < faster.objective.estimate < 0.14  # 10% less time = 11% faster
    slower = evaluate(seconds_bench(-0.10), EvaluatorConfig(rule=rule))
    assert slower.decision == "discard" and slower.objective.estimate < 0
    # `iterations` halves in the candidate, yet it is no guard: only the named guards can veto.
    assert "iterations" not in faster.reason


def test_an_explicit_guard_vetoes_a_win_past_its_own_limit():
    objective = Objective("seconds", direction="lower", guards={"ratio": Guard(0.01)})
    rule = DecisionRule.for_objective(objective, n_resamples=1000)
    verdict = evaluate(seconds_bench(0.10, guard_effect=-0.05), EvaluatorConfig(rule=rule))
    assert verdict.decision == "discard" and "ratio" in verdict.reason and "-1.0%" in verdict.reason


# --- the record ---------------------------------------------------------------------------------------------

def test_verdict_round_trips_and_tolerates_unknown_fields(kept):
    data = kept.to_dict()
    assert data["schema_version"] == 1 and data["effects"]["tg128"]["n_pairs"] == kept.pairs_used
    assert Verdict.from_dict(data) == kept
    data["from_the_future"] = 1
    data["effects"]["tg128"]["also_new"] = "x"
    data["runs"][0]["cpu_temp"] = 60
    assert Verdict.from_dict(data) == kept
    unmeasured = gates(None, None)
    assert Verdict.from_dict(unmeasured.to_dict()) == unmeasured
