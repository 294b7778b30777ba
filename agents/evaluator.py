"""The evaluator role: measure a candidate against the baseline and decide keep or discard.

Dependencies come in as arguments: `measure(which, metrics)` runs one benchmark of "baseline" or "candidate" and
returns a value per metric ({"tg128": 70.1, "pp512": 290.3}: llama.cpp's tokens/s per test); `metrics` names the
only ones needed (names or prefixes, e.g. ("tg",)), None all, and it may return more; `clock` returns seconds
(time.monotonic; a fake in tests). The statistics live in agents/statistics.py; this module owns the schedule
and the records.

Schedule, and why:
- Warm-up: the first run of each build pays for page-cache misses (binary, 600 MiB model) and is discarded; it
  measures the objective only (the cheapest run that pages everything in).
- Interleaved ABBA blocks (A B B A, A B B A, ...): baseline and candidate alternate run by run, never one block
  after the other, so the machine's drift (a few % between runs on a shared box) hits both arms alike; within a
  block one pair runs A first and one B first, so a linear drift cancels. Decisions are taken only after whole
  blocks, when the orders are balanced.
- Measure what decides: every block measures the objective; guards (pp for a tg objective) are measured on the
  first block, on every block while a guard's interval still reaches its limit, and otherwise every
  `guard_every` blocks. A llama-bench tg128 run costs 39% of a pp512 + tg128 run (bench/run_shape_cost.py).
- Sequential: the rule's intervals are valid at every look (statistics.decide), so the verdict is looked at
  after every block, from the first, and stops as soon as it is clear either way or futile; otherwise a block is
  added, until the run cap or the time budget. A block is started only if it fits the budget at the slowest run
  seen so far. At the end the rule's final form decides: an unproven gain is discarded (the burden of proof is on
  the candidate); a proven gain with a guard still open is judged by the guard's estimate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ..records import Checks, from_dict
from .statistics import DecisionRule, Effect, NoiseFloor, Pair, PerfDecision, Prior, decide, noise_floor

SCHEMA_VERSION = 1
BASELINE, CANDIDATE = "baseline", "candidate"

Measure = Callable[[str, "tuple[str, ...] | None"], Mapping[str, float]]  # (which, metrics)
Clock = Callable[[], float]


@dataclass
class EvaluatorConfig:
    rule: DecisionRule = field(default_factory=DecisionRule)
    warmup_runs: int = 1
    """Per arm, discarded."""
    min_pairs: int = 2
    """The first look: after the first ABBA block (the intervals are valid at every look)."""
    max_runs: int = 62
    """Every run counts, warm-ups included: 2 + 15 blocks = 30 pairs. At the default shapes a tg-only run takes
    ~8 s, so the cap costs about what 26 full pp512 + tg128 runs did, and buys the power to keep a true +3%."""
    time_budget_s: float = 900.0
    """Per candidate, benchmark seconds: at ~8 s per tg run and ~20 s per full run the run cap binds first."""
    priors: dict[str, Prior] = field(default_factory=dict)
    """Per test, the run's A/A calibration noise, pooled into every verdict's interval (statistics.Prior)."""
    guard_every: int = 2
    """Guards proven within their limits are measured every this many blocks; 1: every block."""


@dataclass
class Run:
    """One benchmark invocation."""
    index: int
    which: str       # "baseline" | "candidate"
    warmup: bool
    values: dict[str, float]
    started_s: float  # since the evaluation began
    duration_s: float


@dataclass
class Verdict:
    """What the evaluator decided and all the evidence behind it."""
    decision: str     # "keep" | "discard"
    reason: str       # one sentence
    gate: str         # what decided: "implement" | "apply" | "build" | a check's name | "performance" |
    #                   "signature" | "clock" (a keep whose figures were not believed: ArmBench.held_to_account)
    stopped: str      # "clear" | "futile" | "max runs" | "time budget" | "not measured"
    objective: Effect | None
    effects: dict[str, Effect]
    runs: list[Run]
    pairs_used: int
    runs_used: int
    time_spent_s: float
    rule: DecisionRule | None = None

    @property
    def kept(self) -> bool:
        return self.decision == "keep"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["schema_version"] = SCHEMA_VERSION
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Verdict":
        """Tolerates unknown keys (newer writers) at every level."""
        data = dict(data)
        if data.get("objective") is not None:
            data["objective"] = from_dict(Effect, data["objective"])
        data["effects"] = {k: from_dict(Effect, v) for k, v in (data.get("effects") or {}).items()}
        data["runs"] = [from_dict(Run, r) for r in data.get("runs") or []]
        if data.get("rule") is not None:
            data["rule"] = from_dict(DecisionRule, data["rule"])
        return from_dict(cls, data)


@dataclass
class Calibration:
    """A/A comparison of the baseline against itself: the run's noise floor."""
    floors: dict[str, NoiseFloor]
    runs: list[Run]
    time_spent_s: float

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["schema_version"] = SCHEMA_VERSION
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Calibration":
        floors = {k: from_dict(NoiseFloor, {**v, "bias": from_dict(Effect, v["bias"])})
                  for k, v in (data.get("floors") or {}).items()}
        return cls(floors, [from_dict(Run, r) for r in data.get("runs") or []], data.get("time_spent_s", 0.0))

    def priors(self) -> dict[str, Prior]:
        """Per test, the noise the verdicts pool into their intervals."""
        return {test: f.prior() for test, f in self.floors.items() if f.pairs > 1}

    def describe(self) -> str:
        return "; ".join(f"{f.metric}: run noise {f.run_cv:.1%}, A/A bias {f.bias.estimate:+.1%} "
                         f"[{f.bias.low:+.1%}, {f.bias.high:+.1%}], smallest detectable effect "
                         f"{f.detectable_effect:+.1%} in {f.planned_pairs} pairs" for f in self.floors.values())


class _Session:
    """Runs and timings of one evaluation; enforces the run cap and the time budget before each block."""

    def __init__(self, measure: Measure, config: EvaluatorConfig, clock: Clock):
        self.measure, self.config, self.clock = measure, config, clock
        self.start = clock()
        self.runs: list[Run] = []
        self.pairs: list[Pair] = []
        self.objective_only = tuple(config.rule.optimize)

    def elapsed(self) -> float:
        return self.clock() - self.start

    def run(self, which: str, warmup: bool = False, metrics: tuple[str, ...] | None = None) -> dict[str, float]:
        began = self.clock()
        values = {k: float(v) for k, v in self.measure(which, metrics).items()}
        bad = {k: v for k, v in values.items() if not (math.isfinite(v) and v > 0)}
        if not values or bad:
            raise ValueError(f"measure({which!r}) returned no usable values (each must be positive and finite): "
                             f"{values}")
        self.runs.append(Run(len(self.runs), which, warmup, values, began - self.start, self.clock() - began))
        return values

    def warm_up(self) -> None:
        for _ in range(self.config.warmup_runs):
            self.run(BASELINE, warmup=True, metrics=self.objective_only)
            self.run(CANDIDATE, warmup=True, metrics=self.objective_only)

    def block_fits(self) -> str | None:
        """Why the next ABBA block may not start, or None when it may."""
        if len(self.runs) + 4 > self.config.max_runs:
            return "max runs"
        slowest = max((r.duration_s for r in self.runs), default=0.0)
        if self.elapsed() + 4 * slowest > self.config.time_budget_s:
            return "time budget"
        return None

    def horizon_pairs(self) -> int:
        """The pairs there will be if the run cap is spent: those in hand and two per block that still fits."""
        return len(self.pairs) + max(0, self.config.max_runs - len(self.runs)) // 4 * 2

    def abba_block(self, everything: bool = True) -> None:
        metrics = None if everything else self.objective_only
        a1 = self.run(BASELINE, metrics=metrics)
        b1 = self.run(CANDIDATE, metrics=metrics)
        b2 = self.run(CANDIDATE, metrics=metrics)
        a2 = self.run(BASELINE, metrics=metrics)
        self.pairs += [(a1, b1), (a2, b2)]


def evaluate(measure: Measure, config: EvaluatorConfig | None = None, *,
             clock: Clock = time.monotonic) -> Verdict:
    """Interleaved, sequential A/B of candidate against baseline; the performance verdict (gates come after).

    An exception from `measure` propagates (a crashed benchmark is the caller's to turn into a result); a
    measurement that is not positive and finite is a ValueError.
    """
    config = config or EvaluatorConfig()
    session = _Session(measure, config, clock)
    session.warm_up()
    decision: PerfDecision | None = None
    stopped = ""
    guards_skipped = 0  # blocks in a row that measured the objective alone
    while True:
        limit = session.block_fits()
        if limit:
            stopped = limit
            break
        everything = (decision is None or bool(decision.open_guards)
                      or guards_skipped + 1 >= max(1, config.guard_every))
        session.abba_block(everything)
        guards_skipped = 0 if everything else guards_skipped + 1
        if len(session.pairs) >= config.min_pairs:
            decision = decide(session.pairs, config.rule, priors=config.priors,
                              horizon_pairs=session.horizon_pairs())
            if decision.outcome != "undecided":
                stopped = "futile" if decision.futile else "clear"
                break
    if session.pairs and (decision is None or decision.outcome == "undecided"):  # out of runs or time
        decision = decide(session.pairs, config.rule, final=True, priors=config.priors)
    return _performance_verdict(decision, session, stopped, config.rule)


def _performance_verdict(decision: PerfDecision | None, session: _Session, stopped: str,
                         rule: DecisionRule) -> Verdict:
    common = dict(gate="performance", stopped=stopped, runs=session.runs, pairs_used=len(session.pairs),
                  runs_used=len(session.runs), time_spent_s=session.elapsed(), rule=rule)
    limit = {"max runs": "run cap"}.get(stopped, stopped)
    if decision is None:
        return Verdict("discard", f"not one ABBA block fitted the {limit} after the warm-up runs.", objective=None,
                       effects={}, **common)  # type: ignore[arg-type]
    reason = decision.reason
    if decision.outcome == "discard" and stopped not in ("clear", "futile"):
        reason = f"not shown within the {limit} ({len(session.runs)} runs): {reason}"
    return Verdict(decision.outcome, reason, objective=decision.objective, effects=decision.effects,
                   **common)  # type: ignore[arg-type]


def calibrate(measure: Measure, config: EvaluatorConfig | None = None, *, pairs: int = 8,
              clock: Clock = time.monotonic) -> Calibration:
    """A/A: the same interleaved schedule with the baseline in both arms, a fixed number of pairs (no early stop),
    so the report can state the smallest effect this run can detect within the evaluator's run cap, and the
    verdicts can pool its noise. Like a verdict it measures the guards every `guard_every` blocks (the first
    included): with the defaults, 8 pairs of the objective and 4 of the guards."""
    config = config or EvaluatorConfig()
    session = _Session(lambda _which, metrics: measure(BASELINE, metrics), config, clock)
    session.warm_up()
    blocks = 0
    while len(session.pairs) < pairs:
        session.abba_block(everything=blocks % max(1, config.guard_every) == 0)
        blocks += 1
    planned = max(2, (config.max_runs - 2 * config.warmup_runs) // 4 * 2)
    return Calibration(noise_floor(session.pairs, config.rule, planned_pairs=planned), session.runs,
                       session.elapsed())


def gates(checks: Checks | None, performance: Verdict | None) -> Verdict:
    """One verdict from the target's checks and the performance verdict, with the first failing reason.

    Checks come first, in the target's order, because a wrong candidate is wrong at any speed. Missing evidence
    fails its gate: nothing is kept on checks that did not run, nor on none at all. The performance evidence,
    when there is some, stays in the verdict whatever decided it.
    """
    failure: tuple[str, str] | None = None
    if checks is None or not checks.results:
        failure = ("checks", "the checks did not run.")
    elif (failed := checks.first_failure()) is not None:
        failure = (failed.name, failed.reason or f"the {failed.name} check failed.")
    if failure is None and performance is not None:
        return performance
    if failure is None:
        failure = ("performance", "the candidate was not measured.")
    gate, reason = failure
    if performance is None:
        return Verdict("discard", reason, gate, "not measured", None, {}, [], 0, 0, 0.0)
    return Verdict("discard", reason, gate, performance.stopped, performance.objective, performance.effects,
                   performance.runs, performance.pairs_used, performance.runs_used, performance.time_spent_s,
                   performance.rule)
