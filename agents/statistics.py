"""The evaluator's statistics: speedup with an interval, the keep rule, the noise floor.

Pure functions over plain data. The unit of evidence is a *pair*: one baseline run and one candidate run taken
back to back (the evaluator interleaves them ABBA-style), each a dict of a value per metric, e.g. llama.cpp's
tokens/s per llama-bench test {"tg128": 70.1, "pp512": 290.3}, or a library's {"mb_per_s": 812.0}. A pair may
lack a metric the evaluator did not ask for that block (a guard measured every other block): each metric is
judged on the pairs that have it. Effects are relative improvements: +0.03 means 3% more of a higher-is-better
metric, or 3% less time of a lower-is-better one (DecisionRule.lower_is_better).

Why these choices (numbers below are from the shared 2-core machine: tg 70.4 ± 1.0 then 68.0 ± 2.0 t/s):
- Per-pair log ratios, not two independent samples. The machine drifts by a few percent between runs; a pair's
  two runs share that drift, so log(candidate / baseline) cancels most of it. Logs make 2x and 0.5x symmetric and
  turn the ratio into a difference, so exp(location) - 1 is a geometric-mean speedup.
- The verdict's interval is a confidence *sequence* (Robbins' normal mixture): with probability 1 - alpha it
  holds at every look at once, not at one look fixed in advance. So the evaluator may look after every ABBA
  block, from the first, and stop the moment the interval clears the threshold or cannot reach it, without the
  repeated looks adding false keeps. A fixed-n interval looked at after every block would keep noise far more
  often than its 5% (and needed a minimum of 6 pairs to keep anything); the price of validity at every look is a
  wider interval at any one n (its half-width at mixture_pairs 2 is 1.0x a Student-t interval's at 4 pairs and
  1.35x at 10; 1.7x and 1.6x a known-SD normal interval's), which early stops on clear effects repay.
- Its scale is the pair SD pooled with the run's A/A calibration (a Prior: the baseline against itself, same
  machine, same shapes), weighted by degrees of freedom, then widened by t/z at the pooled df: an effect that
  is decisive can be decided on 2 pairs when the calibration says the noise is small, while a candidate noisier
  than the baseline widens its own interval as its pairs accumulate. The mixture theory assumes a known SD; with
  an estimated one the guarantee is approximate, which is why the A/A false-keep rate is checked by simulation
  (bench/evaluator_power.py) and on real identical builds (bench/evaluator_real.py).
- The location is the mean of the log ratios (the quantity the sequence covers), after gross outliers are set
  aside: one run hit by a neighbour's build is 10-30% slow (see gross_outliers).
- Futility, non-binding: once the interval can still reach the threshold only with a luck the data do not
  support (conditional power under an optimistic effect below DecisionRule.futility at the run cap), the
  candidate is discarded as futile. It can only turn would-be keeps into discards, never add a false keep.
- Drift inside a pair is cancelled by the ABBA order: half the pairs run baseline first, half candidate first,
  and decisions are only taken on complete ABBA blocks (the evaluator's job), so a linear drift adds as much as
  it removes.
- The A/A calibration's own bias is a Hodges-Lehmann estimate with an expanded-percentile bootstrap interval
  (robust, fixed n: a calibration takes all its pairs, it never stops early), or under 6 pairs (the guards'
  4) the mean with a t interval, see speedup().
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from ..records import metric_matches


Pair = tuple[Mapping[str, float], Mapping[str, float]]  # (baseline, candidate) value per metric, back to back

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
    interval: str = "fixed"
    """"sequence": valid at every look (the verdicts' intervals); "fixed": valid at one n (calibration's bias)."""
    noise: str = ""
    """Where the interval's scale came from, e.g. "pooled with 7 df of A/A calibration"; empty when own only."""

    def describe(self) -> str:
        aside = f", {self.n_outliers} outlier{'s' * (self.n_outliers > 1)} set aside" if self.n_outliers else ""
        kind = "anytime-valid" if self.interval == "sequence" else "CI"
        return (f"{self.metric} {self.estimate:+.1%} [{self.low:+.1%}, {self.high:+.1%}] "
                f"({self.confidence:.0%} {kind}, {self.n_pairs} pairs{aside})")


@dataclass(frozen=True)
class Prior:
    """What the run's A/A calibration knows of one metric's noise before any candidate: the SD of a pair's log
    ratio and its degrees of freedom (calibration pairs - 1)."""
    pair_sd: float
    df: int


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
    """Every test not optimized must stay above -3%: a tg win may not buy a hidden pp loss. A guard's interval
    wholly below -3% discards at once. A keep needs each guard proven (its lower bound above -3%) or, while it is
    still open, its estimate within half the limit (above -1.5%) and its interval reaching no further than
    `open_guard_reach` limits (-6%); at the run cap an open guard is judged by its estimate against the full
    limit. Demanding proof to the end discarded 16% of clear +10% tg wins on the fitted noise model, for noise on
    pp alone; judging by the estimate alone from the first block kept 13% of +10% tg wins that cost 5% pp there
    (a run's machine level moves tg and pp together, so the block that makes tg look decisive flatters pp)."""
    mixture_pairs: float = 2.0
    """The normal mixture's spread, in pairs: it sets where the confidence sequence is tightest; smaller tightens
    early looks and widens late ones. Within the run cap (30 pairs) 2 is narrower than 6 at every look (2.6 pair
    SDs against 3.5 at 2 pairs, 0.97 against 1.06 at 10, the same at 30), so it decides sooner at no loss of
    power at the cap. In the simulation (`python bench/evaluator_power.py --set mixture_pairs=R`, 200 trials a
    row; quiet / fitted shared box / the real calibration's noisy generation; calibration variance unbiased): a
    +20% tg win is kept in a median of 10 / 14 / 10 runs at 2 against 10 / 14 / 14 at 6, a true +3% tg 91% / 59%
    / 10% against 89.5% / 54.5% / 8.5%; A/A is kept 0.2% / 1.0% / 0.8% against 0.2% / 0.5% / 0.5% (400 trials),
    under the 5% the rule promises. 1 decides a little sooner and keeps more A/A (+20%: 10 / 10 / 10 runs; A/A
    0.2% / 1.0% / 1.5%); 10 loses power (+3%: 88.5% / 48% / 5.5%)."""
    open_guard_reach: float = 2.0
    """A keep with a guard still open needs the guard's lower bound above this many limits below zero (-6% for a
    3% limit): no kept candidate has lost more than twice a guard's limit, at the rule's confidence at every look.
    In the simulation (`--set open_guard_reach=1e9` turns it off) it costs a +20% win a block or two (a median of
    10 runs rather than 6 on the quiet model, 14 rather than 6 on the fitted one) and cuts the fitted model's keeps
    of +10% tg at -5% pp from 17% to 1%."""
    futility: float = 0.10
    """Discard as futile when the chance of clearing the minimum by the run cap, were the true effect one
    standard error better than estimated, falls below this. Judged from 4 pairs on, and only while the estimate
    is at most the minimum: a noisy +40% is measured to the cap, not given up (that cost the fitted model's A/A
    verdicts 15.7 -> 13.7 per benchmark-hour and no power: bench/evaluator_power.py before and after 66c0eb7)."""
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
    futile: bool = False  # discarded because the run cap could not have made it a keep
    open_guards: list[str] = field(default_factory=list)  # guarded tests whose interval still reaches their limit


@dataclass
class NoiseFloor:
    """What A/A pairs (the baseline against itself) say about one metric's noise."""
    metric: str
    bias: Effect            # should contain 0; if not, something favours one position of the pair
    pair_sd: float          # robust SD of a pair's log ratio
    run_cv: float           # the per-run noise it implies, pair_sd / sqrt(2)
    planned_pairs: int
    detectable_effect: float  # true speedup kept with 80% probability by the time planned_pairs pairs are in
    pairs: int = 0            # A/A pairs behind pair_sd

    def prior(self) -> Prior:
        """The calibration as the verdicts' prior noise."""
        return Prior(self.pair_sd, max(0, self.pairs - 1))


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


BOOTSTRAP_FROM_PAIRS = 6  # below this a resampling interval cannot hold its level: a t interval instead


def speedup(ratios: np.ndarray, *, metric: str, confidence: float = 0.95, n_resamples: int = 2000,
            seed: int = 0, screen_outliers: bool = True) -> Effect:
    """Hodges-Lehmann speedup of paired log ratios with an expanded-percentile bootstrap interval; under
    BOOTSTRAP_FROM_PAIRS pairs, the mean with a Student t interval. Four pairs have 35 distinct resamples and no
    distribution-free 95% interval at all (the widest a signed-rank interval gets is 87.5%): the bootstrap
    covered 87% of A/A samples at 4 pairs, so a calibration's 4 pairs of pp read "biased" one time in eight."""
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
    elif n < BOOTSTRAP_FROM_PAIRS:
        estimate = float(d.mean())
        half = float(stats.t.ppf(1 - (1 - confidence) / 2, n - 1)) * float(d.std(ddof=1)) / math.sqrt(n)
        low, high = estimate - half, estimate + half
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
    """Tests measured on both sides of at least one pair."""
    seen: set[str] = set()
    for base, cand in pairs:
        seen |= set(base) & set(cand)
    return sorted(seen)


def pairs_with(pairs: Sequence[Pair], tests: Sequence[str]) -> list[Pair]:
    """The pairs that measured every one of `tests` on both sides."""
    return [(b, c) for b, c in pairs if all(t in b and t in c for t in tests)]


def sequence_half_width(n: int, sd: float, *, mixture_pairs: float, confidence: float) -> float:
    """Half-width, in log-ratio units, of the two-sided normal-mixture confidence sequence for the mean of n pairs
    of SD `sd`: sd * sqrt((n + r) log((n + r) / (r alpha^2))) / n, valid at every n at once."""
    r, alpha = mixture_pairs, 1 - confidence
    if r <= 0:
        raise ValueError(f"mixture_pairs must be positive, not {r}")
    return sd * math.sqrt((n + r) * math.log((n + r) / (r * alpha ** 2))) / n


def _informs(prior: Prior | None) -> bool:
    return prior is not None and prior.df > 0 and math.isfinite(prior.pair_sd)


def pooled_scale(own_ss: float, n: int, prior: Prior | None, confidence: float) -> float:
    """The SD of n pairs (their sum of squared deviations `own_ss`) pooled with the prior's by degrees of freedom,
    widened by t/z at the pooled df; inf when there is no df at all (one pair, no calibration)."""
    prior_df = prior.df if _informs(prior) else 0  # type: ignore[union-attr]
    df = prior_df + n - 1
    if df < 1:
        return math.inf
    variance = ((prior_df * prior.pair_sd ** 2 if prior_df else 0.0) + own_ss) / df  # type: ignore[union-attr]
    z = stats.norm.ppf(1 - (1 - confidence) / 2)
    return math.sqrt(variance) * float(stats.t.ppf(1 - (1 - confidence) / 2, df)) / z


def sequential_effect(ratios: np.ndarray, *, metric: str, rule: "DecisionRule",
                      prior: Prior | None = None) -> Effect:
    """Mean speedup of paired log ratios with its confidence-sequence interval."""
    d = np.asarray(ratios, dtype=float)
    outliers = gross_outliers(d)
    d = d[~outliers]
    n = len(d)
    if n == 0:
        return Effect(metric, math.nan, -math.inf, math.inf, 0, rule.confidence, int(outliers.sum()), "sequence")
    mean = float(d.mean())
    sd = pooled_scale(float(np.sum((d - mean) ** 2)), n, prior, rule.confidence)
    noise = f"noise pooled with {prior.df} df of A/A calibration" if _informs(prior) else ""  # type: ignore[union-attr]
    if not math.isfinite(sd):
        return Effect(metric, math.expm1(mean), -math.inf, math.inf, n, rule.confidence, int(outliers.sum()),
                      "sequence", noise)
    h = sequence_half_width(n, sd, mixture_pairs=rule.mixture_pairs, confidence=rule.confidence)
    return Effect(metric, math.expm1(mean), math.expm1(mean - h), math.expm1(mean + h), n, rule.confidence,
                  int(outliers.sum()), "sequence", noise)


def keep_chance(d: np.ndarray, prior: Prior | None, *, horizon_pairs: int, rule: "DecisionRule") -> float:
    """The chance that the objective's interval clears the minimum by the run cap (horizon_pairs in all), were the
    true effect one standard error better than estimated: the conditional power futility is judged by.

    Judged on robust figures (Hodges-Lehmann location, MAD scale pooled with the prior): futility is looked at
    from 4 pairs, before gross outliers can be set aside, and one run hit by a neighbour would otherwise drag
    the mean down and inflate the SD of a real win enough to give it up."""
    n, big_n = len(d), horizon_pairs
    if big_n <= n or n < 1:
        return 1.0
    location = float(hodges_lehmann(d))
    own = float(stats.median_abs_deviation(d, scale="normal")) if n > 1 else 0.0
    sd = pooled_scale((n - 1) * own ** 2, n, prior, rule.confidence)
    if not math.isfinite(sd) or sd <= 0:
        return 1.0
    optimistic = location + sd / math.sqrt(n)
    final_mean = (n * location + (big_n - n) * optimistic) / big_n
    final_sd = sd * math.sqrt(big_n - n) / big_n
    need = math.log1p(rule.min_effect) + sequence_half_width(big_n, sd, mixture_pairs=rule.mixture_pairs,
                                                             confidence=rule.confidence)
    return float(stats.norm.sf((need - final_mean) / final_sd))


FUTILITY_FROM_PAIRS = 4  # below this the SD of the candidate's own pairs is too unsteady to give up on it


def decide(pairs: Sequence[Pair], rule: DecisionRule | None = None, *, final: bool = False,
           priors: Mapping[str, Prior] | None = None, horizon_pairs: int | None = None) -> PerfDecision:
    """Keep, discard or undecided (more runs would help), with one sentence saying why.

    Valid at every look (see the module's notes). Discard as soon as the objective's interval lies wholly below
    the minimum effect, or a guarded test's interval wholly below -max_regression (a proven regression), or the
    objective is futile within `horizon_pairs` (the pairs the run cap allows in all). Keep when the objective's
    lower bound clears the minimum and every guarded test is proven within its limit or, still open, estimated
    within half of it with its interval reaching no further than `open_guard_reach` limits. `final` (no more
    runs to come): an unproven objective is discarded; an open guard is judged by its estimate against the whole
    limit. `priors`: per test, the A/A calibration's noise.
    """
    rule = rule or DecisionRule()
    priors = priors or {}
    tests = measured_tests(pairs)
    weights = resolve_weights(rule.optimize, tests)
    lower = rule.lower_is_better
    effects: dict[str, Effect] = {}
    for t in tests:
        effects[t] = sequential_effect(log_ratios(pairs_with(pairs, [t]), {t: 1.0}, lower), metric=t, rule=rule,
                                       prior=priors.get(t))
    if len(weights) == 1:
        name = next(iter(weights))
        objective_ratios, objective_prior = log_ratios(pairs_with(pairs, [name]), {name: 1.0}, lower), priors.get(name)
        objective = effects[name]
    else:  # a weighted objective has no calibrated noise of its own: its own pairs only
        name = "objective(" + " + ".join(f"{w:.2g}*{t}" for t, w in weights.items()) + ")"
        objective_ratios, objective_prior = log_ratios(pairs_with(pairs, list(weights)), weights, lower), None
        objective = sequential_effect(objective_ratios, metric=name, rule=rule)
    # (effect, floor) of every guarded test: a guard may not lose more than its limit
    guarded = [(effects[t], -limit) for t in tests if t not in weights
               and (limit := rule.guard_limit(t)) is not None]

    open_guards = [(e, floor) for e, floor in guarded if e.low <= floor]

    def verdict(outcome: str, reason: str, futile: bool = False) -> PerfDecision:
        return PerfDecision(outcome, reason, objective, effects, futile, [e.metric for e, _ in open_guards])

    if objective.high < rule.min_effect:
        return verdict("discard", f"{objective.describe()} cannot reach the {rule.min_effect:+.1%} minimum.")
    regressed = [(e, floor) for e, floor in guarded if e.high < floor]
    if regressed:
        e, floor = regressed[0]
        return verdict("discard", f"{e.describe()} regresses past the {floor:.1%} limit.")
    if objective.low > rule.min_effect:
        tolerance = 1.0 if final else 0.5  # open guards: estimated within half the limit, or the whole at the cap
        doubtful = [(e, floor) for e, floor in open_guards
                    if not e.estimate >= tolerance * floor or (not final and e.low < rule.open_guard_reach * floor)]
        if not doubtful:
            guards = "".join(f"; {e.describe()} within the {floor:.1%} limit"
                             + (" by its estimate (its interval still reaches past it)"
                                if (e, floor) in open_guards else "") for e, floor in guarded)
            return verdict("keep", f"{objective.describe()} clears the {rule.min_effect:+.1%} minimum{guards}.")
        e, floor = doubtful[0]
        if final:
            return verdict("discard", f"{objective.describe()} clears the {rule.min_effect:+.1%} minimum, but "
                                      f"{e.describe()} is past the {floor:.1%} limit by its estimate.")
        return verdict("undecided", f"{e.describe()} cannot yet rule out a regression past {floor:.1%}.")
    reason = f"{objective.describe()} does not yet clear the {rule.min_effect:+.1%} minimum."
    if final:
        return verdict("discard", reason)
    # A candidate whose estimate clears the minimum is never given up as futile, however noisy: that it cannot be
    # proven in time is the cap's to say, and a big estimate given up early reads as a lost win.
    if horizon_pairs is not None and objective.n_pairs >= FUTILITY_FROM_PAIRS and \
            objective.estimate <= rule.min_effect:
        screened = objective_ratios[~gross_outliers(objective_ratios)]
        chance = keep_chance(screened, objective_prior, horizon_pairs=horizon_pairs, rule=rule)
        if chance < rule.futility:
            return verdict("discard", f"{objective.describe()} is futile: even one standard error better, it "
                                      f"would clear the {rule.min_effect:+.1%} minimum within the run cap "
                                      f"({horizon_pairs} pairs) with {chance:.0%} chance.", futile=True)
    return verdict("undecided", reason)


def noise_floor(aa_pairs: Sequence[Pair], rule: DecisionRule | None = None,
                planned_pairs: int = 30, power: float = 0.8) -> dict[str, NoiseFloor]:
    """From A/A pairs, per test: the noise, any bias, and the smallest effect the rule would detect.

    The pair SD is the plain SD after dropping pairs beyond 3.5 MADs of the median: as efficient as the SD on
    clean noise (MAD alone needs ~2.7x the pairs for the same precision), yet one hit run does not inflate the
    floor; its variance is divided by what the trim leaves of clean noise at that many pairs (trim_consistency),
    so that the prior the verdicts pool is not smaller than the noise. The detectable effect: a true effect delta
    is kept with probability `power` by the run cap when delta - h > min_effect with margin t_power * se, h the
    confidence sequence's half-width at planned_pairs (its scale pooled with this calibration) and
    se = pair_sd / sqrt(planned_pairs), in log space. It covers the objective alone; guarded tests cost a little
    more power (see DecisionRule.max_regression).
    """
    rule = rule or DecisionRule()
    floors = {}
    big_n = planned_pairs
    for test in measured_tests(aa_pairs):
        d = log_ratios(pairs_with(aa_pairs, [test]), {test: 1.0}, rule.lower_is_better)
        bias = speedup(d, metric=test, confidence=rule.confidence, n_resamples=rule.n_resamples, seed=rule.seed)
        pair_sd = _outlier_resistant_sd(d)
        # the scale a verdict at the cap would have: this calibration pooled with big_n pairs of the same noise
        scale = pooled_scale((big_n - 1) * pair_sd ** 2, big_n, Prior(pair_sd, len(d) - 1), rule.confidence)
        h = sequence_half_width(big_n, scale, mixture_pairs=rule.mixture_pairs, confidence=rule.confidence)
        detectable = math.expm1(math.log1p(rule.min_effect) + h + stats.norm.ppf(power) * pair_sd / math.sqrt(big_n))
        floors[test] = NoiseFloor(test, bias, pair_sd, pair_sd / math.sqrt(2), big_n, detectable, len(d))
    return floors


TRIM_MADS = 3.5  # the calibration's pairs beyond this many MADs of their median are set aside


def _trimmed_variance(x: np.ndarray) -> np.ndarray:
    """Per row of `x`, the variance (ddof 1) of the values within TRIM_MADS MADs of the row's median (all of them
    when the MAD is 0); 0 where fewer than 2 remain."""
    mad = stats.median_abs_deviation(x, axis=1, scale="normal")[:, None]
    keep = (np.abs(x - np.median(x, axis=1, keepdims=True)) <= TRIM_MADS * mad) | (mad == 0)
    count = keep.sum(axis=1)
    mean = np.where(keep, x, 0.0).sum(axis=1) / np.maximum(count, 1)
    ss = np.where(keep, (x - mean[:, None]) ** 2, 0.0).sum(axis=1)
    return np.divide(ss, count - 1, out=np.zeros_like(ss), where=count > 1)


def _outlier_resistant_sd(d: np.ndarray) -> float:
    """The SD of the pairs within TRIM_MADS MADs of their median, its variance divided by what the trim leaves of
    clean normal noise at this many pairs (trim_consistency): unbiased for the variance the verdicts pool."""
    if len(d) < 2:
        return math.nan
    return math.sqrt(float(_trimmed_variance(np.asarray(d, dtype=float)[None, :])[0]) / trim_consistency(len(d)))


@functools.lru_cache(maxsize=None)
def trim_consistency(n: int) -> float:
    """E[trimmed variance] / sigma^2 for n pairs of clean normal noise, by a fixed-seed simulation (40,000 samples:
    its Monte Carlo error is about 0.5%; about 70 ms, once per n and process). A small sample's MAD is unsteady:
    when it comes out low, the trim cuts genuine tails, so the trimmed variance reads low, at 4 pairs by 17%, at 8
    by 10%, at 16 by 5% (the simulated noisy model's 5.1% run noise was calibrated as 4.3%, a median over repeats;
    4.5% divided out, the rest being the SD's own small-sample bias)."""
    if n < 3:
        return 1.0  # two values lie exactly one MAD (unscaled) from their median: nothing is ever trimmed
    return float(_trimmed_variance(np.random.default_rng(20261205).normal(size=(40_000, n))).mean())
