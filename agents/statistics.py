"""The evaluator's statistics: speedup with a confidence interval, the keep rule, the noise floor.

Pure functions over plain data. The unit of evidence is a *pair*: one baseline run and one candidate run taken
back to back (the evaluator interleaves them ABBA-style), each a dict of a value per metric, e.g. llama.cpp's
tokens/s per llama-bench test {"tg128": 70.1, "pp512": 290.3}, or a library's {"mb_per_s": 812.0}. Effects are
relative improvements: +0.03 means 3% more of a higher-is-better metric, or 3% less time of a lower-is-better
one (DecisionRule.lower_is_better).

Why these choices (numbers below are from the shared 2-core machine: tg 70.4 ± 1.0 then 68.0 ± 2.0 t/s):
- Per-pair log ratios, not two independent samples. The machine drifts by a few percent between runs; a pair's
  two runs share that drift, so log(candidate / baseline) cancels most of it. Logs make 2x and 0.5x symmetric and
  turn the ratio into a difference, so exp(location) - 1 is a geometric-mean speedup. A ratio of the two arms'
  means or medians would throw the pairing away.
- Hodges-Lehmann location (median of the pairwise Walsh averages), not the mean and not the median. One run hit
  by a neighbour's build is 10-30% slow; with 8 pairs the mean moves by up to ~4%, more than the effects we look
  for. The median ignores it but has 64% of the mean's efficiency on clean noise (≈1.6x the runs for the same
  interval, and runs are what cost time here) and a lumpy bootstrap distribution at small n. Hodges-Lehmann has
  95% efficiency on normal noise and tolerates up to 29% outlying pairs: the natural location for paired
  differences (it is the estimator behind the Wilcoxon signed-rank test). Its estimate is robust but a bootstrap
  of it is not (resamples that repeat a hit pair drag the interval's tail), so gross outliers are first set aside,
  at most 10% of the pairs, and counted in the verdict (see gross_outliers).
- Bootstrap over pairs (scipy.stats.bootstrap), percentile method *expanded* for small samples (Hesterberg 2015,
  "What teachers should know about the bootstrap"): plain bootstrap intervals are too narrow at n < 20 (they use
  the plug-in variance and normal tails); the expansion widens them as a Student-t interval would, so that the
  early looks of the adaptive loop do not keep noise. BCa is no better at these n and fails on ties.
- Drift inside a pair is cancelled by the ABBA order: half the pairs run baseline first, half candidate first,
  and decisions are only taken on complete ABBA blocks (the evaluator's job), so a linear drift adds as much as
  it removes. The bootstrap resamples pairs without stratifying by order: the leftover imbalance in a resample
  only widens the interval (a conservative error), and stratifying would leave 2 values per stratum at n = 4.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from ..records import metric_matches


Pair = tuple[Mapping[str, float], Mapping[str, float]]  # (baseline, candidate) value per metric, back to back

# Hodges-Lehmann's efficiency relative to the mean on normal noise (3/pi): its SE is sigma / sqrt(0.955 n).
HL_EFFICIENCY = 3 / math.pi


@dataclass
class Effect:
    """Relative speedup of candidate over baseline for one metric, with its confidence interval."""
    metric: str
    estimate: float  # +0.03 = 3% better
    low: float
    high: float
    n_pairs: int      # pairs behind the interval
    confidence: float
    n_outliers: int = 0  # pairs set aside as gross outliers, not counted in n_pairs

    def describe(self) -> str:
        aside = f", {self.n_outliers} outlier{'s' * (self.n_outliers > 1)} set aside" if self.n_outliers else ""
        return (f"{self.metric} {self.estimate:+.1%} [{self.low:+.1%}, {self.high:+.1%}] "
                f"({self.confidence:.0%} CI, {self.n_pairs} pairs{aside})")


@dataclass
class DecisionRule:
    """When a candidate is kept. Defaults (llama.cpp's objective): tg optimized, at least +1% with 95% confidence,
    every other test (pp) may not lose more than 3%. A target's Objective makes its own (for_objective)."""
    optimize: dict[str, float] = field(default_factory=lambda: {"tg": 1.0})
    """Weights per test name or prefix ("tg" matches "tg128"); several make a weighted geometric mean of ratios."""
    min_effect: float = 0.01
    """The interval's lower bound must exceed this. 1%: the reference's code-only 'gains' of 0.6-0.9% were noise,
    and a real fusion win on this bandwidth-bound workload is several percent."""
    max_regression: float = 0.03
    """Every test not optimized must stay above -3%: a tg win may not buy a hidden pp loss. Proof is sought first
    (a keep needs the guard's lower bound above -3%; an upper bound below it discards at once); if the run cap or
    budget ends with the guard still open, its estimate decides. Demanding proof to the end discarded 16% of
    clear +10% tg wins on the fitted noise model, for noise on pp alone. At 12 pairs and 1.5% run noise a true
    pp loss of 2% / 3% / 4% / 5% is kept 94% / 47% / 7% / 0% of the time (200 seeded trials). 3% rather than 2%:
    a guard that is proven early lets a clear win stop early; at 2% most would run to the cap."""
    min_pairs_to_keep: int = 6
    """A bootstrap interval cannot reach past the data's range, so with n pairs it covers at most 1 - 2^(1-n):
    87.5% at 4 pairs, 97% at 6. Discarding a clear loss at 4 pairs is safe (most candidates lose; that is where
    early stops save time); keeping needs 6."""
    confidence: float = 0.95
    n_resamples: int = 2000
    """2000 resamples put the Monte Carlo error of a 95% percentile bound at ~0.05 of a standard error."""
    seed: int = 0
    """Fixed, so that the same samples always give the same verdict (replays of a trace agree)."""
    lower_is_better: tuple[str, ...] = ()
    """Metrics (names or prefixes) where less is better (seconds, bytes): their effect is baseline / candidate - 1,
    so that every effect reads the same way, +3% meaning 3% better."""
    guards: dict[str, float] | None = None
    """Metric (name or prefix) -> largest tolerated regression. None: every measured metric that is not optimized
    is guarded at `max_regression`; a dict: only those, each at its own limit (other metrics are reported)."""

    @classmethod
    def for_objective(cls, objective, **kw) -> "DecisionRule":
        """The rule for a target's Objective (readfirst.records.Objective)."""
        guards = None if objective.guards is None else {m: g.max_regression for m, g in objective.guards.items()}
        return cls(optimize={objective.metric: 1.0}, min_effect=objective.min_effect,
                   max_regression=objective.default_regression, lower_is_better=objective.lower_is_better(),
                   guards=guards, **kw)

    def lower(self, test: str) -> bool:
        return any(metric_matches(test, k) for k in self.lower_is_better)

    def guard_limit(self, test: str) -> float | None:
        """The regression limit of a measured test that is not optimized; None when it is not guarded."""
        if self.guards is None:
            return self.max_regression
        key = next((g for g in self.guards if test == g), None) or next((g for g in self.guards
                                                                         if metric_matches(test, g)), None)
        return None if key is None else self.guards[key]


@dataclass
class PerfDecision:
    outcome: str  # "keep" | "discard" | "undecided"
    reason: str
    objective: Effect
    effects: dict[str, Effect]


@dataclass
class NoiseFloor:
    """What A/A pairs (the baseline against itself) say about one metric's noise."""
    metric: str
    bias: Effect            # should contain 0; if not, something favours one position of the pair
    pair_sd: float          # robust SD of a pair's log ratio
    run_cv: float           # the per-run noise it implies, pair_sd / sqrt(2)
    planned_pairs: int
    detectable_effect: float  # true speedup kept with 80% probability after planned_pairs pairs


def hodges_lehmann(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Median of the Walsh averages (x_i + x_j) / 2, i <= j; vectorized over the other axes for the bootstrap."""
    x = np.moveaxis(np.asarray(x, dtype=float), axis, -1)
    i, j = np.triu_indices(x.shape[-1])
    return np.median((x[..., i] + x[..., j]) / 2, axis=-1)


def expanded_confidence(confidence: float, n: int) -> float:
    """The percentile level that makes a bootstrap interval as wide as a t interval on n values (Hesterberg)."""
    alpha = 1 - confidence
    z = math.sqrt(n / (n - 1)) * stats.t.ppf(1 - alpha / 2, df=n - 1)
    return min(1 - 2 * stats.norm.sf(z), 1 - 1e-9)


def log_ratios(pairs: Sequence[Pair], weights: Mapping[str, float], lower: Sequence[str] = ()) -> np.ndarray:
    """Per pair, the weighted sum of log(candidate / baseline) over the weighted tests (weights sum to 1); for a
    test where lower is better (`lower`: names or prefixes), log(baseline / candidate)."""
    out = np.zeros(len(pairs))
    for test, weight in weights.items():
        base = np.array([b[test] for b, _ in pairs], dtype=float)
        cand = np.array([c[test] for _, c in pairs], dtype=float)
        if np.any(base <= 0) or np.any(cand <= 0) or not (np.all(np.isfinite(base)) and np.all(np.isfinite(cand))):
            raise ValueError(f"{test}: values must be positive and finite")
        out += weight * (-1 if any(metric_matches(test, k) for k in lower) else 1) * np.log(cand / base)
    return out


def gross_outliers(d: np.ndarray, *, k: float = 6.0, max_fraction: float = 0.1) -> np.ndarray:
    """Mask of the pairs that lie more than k robust SDs from the median, at most ceil(max_fraction * n) of them.

    Why screen at all when Hodges-Lehmann is robust: its *estimate* is, but the bootstrap is not. A resample that
    draws one hit pair three or four times out of ten drags the Walsh-average median with it, and the interval's
    tail is made of exactly such resamples: one pair 40% slow among ten gave [-18%, +4%] around a true +3%.
    k = 6 robust SDs, from 8 pairs on: the MAD of a few values is unsteady, so on clean normal noise this still
    sets a pair aside in ~2.5% of 8-pair samples (5% at k = 5; 6% at 6 pairs), and that costs interval coverage;
    a run hit by a neighbour's build (15-40% slow against ~2% pair noise) lies 7-20 SDs out. Smaller hits stay
    and are Hodges-Lehmann's job. The cap keeps a candidate that is *often* slow (a bimodal patch) from having
    its slow runs explained away: past 10% of the pairs, slowness is behaviour, not accident.
    """
    d = np.asarray(d, dtype=float)
    mask = np.zeros(len(d), dtype=bool)
    if len(d) < 8:
        return mask
    centre = np.median(d)
    # Floor the scale at 0.1%, far below any real machine's noise, so that tied fakes do not divide by zero.
    scale = max(float(stats.median_abs_deviation(d, scale="normal")), 1e-3)
    distance = np.abs(d - centre) / scale
    worst_first = np.argsort(-distance)[:math.ceil(max_fraction * len(d))]
    mask[worst_first[distance[worst_first] > k]] = True
    return mask


def speedup(ratios: np.ndarray, *, metric: str, confidence: float = 0.95, n_resamples: int = 2000,
            seed: int = 0, screen_outliers: bool = True) -> Effect:
    """Hodges-Lehmann speedup of paired log ratios with an expanded-percentile bootstrap interval."""
    d = np.asarray(ratios, dtype=float)
    outliers = gross_outliers(d) if screen_outliers else np.zeros(len(d), dtype=bool)
    d = d[~outliers]
    n = len(d)
    if n == 0:
        return Effect(metric, math.nan, -math.inf, math.inf, 0, confidence, int(outliers.sum()))
    estimate = float(hodges_lehmann(d))
    if n == 1:  # one pair says nothing about noise
        low, high = -math.inf, math.inf
    elif np.ptp(d) == 0:  # identical ratios (a deterministic fake): no spread to resample
        low = high = estimate
    else:
        result = stats.bootstrap((d,), hodges_lehmann, n_resamples=n_resamples, method="percentile",
                                 confidence_level=expanded_confidence(confidence, n), vectorized=True,
                                 rng=np.random.default_rng(seed))
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return Effect(metric, math.expm1(estimate), math.expm1(low), math.expm1(high), n, confidence,
                  int(outliers.sum()))


def resolve_weights(optimize: Mapping[str, float], tests: Sequence[str]) -> dict[str, float]:
    """Map {"tg": 1} onto the measured tests ({"tg128": 1.0}); a key shared by several tests splits its weight."""
    weights: dict[str, float] = {}
    for key, weight in optimize.items():
        matched = [t for t in tests if t == key] or [t for t in tests if t.startswith(key)]
        if not matched:
            raise ValueError(f"the rule optimizes {key!r}, but the benchmark measured only {sorted(tests)}")
        if weight < 0:
            raise ValueError(f"weight of {key!r} is negative")
        for test in matched:
            weights[test] = weights.get(test, 0.0) + weight / len(matched)
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("the rule's weights sum to zero")
    return {t: w / total for t, w in weights.items() if w > 0}


def measured_tests(pairs: Sequence[Pair]) -> list[str]:
    """Tests present in every run of every pair."""
    common: set[str] | None = None
    for base, cand in pairs:
        keys = set(base) & set(cand)
        common = keys if common is None else common & keys
    return sorted(common or ())


def decide(pairs: Sequence[Pair], rule: DecisionRule | None = None, *, final: bool = False) -> PerfDecision:
    """Keep, discard or undecided (more runs would help), with one sentence saying why.

    Discard as soon as the objective's interval lies wholly below the minimum effect (it cannot be a worthwhile
    win) or a guarded test's interval lies wholly below -max_regression (a proven regression). Keep when the
    objective's lower bound clears the minimum and every guarded test's lower bound clears -max_regression.
    `final` (no more runs to come) resolves what is still open: the objective must still be proven, but a guard
    still open is judged by its estimate (see DecisionRule.max_regression).
    """
    rule = rule or DecisionRule()
    tests = measured_tests(pairs)
    weights = resolve_weights(rule.optimize, tests)
    kw = dict(confidence=rule.confidence, n_resamples=rule.n_resamples, seed=rule.seed)
    lower = rule.lower_is_better
    effects = {t: speedup(log_ratios(pairs, {t: 1.0}, lower), metric=t, **kw) for t in tests}  # type: ignore[arg-type]
    if len(weights) == 1:
        objective = effects[next(iter(weights))]
    else:
        name = "objective(" + " + ".join(f"{w:.2g}*{t}" for t, w in weights.items()) + ")"
        objective = speedup(log_ratios(pairs, weights, lower), metric=name, **kw)  # type: ignore[arg-type]
    # (effect, floor) of every guarded test: a guard may not lose more than its limit
    guarded = [(effects[t], -limit) for t in tests if t not in weights
               and (limit := rule.guard_limit(t)) is not None]

    if objective.high < rule.min_effect:
        return PerfDecision("discard", f"{objective.describe()} cannot reach the {rule.min_effect:+.1%} minimum.",
                            objective, effects)
    regressed = [(e, floor) for e, floor in guarded if e.high < floor]
    if regressed:
        e, floor = regressed[0]
        return PerfDecision("discard", f"{e.describe()} regresses past the {floor:.1%} limit.", objective, effects)
    unproven = [(e, floor) for e, floor in guarded if e.low <= floor]
    if objective.low > rule.min_effect and not unproven and objective.n_pairs >= rule.min_pairs_to_keep:
        guards = "".join(f"; {e.describe()} within the {floor:.1%} limit" for e, floor in guarded)
        return PerfDecision("keep", f"{objective.describe()} clears the {rule.min_effect:+.1%} minimum{guards}.",
                            objective, effects)
    proven_gain = objective.low > rule.min_effect and objective.n_pairs >= rule.min_pairs_to_keep
    if final and proven_gain and all(e.estimate >= floor for e, floor in unproven):
        guards = "".join(f"; {e.describe()} within the {floor:.1%} limit"
                         + (" by its estimate (its interval still reaches past it)" if (e, floor) in unproven
                            else "") for e, floor in guarded)
        return PerfDecision("keep", f"{objective.describe()} clears the {rule.min_effect:+.1%} minimum{guards}.",
                            objective, effects)
    if objective.low <= rule.min_effect:
        reason = f"{objective.describe()} does not yet clear the {rule.min_effect:+.1%} minimum."
    elif not unproven:
        reason = f"{objective.describe()} looks clear, but keeping needs {rule.min_pairs_to_keep} pairs."
    else:
        e, floor = unproven[0]
        reason = f"{e.describe()} cannot yet rule out a regression past {floor:.1%}."
    return PerfDecision("discard" if final else "undecided", reason, objective, effects)


def noise_floor(aa_pairs: Sequence[Pair], rule: DecisionRule | None = None,
                planned_pairs: int = 12, power: float = 0.8) -> dict[str, NoiseFloor]:
    """From A/A pairs, per test: the noise, any bias, and the smallest effect the rule would detect.

    The pair SD is the plain SD after dropping pairs beyond 3.5 MADs of the median: as efficient as the SD on
    clean noise (MAD alone needs ~2.7x the pairs for the same precision, and its error made the predicted floor
    ~10% optimistic with 40 pairs), yet one hit run does not inflate the floor. A true effect delta is kept with
    probability `power` when delta - c * se > min_effect, with c the expanded interval's multiplier and
    se = pair_sd / sqrt(0.955 n): delta = min_effect + (c + t_power) * se, in log space. It covers the objective
    alone; guarded tests cost a little more power (see DecisionRule.max_regression).
    """
    rule = rule or DecisionRule()
    floors = {}
    n = planned_pairs
    c = math.sqrt(n / (n - 1)) * stats.t.ppf(1 - (1 - rule.confidence) / 2, df=n - 1)
    for test in measured_tests(aa_pairs):
        d = log_ratios(aa_pairs, {test: 1.0}, rule.lower_is_better)
        bias = speedup(d, metric=test, confidence=rule.confidence, n_resamples=rule.n_resamples, seed=rule.seed)
        pair_sd = _outlier_resistant_sd(d)
        se = pair_sd / math.sqrt(HL_EFFICIENCY * n)
        detectable = math.expm1(math.log1p(rule.min_effect) + (c + stats.t.ppf(power, df=n - 1)) * se)
        floors[test] = NoiseFloor(test, bias, pair_sd, pair_sd / math.sqrt(2), n, detectable)
    return floors


def _outlier_resistant_sd(d: np.ndarray) -> float:
    if len(d) < 2:
        return math.nan
    mad = stats.median_abs_deviation(d, scale="normal")
    kept = d[np.abs(d - np.median(d)) <= 3.5 * mad] if mad > 0 else d
    return float(np.std(kept, ddof=1)) if len(kept) > 1 else 0.0
