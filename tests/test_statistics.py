"""The evaluator's statistics on synthetic samples with known answers. Seeded; a few seconds in all."""

from __future__ import annotations

import math

import numpy as np
import pytest

from readfirst.agents.statistics import (DecisionRule, Prior, decide, expanded_confidence, gross_outliers, hodges_lehmann,
                                         log_ratios, noise_floor, resolve_weights, speedup)
from readfirst.records import KLDResult
from readfirst.targets.llama_cpp.logits import KLDThresholds, kld_failure


def make_pairs(n: int, *, tg_effect: float = 0.0, pp_effect: float | None = 0.0, cv: float = 0.015,
               seed: int = 0) -> list[tuple[dict[str, float], dict[str, float]]]:
    """n back-to-back (baseline, candidate) runs with log-normal run noise of `cv` and known true effects;
    pp_effect=None measures tg alone (faster, for the many-trial tests of the objective)."""
    rng = np.random.default_rng(seed)
    noise = np.exp(rng.normal(0, cv, size=(n, 4)))
    pairs = []
    for e in noise:
        base, cand = {"tg128": 70.0 * e[0]}, {"tg128": 70.0 * (1 + tg_effect) * e[2]}
        if pp_effect is not None:
            base["pp512"], cand["pp512"] = 290.0 * e[1], 290.0 * (1 + pp_effect) * e[3]
        pairs.append((base, cand))
    return pairs


FAST = DecisionRule(n_resamples=1000)  # for the many-trial tests; the bounds move by ~0.1 SE at most


def keep_rate(trials: int, n: int, **kwargs) -> float:
    return sum(decide(make_pairs(n, seed=s, **kwargs), FAST).outcome == "keep" for s in range(trials)) / trials


# --- estimator and interval ---------------------------------------------------------------------------------

def test_hodges_lehmann_ignores_one_outlier_that_moves_the_mean():
    # Walsh averages of [0, 0, 0, 10]: six 0s, three 5s, one 10 -> median 0; the mean is 2.5.
    assert hodges_lehmann(np.array([0.0, 0.0, 0.0, 10.0])) == 0.0
    assert hodges_lehmann(np.array([1.0, 2.0, 3.0])) == 2.0
    # vectorized over leading axes, as the bootstrap calls it
    assert hodges_lehmann(np.array([[0.0, 0.0, 0.0, 10.0], [1.0, 1.0, 1.0, 1.0]])).tolist() == [0.0, 1.0]


def test_expanded_confidence_widens_small_samples_and_vanishes_for_large():
    assert expanded_confidence(0.95, 4) > expanded_confidence(0.95, 8) > expanded_confidence(0.95, 30) > 0.95
    assert expanded_confidence(0.95, 100_000) == pytest.approx(0.95, abs=1e-3)
    assert expanded_confidence(0.95, 2) > 0.9999


def test_interval_covers_zero_in_aa_even_with_few_pairs():
    # The reason for the expansion: plain percentile intervals under-cover at n = 6..12; at 4 (a calibration's
    # guard pairs) even the expanded bootstrap covered 87%, and a t interval takes over.
    for n in (4, 6, 12):
        covered = 0
        for seed in range(150):
            e = speedup(log_ratios(make_pairs(n, seed=seed, pp_effect=None), {"tg128": 1.0}), metric="tg128",
                        seed=seed, n_resamples=1000)
            covered += e.low <= 0 <= e.high
        assert covered / 150 >= 0.92, n


def test_speedup_is_deterministic_and_handles_degenerate_samples():
    d = log_ratios(make_pairs(8, tg_effect=0.05), {"tg128": 1.0})
    assert speedup(d, metric="tg") == speedup(d, metric="tg")
    constant = speedup(np.full(6, math.log(1.05)), metric="tg")
    assert (constant.low, constant.estimate, constant.high) == pytest.approx((0.05, 0.05, 0.05))
    one = speedup(np.array([0.1]), metric="tg")
    assert one.low == -1.0 and one.high == math.inf  # anything from 0 t/s to infinitely fast


def test_log_ratios_reject_non_positive_or_nan_speeds():
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="tg128"):
            log_ratios([({"tg128": 70.0}, {"tg128": bad})], {"tg128": 1.0})


# --- the decision rule --------------------------------------------------------------------------------------

def test_clear_win_is_kept_with_the_true_effect_inside_the_interval():
    d = decide(make_pairs(8, tg_effect=0.10))
    assert d.outcome == "keep"
    assert d.objective.metric == "tg128"
    assert d.objective.low > 0.01 and d.objective.low < 0.10 < d.objective.high
    assert d.objective.estimate == pytest.approx(0.10, abs=0.02)
    assert "clears the +1.0% minimum" in d.reason and "pp512" in d.reason


def test_clear_loss_is_discarded():
    d = decide(make_pairs(8, tg_effect=-0.10))
    assert d.outcome == "discard"
    assert d.objective.high < 0
    assert "cannot reach" in d.reason


def test_gain_below_the_minimum_effect_is_discarded_even_when_certain():
    # +0.5% measured very precisely is real but not worth keeping: the reference's 0.6-0.9% "wins" were noise.
    d = decide(make_pairs(12, tg_effect=0.005, cv=0.001))
    assert d.objective.low > 0
    assert d.outcome == "discard"
    assert decide(make_pairs(12, tg_effect=0.005, cv=0.001), DecisionRule(min_effect=0.002)).outcome == "keep"


def test_aa_noise_is_rarely_kept():
    assert keep_rate(200, 8, pp_effect=None) <= 0.05
    assert keep_rate(100, 12, pp_effect=None, cv=0.03) <= 0.05


def test_three_percent_effect_is_detected_at_realistic_noise_by_the_run_caps_30_pairs():
    assert keep_rate(100, 30, tg_effect=0.03, cv=0.015, pp_effect=None) >= 0.8
    assert keep_rate(100, 30, tg_effect=0.03, cv=0.015) >= 0.8  # with pp guarded: the guard costs little power
    assert keep_rate(30, 30, tg_effect=-0.03, cv=0.015) == 0.0


def test_heavy_outliers_do_not_fake_or_hide_an_effect():
    clean = make_pairs(16, tg_effect=0.03, seed=3)
    pairs = make_pairs(16, tg_effect=0.03, seed=3)
    pairs[2][1]["tg128"] *= 0.6   # a neighbour's build hit two candidate runs
    pairs[7][1]["tg128"] *= 0.7
    naive = float(np.expm1(np.mean(log_ratios(pairs, {"tg128": 1.0}))))
    assert abs(naive - 0.03) > 0.02  # the premise: a mean would be fooled
    d = decide(pairs)
    assert d.objective.n_outliers == 2 and d.objective.n_pairs == 14
    assert d.objective.estimate == pytest.approx(decide(clean).objective.estimate, abs=0.005)
    assert d.outcome == decide(clean).outcome == "keep"
    assert "2 outliers set aside" in d.reason


def test_a_slow_baseline_run_does_not_make_a_no_op_look_like_a_win():
    aa = make_pairs(10, seed=4)
    aa[5][0]["tg128"] *= 0.6
    assert np.expm1(np.mean(log_ratios(aa, {"tg128": 1.0}))) > 0.04  # a mean would see +5%
    assert decide(aa).outcome != "keep"


def test_a_candidate_that_is_often_slow_is_not_explained_away():
    pairs = make_pairs(16, tg_effect=0.03, seed=3)
    for i in (1, 5, 9, 13):  # a bimodal patch: a quarter of its runs 30% slow
        pairs[i][1]["tg128"] *= 0.7
    d = decide(pairs)
    assert d.objective.n_outliers == 2  # the cap: 10% of the pairs
    assert d.outcome != "keep"


def test_gross_outliers_needs_eight_pairs_and_a_wide_margin():
    d = np.array([0.01, -0.01, 0.02, 0.0, -0.02, 0.01, 0.0, -0.5])
    assert gross_outliers(d).tolist() == [False] * 7 + [True]
    assert not gross_outliers(d[1:]).any()              # 7 pairs: too few to judge
    assert not gross_outliers(np.array([0.01, -0.01, 0.02, 0.0, -0.02, 0.01, 0.0, -0.06])).any()  # 4 SDs: stays


def test_regression_on_the_other_metric_discards_a_tg_win():
    d = decide(make_pairs(8, tg_effect=0.10, pp_effect=-0.08))
    assert d.outcome == "discard"
    assert "pp512" in d.reason and "regresses past the -3.0% limit" in d.reason
    # a small pp loss inside the limit does not block the win
    assert decide(make_pairs(8, tg_effect=0.10, pp_effect=-0.005, cv=0.005)).outcome == "keep"


def test_unproven_regression_leaves_the_verdict_open():
    # pp -3% at 1.5% noise: neither clearly inside nor clearly past the limit after 8 pairs
    d = decide(make_pairs(8, tg_effect=0.10, pp_effect=-0.03, seed=1))
    assert d.outcome == "undecided"
    assert "pp512" in d.reason and "cannot yet rule out" in d.reason


CALIBRATED = {"tg128": Prior(0.015 * math.sqrt(2), 7), "pp512": Prior(0.015 * math.sqrt(2), 3)}  # 8 A/A pairs


def test_a_decisive_effect_is_decided_on_two_pairs_when_the_calibration_knows_the_noise():
    win = make_pairs(2, tg_effect=0.20)
    alone = decide(win)
    assert alone.outcome == "undecided" and alone.objective.high - alone.objective.low > 0.5  # 1 df of its own
    tg_only = make_pairs(2, tg_effect=0.20, pp_effect=None)
    calibrated = decide(tg_only, priors=CALIBRATED)
    assert calibrated.outcome == "keep", calibrated.reason
    assert "7 df of A/A calibration" in calibrated.objective.noise
    # with pp guarded, its 2 pairs decide too: kept when pp's interval stays within twice its limit, and one
    # more block first when pp's calibrated noise lets it reach further
    quiet_pp = decide(win, priors={**CALIBRATED, "pp512": Prior(0.010 * math.sqrt(2), 3)})
    assert quiet_pp.outcome == "keep" and quiet_pp.effects["pp512"].low > -0.06, quiet_pp.reason
    noisy_pp = decide(win, priors={**CALIBRATED, "pp512": Prior(0.04, 3)})
    assert noisy_pp.outcome == "undecided" and noisy_pp.effects["pp512"].low < -0.06, noisy_pp.reason
    assert decide(make_pairs(4, tg_effect=0.20), priors=CALIBRATED).outcome == "keep"
    assert decide(make_pairs(2, tg_effect=-0.10), priors=CALIBRATED).outcome == "discard"
    # a candidate far noisier than the calibration widens its own interval as its pairs come in
    noisy = make_pairs(8, tg_effect=0.04, cv=0.08, seed=2)
    assert decide(noisy, priors=CALIBRATED).objective.high - decide(noisy, priors=CALIBRATED).objective.low > 0.08


def test_the_interval_holds_at_every_look_so_peeking_after_every_pair_adds_few_false_keeps():
    # A fixed-n interval peeked at after every pair would keep A/A noise far more often than 5%.
    kept = 0
    for s in range(200):
        pairs = make_pairs(30, pp_effect=None, seed=s)
        kept += any(decide(pairs[:n], FAST, priors=CALIBRATED).outcome == "keep" for n in range(2, 31, 2))
    assert kept / 200 <= 0.05


def with_pp_estimate(pairs, estimate: float):
    """The same pairs with the candidate's pp rescaled so that the mean pp log ratio is log1p(estimate)."""
    d = np.mean([math.log(c["pp512"] / b["pp512"]) for b, c in pairs])
    for _, cand in pairs:
        cand["pp512"] *= math.exp(math.log1p(estimate) - d)
    return pairs


def noisy_pp(estimate: float, noise: float = 0.02):
    rng = np.random.default_rng(101)
    pairs = make_pairs(8, tg_effect=0.10, seed=1)
    for _, cand in pairs:
        cand["pp512"] *= math.exp(rng.normal(0, noise))  # pp's interval reaches past -3% whatever its estimate
    return with_pp_estimate(pairs, estimate)


def test_an_open_guard_is_judged_by_its_estimate_within_half_its_limit_early_and_the_whole_at_the_cap():
    clean = decide(noisy_pp(-0.005))
    assert clean.effects["pp512"].low < -0.03 and clean.open_guards == ["pp512"]
    assert clean.outcome == "keep" and "by its estimate" in clean.reason
    # the same clean estimate with an interval reaching past twice the limit (-6%): measure on
    wide = decide(noisy_pp(-0.005, noise=0.05))
    assert wide.effects["pp512"].low < -0.06 and wide.outcome == "undecided"
    doubtful = noisy_pp(-0.022)  # past half the limit: measure on; at the cap, within the limit: keep
    assert decide(doubtful).outcome == "undecided" and "cannot yet rule out" in decide(doubtful).reason
    assert decide(doubtful, final=True).outcome == "keep"
    lossy = noisy_pp(-0.04)
    assert decide(lossy).outcome == "undecided"
    final = decide(lossy, final=True)
    assert final.outcome == "discard" and "past the -3.0% limit by its estimate" in final.reason
    # the objective is never judged by its estimate: an unproven gain is a discard
    unproven = decide(make_pairs(8, tg_effect=0.01, seed=1), final=True)
    assert unproven.outcome == "discard" and "does not yet clear" in unproven.reason


def test_a_guard_measured_on_fewer_pairs_is_judged_on_the_pairs_that_have_it():
    pairs = make_pairs(8, tg_effect=0.10, pp_effect=-0.10)
    for _, cand in pairs[2:4] + pairs[6:8]:
        cand.pop("pp512")  # objective-only blocks
    d = decide(pairs)
    assert (d.objective.n_pairs, d.effects["pp512"].n_pairs) == (8, 4)
    assert d.outcome == "discard" and "pp512" in d.reason


def test_futility_gives_up_on_an_effect_the_run_cap_cannot_prove():
    flat = make_pairs(6, tg_effect=-0.005, seed=5)
    assert decide(flat).outcome == "undecided"  # no horizon: no futility
    futile = decide(flat, horizon_pairs=30, priors=CALIBRATED)
    assert futile.outcome == "discard" and futile.futile and "futile" in futile.reason
    # over many draws: a flat candidate is mostly given up after 6 pairs, a +3% one (which the cap can prove)
    # almost never
    given_up = {effect: sum(decide(make_pairs(6, tg_effect=effect, seed=s), horizon_pairs=30,
                                   priors=CALIBRATED).futile for s in range(100)) for effect in (-0.005, 0.03)}
    assert given_up[-0.005] >= 80 and given_up[0.03] <= 5, given_up


def test_pp_can_be_the_optimized_metric_with_tg_guarded():
    rule = DecisionRule(optimize={"pp": 1.0})
    d = decide(make_pairs(8, pp_effect=0.10), rule)
    assert d.outcome == "keep" and d.objective.metric == "pp512"
    assert decide(make_pairs(8, pp_effect=0.10, tg_effect=-0.08), rule).outcome == "discard"


def test_weighted_objective_is_a_geometric_mean_of_the_ratios():
    rule = DecisionRule(optimize={"tg": 0.5, "pp": 0.5})
    d = decide(make_pairs(10, tg_effect=0.08, pp_effect=-0.02, cv=0.005), rule)
    expected = math.sqrt(1.08 * 0.98) - 1  # +2.9%
    assert d.objective.estimate == pytest.approx(expected, abs=0.005)
    assert "tg128" in d.objective.metric and "pp512" in d.objective.metric
    assert d.outcome == "keep"  # pp is part of the objective, not guarded: -2% there is the trade the user chose


def test_resolve_weights_matches_prefixes_and_names_the_measured_tests_on_error():
    assert resolve_weights({"tg": 1}, ["pp512", "tg128"]) == {"tg128": 1.0}
    assert resolve_weights({"tg": 1, "pp512": 3}, ["pp512", "tg128"]) == {"tg128": 0.25, "pp512": 0.75}
    with pytest.raises(ValueError, match="pp512"):
        resolve_weights({"tg": 1}, ["pp512"])


# --- noise calibration --------------------------------------------------------------------------------------

def test_noise_floor_recovers_the_run_noise_and_flags_no_bias():
    floors = noise_floor(make_pairs(24, cv=0.015, seed=5))
    tg = floors["tg128"]
    assert 0.010 < tg.run_cv < 0.020
    assert tg.bias.low <= 0 <= tg.bias.high
    noisier = noise_floor(make_pairs(24, cv=0.03, seed=5))["tg128"]
    assert noisier.detectable_effect > tg.detectable_effect > 0.01
    assert noise_floor(make_pairs(24, cv=0.015, seed=5), planned_pairs=40)["tg128"].detectable_effect \
        < tg.detectable_effect


@pytest.mark.parametrize("n", [4, 8, 16])
def test_the_calibrations_variance_is_unbiased_on_clean_noise_and_still_resists_a_hit_run(n):
    from readfirst.agents.statistics import _outlier_resistant_sd
    rng = np.random.default_rng(n)
    samples = rng.normal(scale=0.02, size=(4000, n))
    variance = np.mean([_outlier_resistant_sd(d) ** 2 for d in samples]) / 0.02 ** 2
    untrimmed = np.mean(samples.var(axis=1, ddof=1)) / 0.02 ** 2
    assert abs(variance - 1) < 0.05 and abs(untrimmed - 1) < 0.05  # the trim alone read 5-17% low here
    hit = samples[:200].copy()
    hit[:, 0] -= 0.30  # one run 30% slow: a neighbour's build
    assert np.median([_outlier_resistant_sd(d) for d in hit]) < 0.03


def test_noise_floor_sees_a_bias_between_the_arms():
    # e.g. the second binary always runs from a warm cache: A/A should not show +4%
    assert noise_floor(make_pairs(12, tg_effect=0.04, seed=6))["tg128"].bias.low > 0


def test_the_predicted_detectable_effect_is_kept_about_80_percent_of_the_time():
    floor = noise_floor(make_pairs(40, cv=0.015, seed=7), planned_pairs=30)["tg128"]
    assert floor.prior() == Prior(floor.pair_sd, 39)
    rate = sum(decide(make_pairs(30, tg_effect=floor.detectable_effect, pp_effect=None, seed=s), FAST,
                      priors={"tg128": floor.prior()}).outcome == "keep" for s in range(100)) / 100
    assert 0.65 <= rate <= 0.95, (floor.detectable_effect, rate)


# --- the KLD gate -------------------------------------------------------------------------------------------

def kld(**overrides) -> KLDResult:
    # The harmless reference: flash attention on vs off gave max KLD 2e-6.
    values = dict(mean_kld=1e-7, max_kld=2e-6, p999_kld=8e-7, same_top_p=99.9, ok=True)
    return KLDResult(**{**values, **overrides})


def test_kld_gate_passes_rounding_level_differences_with_margin():
    assert kld_failure(kld()) is None
    assert kld_failure(kld(mean_kld=5e-6, p999_kld=5e-5, max_kld=5e-4, same_top_p=99.3)) is None


@pytest.mark.parametrize("overrides, needle", [
    (dict(mean_kld=0.05, p999_kld=0.9, max_kld=3.0, same_top_p=80.0), "mean KLD"),  # wrong scale
    (dict(mean_kld=2e-6, p999_kld=5e-3, max_kld=2e-2), "99.9th percentile"),          # rare path broken
    (dict(max_kld=0.5), "max KLD"),
    (dict(same_top_p=97.0), "same top token in 97.00%"),
    (dict(mean_kld=float("nan")), "mean KLD nan"),
    (dict(ok=False, log_tail="llama-perplexity: error"), "did not complete"),
])
def test_kld_gate_rejects_broken_logits_with_the_failing_figure(overrides, needle):
    reason = kld_failure(kld(**overrides))
    assert reason is not None and needle in reason


def test_kld_thresholds_are_configurable():
    assert kld_failure(kld(max_kld=5e-3)) is not None
    assert kld_failure(kld(max_kld=5e-3), KLDThresholds(max_max=1e-2)) is None


def test_lower_is_better_flips_the_ratio_so_less_time_is_a_gain():
    pairs = [({"seconds": 2.0}, {"seconds": 1.8})] * 3
    assert log_ratios(pairs, {"seconds": 1.0}, ["seconds"])[0] == pytest.approx(math.log(2.0 / 1.8))
    assert log_ratios(pairs, {"seconds": 1.0})[0] == pytest.approx(math.log(1.8 / 2.0))


def test_explicit_guards_guard_only_what_they_name():
    rule = DecisionRule(optimize={"mb_per_s": 1.0}, guards={"ratio": 0.01})
    assert rule.guard_limit("ratio") == 0.01 and rule.guard_limit("iterations") is None
    assert DecisionRule().guard_limit("pp512") == 0.03  # llama.cpp's default: every other test at 3%
