"""One experiment, start to finish: implement the hypothesis on top of the current best, build, run the target's
checks, and only then measure it against the current best (interleaved A/B).

The current best is plain data: {"commit", "variant"} (the variant is the target's own, opaque here). A
hypothesis changes the code (a patch: a new commit), the variant (a change only the target understands), or
both. Whatever fails (does not apply, does not build, fails a check, is not faster) is a recorded, discarded
experiment with its reason, never an exception out of here, except a ReadfirstError that stops the run itself.
"""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import PatchDoesNotApply, PatchRejected, SandboxError
from ..protocols import Target
from ..records import Baseline, BuildResult, CheckResult, to_dict
from ..sandbox.machine_lock import waited_s
from .evaluator import BASELINE, CANDIDATE, Calibration, EvaluatorConfig, Verdict, calibrate, evaluate, gates
from .llm import BudgetExceeded
from .statistics import DecisionRule, Prior

CLOCK_MIN_SAVING_S = 0.5  # a claimed saving the host's clock can judge: above its run-to-run noise (container start)
CLOCK_Z = 3.0  # standard errors the host's saving is given before a claim is refuted: a false discard loses a real win

Say = Callable[[str], None]
Implement = Callable[[dict[str, Any], str], tuple[str | None, dict[str, Any]]]
MAX_REPAIRS = 2


_COMPILER_ERROR = re.compile(r"^(\S+?:\d+(?::\d+)?: (?:fatal )?error: .*|.*undefined reference to .*)$", re.M)


def first_error(log: str) -> str:
    """The compiler's first error (file:line:col: error: ...) or the linker's (undefined reference), which a
    parallel build may print long before it stops; else the first line that says error."""
    m = _COMPILER_ERROR.search(log)
    if m:
        return m.group(1).strip()[:300]
    lines = [ln for ln in log.splitlines() if "error" in ln.lower()]
    return lines[0].strip()[:300] if lines else ""


def first_errors(log: str, *, limit: int = 3, context: int = 4) -> list[str]:
    """The first `limit` compiler or linker errors, each with the lines the compiler printed after it (its notes,
    the offending line and caret), in the order the build printed them."""
    lines = log.splitlines()
    out: list[str] = []
    for i, line in enumerate(lines):
        if _COMPILER_ERROR.match(line):
            out.append("\n".join(lines[i:i + 1 + context]))
            if len(out) >= limit:
                break
    return out


def build_evidence(build: BuildResult, *, tail: int = 3000) -> str:
    """What a repair is shown of a failed build: its stage, its first errors (read from the whole log when the
    build kept one: a parallel build prints its first error long before it stops), and the log's last lines."""
    log = build.log_tail
    if build.log_path:
        try:
            log = Path(build.log_path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            pass
    errors = first_errors(log) or first_errors(build.log_tail)
    parts = [f"stage: {build.stage}"]
    if errors:
        parts.append("first errors:\n" + "\n---\n".join(errors))
    parts.append("end of the log:\n" + build.log_tail[-tail:])
    return "\n\n".join(parts)


def check_evidence(check: CheckResult, reason: str = "") -> str:
    """What a repair is shown of a failed check: its name, its reason, and its figures (a logits check's KL
    divergence and top-token agreement against the baseline, a test suite's failed cases and log tail)."""
    figures = {k: v for k, v in (check.evidence or {}).items() if k != "log_tail"}
    if isinstance(figures.get("cases"), list):  # the failed cases only: the passing ones say nothing
        figures["cases"] = [c for c in figures["cases"] if isinstance(c, dict) and not c.get("passed")][:20]
    text = f"check: {check.name}\nreason: {check.reason or reason}\nfigures: " + json.dumps(figures, default=str)[:4000]
    log_tail = (check.evidence or {}).get("log_tail")
    if log_tail:
        text += "\nend of its log:\n" + str(log_tail)[-3000:]
    return text


def _discarded(gate: str, reason: str) -> Verdict:
    return Verdict("discard", reason, gate, "not measured", None, {}, [], 0, 0, 0.0)


def _signature(signature: Mapping[str, Any]) -> str:
    """{"METRIC lines": {"mb_per_s": 3}} -> "METRIC lines mb_per_s: 3"."""
    def value(v: Any) -> str:
        return "{" + ", ".join(f"{k}: {x}" for k, x in v.items()) + "}" if isinstance(v, Mapping) else str(v)
    return "; ".join(f"{k} {value(v)}" for k, v in signature.items())


def evaluator_for(target: Target, *, max_runs: int = 62,
                  noise: Mapping[str, Mapping[str, Any]] | None = None) -> EvaluatorConfig:
    """The evaluator's settings for a target: its objective decides what is optimized and what is guarded;
    `noise` (the run's A/A calibration, per test {"pair_sd", "df"}) is pooled into every verdict's interval."""
    priors = {test: Prior(**p) for test, p in (noise or {}).items()}
    return EvaluatorConfig(rule=DecisionRule.for_objective(target.objective), max_runs=max_runs, priors=priors)


def calibrate_build(target: Target, commit: str, variant: Mapping[str, Any], *, pairs: int,
                    max_runs: int = 62) -> Calibration:
    """The A/A calibration of one build against itself (agents.evaluator.calibrate), on the target's objective:
    the noise a run's verdicts pool, measured the way they measure."""
    return calibrate(lambda _which, metrics=None: target.measure(commit, variant, metrics=metrics).values,
                     evaluator_for(target, max_runs=max_runs), pairs=pairs)


class ArmBench:
    """The evaluator's `measure` for two builds of a target, `arms` {"baseline": (commit, variant), "candidate":
    ...}: the objective's values of one run, and the benchmark seconds spent, the clock the evaluator's time
    budget runs on. A target that says how long its benchmark ran is counted by that (not the wait for the
    machine); otherwise by the call's wall time."""

    def __init__(self, target: Target, arms: Mapping[str, tuple[str, Mapping[str, Any]]],
                 clock: Callable[[], float] = time.monotonic):
        self.target, self.arms, self.clock = target, arms, clock
        self.spent_s = 0.0
        self.setup: dict[str, Any] | None = None  # the measuring setup, the same for every run of both arms
        # per arm and per set of metrics asked for: (the host's seconds, the seconds the figures claim)
        self.clocks: dict[tuple[str, tuple[str, ...] | None], list[tuple[float, float]]] = {}
        # per arm and per set of metrics asked for: each run's signature (Measurement.signature), when it has one
        self.signatures: dict[tuple[str, tuple[str, ...] | None], list[dict[str, Any]]] = {}

    def __call__(self, which: str, metrics: tuple[str, ...] | None = None) -> dict[str, float]:
        began = self.clock()
        m = self.target.measure(*self.arms[which], metrics=metrics)
        self.spent_s += m.duration_s if m.duration_s is not None else self.clock() - began
        cell = (which, tuple(metrics) if metrics else None)
        if m.duration_s is not None and m.claimed_s is not None:
            self.clocks.setdefault(cell, []).append((m.duration_s, m.claimed_s))
        if m.signature:
            self.signatures.setdefault(cell, []).append(m.signature)
        if self.setup is None:
            self.setup = m.setup
        return {k: v for k, v in m.values.items() if self.target.objective.uses(k)}

    def unsupported_claim(self) -> str | None:
        """Why the host's clock refutes the candidate's figures, or None.

        Both arms do the same work, so the time the candidate's figures say it saved (the baseline's claimed
        seconds minus the candidate's, medians over runs of the same tests) must show on the host's clock for the
        same runs. A claim is refuted when it saved at least CLOCK_MIN_SAVING_S and 5% of the baseline's run, and
        even the host's saving plus CLOCK_Z standard errors falls short of half of it: a benchmark whose figures
        were rewritten, or code under test that moved its work outside the measured section. The standard error
        comes from these runs' own overheads (host seconds minus claimed seconds: container start, model load),
        whose spread is what an honest saving is seen through; at small shapes it is as large as the saving, and
        a fixed margin discarded honest wins. Smaller claims are within the clock's noise: not judged."""
        spread = self.overhead_sd()
        for (which, metrics), cand in sorted(self.clocks.items(), key=lambda kv: str(kv[0])):
            base = self.clocks.get((BASELINE, metrics))
            if which != CANDIDATE or not base or len(base) < 2 or len(cand) < 2:
                continue
            host_b, claim_b = (statistics.median(x) for x in zip(*base))
            host_c, claim_c = (statistics.median(x) for x in zip(*cand))
            claimed, seen = claim_b - claim_c, host_b - host_c
            # the standard error of a difference of two medians, from the pooled spread of the overheads
            se = 1.2533 * spread * (1 / len(base) + 1 / len(cand)) ** 0.5
            if claimed >= max(CLOCK_MIN_SAVING_S, 0.05 * host_b) and seen + CLOCK_Z * se < claimed / 2:
                runs = "+".join(metrics) if metrics else "every test"
                return (f"the host's clock does not support the candidate's figures: its runs ({runs}) claim "
                        f"{claim_c:.2f} s of work against the baseline's {claim_b:.2f} s, a saving of "
                        f"{claimed:.2f} s, but took {host_c:.2f} s on the host against {host_b:.2f} s "
                        f"({seen:+.2f} s saved, ±{se:.2f} s from {len(base)}+{len(cand)} runs' overheads); "
                        f"tampered figures, or work moved outside the measured section")
        return None

    def changed_signature(self) -> str | None:
        """Why the candidate's runs are not the baseline's benchmark, or None: the baseline's runs of the same
        tests showed one signature (the same METRIC lines, run after run) and a candidate's run another. A
        baseline whose own runs differ sets no standard: not judged."""
        for (which, metrics), cand in sorted(self.signatures.items(), key=lambda kv: str(kv[0])):
            base = self.signatures.get((BASELINE, metrics))
            if which != CANDIDATE or not base or len(base) < 2 or any(b != base[0] for b in base):
                continue
            odd = [c for c in cand if c != base[0]]
            if odd:
                return (f"{len(odd)} of the candidate's {len(cand)} runs printed {_signature(odd[0])}, where every "
                        f"one of the baseline's {len(base)} printed {_signature(base[0])}: figures from code under "
                        f"test, or another benchmark")
        return None

    def overhead_sd(self) -> float:
        """The run-to-run SD of the host's seconds beyond the claimed ones, pooled over every arm and set of tests
        measured at least twice (each about its own mean, so a candidate that adds a constant overhead does not
        inflate it)."""
        squares, df = 0.0, 0
        for runs in self.clocks.values():
            if len(runs) < 2:
                continue
            overheads = [host - claimed for host, claimed in runs]
            mean = statistics.fmean(overheads)
            squares += sum((o - mean) ** 2 for o in overheads)
            df += len(overheads) - 1
        return (squares / df) ** 0.5 if df else 0.0

    def clock_record(self) -> dict[str, Any]:
        """What the host's clock saw, for the ledger: per arm and set of tests, the runs and the median host and
        claimed seconds; and the overheads' pooled SD. A clock discard can be checked against it."""
        cells = []
        for (which, metrics), runs in sorted(self.clocks.items(), key=lambda kv: str(kv[0])):
            host, claimed = zip(*runs)
            cells.append({"arm": which, "tests": list(metrics) if metrics else "every test", "runs": len(runs),
                          "host_s": round(statistics.median(host), 3),
                          "claimed_s": round(statistics.median(claimed), 3)})
        return {"cells": cells, "overhead_sd_s": round(self.overhead_sd(), 3)}

    def held_to_account(self, verdict: Verdict, record: dict[str, Any], say: Say = lambda _: None) -> Verdict:
        """`verdict`, turned into a discard when it keeps figures that are not to be believed: at gate "signature"
        when the candidate's runs printed other figures than the baseline's (changed_signature), at gate "clock"
        when the host's clock refutes their claim (unsupported_claim); what the clock saw goes into `record` (a
        ledger row, a confirmation) either way."""
        if self.clocks:
            record["clock"] = self.clock_record()
        if verdict.decision != "keep":
            return verdict
        for gate, refuted in (("signature", self.changed_signature()), ("clock", self.unsupported_claim())):
            if refuted is not None:
                say(refuted)
                return dataclasses.replace(verdict, decision="discard", reason=f"tampered: {refuted}", gate=gate)
        return verdict

    def seconds(self) -> float:
        return self.spent_s

    def record_setup(self, row: dict[str, Any]) -> None:
        """The setup goes into the experiment's row once, when a run has measured it."""
        if self.setup is not None:
            row.setdefault("bench_setup", self.setup)


def run_experiment(hypothesis: dict[str, Any], *, target: Target, best: dict[str, Any], baseline: Baseline,
                   worker: int = 0, evaluator_config: EvaluatorConfig | None = None,
                   implement: Implement | None = None, say: Say = lambda _: None) -> dict[str, Any]:
    """Run `hypothesis` against `best`; return the ledger row (plain data)."""
    durations: dict[str, float] = {}
    clock = time.monotonic

    def took(t0: float, w0: float) -> float:
        """The seconds since t0 less the wait for the machine since w0, which is counted apart as "wait": a build
        that waited 20 s behind another run's benchmark took what it took, not 20 s."""
        waited = waited_s() - w0
        durations["wait"] = durations.get("wait", 0.0) + waited
        return clock() - t0 - waited

    @contextmanager
    def timed(stage: str):
        """The body's time, less its wait for the machine, added to durations[stage] as the body ends, however it
        ends: an exception handled outside the `with` finds its stage's time counted."""
        t0, w0 = clock(), waited_s()
        try:
            yield
        finally:
            durations[stage] = durations.get(stage, 0.0) + took(t0, w0)
    row: dict[str, Any] = {"hypothesis": hypothesis, "kind": hypothesis["kind"], "title": hypothesis["title"],
                           "citations": hypothesis.get("citations", []), "patch": None, "build": None,
                           "checks": None, "llm": {}, "objective": target.objective.metric}
    best_commit, best_variant = best["commit"], best["variant"]
    commit, variant = best_commit, best_variant
    change = hypothesis.get("change", {})
    title = hypothesis["title"]
    evaluator_config = evaluator_config or evaluator_for(target)

    def finish(verdict: Verdict) -> dict[str, Any]:
        row.update(candidate={"commit": commit, "variant": variant}, verdict=verdict.to_dict(),
                   decision=verdict.decision, reason=verdict.reason,
                   durations={k: round(v, 2) for k, v in durations.items()})
        obj = verdict.objective
        row.update(speedup=obj.estimate if obj else None, ci_low=obj.low if obj else None,
                   ci_high=obj.high if obj else None)
        say(f"{title}: {verdict.decision} — {verdict.reason}")
        return row

    # -- implement -------------------------------------------------------------------------------------------------
    t0, w0 = clock(), waited_s()
    kind = hypothesis["kind"]
    patch = change.get("patch")
    llm_made = kind == "llm" and implement is not None
    if llm_made:
        say(f"{title}: implementing")
        try:
            patch, info = implement(hypothesis, best_commit)
        except BudgetExceeded as e:
            durations["implement"] = took(t0, w0)
            # gate "budget": the run's dollars cannot pay for the implementation; the loop stops on it
            return finish(_discarded("budget", f"not implemented: {e}"))
        row["llm"] = info
        if not patch:
            durations["implement"] = took(t0, w0)
            return finish(_discarded("implement", f"the implementer produced no patch: {info.get('error') or 'no edits'}."))

    def commit_on_best(patch_text: str, note: str = "") -> str | Verdict:
        """The patch as a commit on the current best, or the discard verdict when it is refused or does not apply."""
        row["patch"] = patch_text
        try:
            return target.commit_patch(patch_text, base=best_commit, message=f"{hypothesis['id']}: {title}{note}")
        except (PatchRejected, PatchDoesNotApply) as e:
            return _discarded("apply", f"{'the repaired patch: ' if note else ''}{e}.")

    if patch:
        applied = commit_on_best(patch)
        if isinstance(applied, Verdict):
            durations["implement"] = took(t0, w0)
            return finish(applied)
        commit = applied
    if change.get("variant"):
        try:
            variant = target.apply(best_variant, change["variant"])
        except ValueError as e:
            durations["implement"] = took(t0, w0)
            return finish(_discarded("apply", f"the target cannot make this change: {e}"))
    durations["implement"] = took(t0, w0)

    # -- build (an unchanged build is reused by the target) and the target's checks (tests, numerics); while an LLM
    # -- wrote the patch, a failure of either goes back to it, with its evidence, for a repair -----------------------
    repairs = 0
    durations["build"] = durations["checks"] = 0.0

    def repaired(failure: str, evidence: str) -> str | Verdict | None:
        """The repaired patch's commit, the discard verdict when it does not apply, or None: no repair."""
        nonlocal repairs
        if not llm_made or repairs >= MAX_REPAIRS:
            return None
        repairs += 1
        say(f"{title}: {failure} failed, repair {repairs}")
        try:
            patch, info = implement({**hypothesis, "repair": {"failure": failure, "evidence": evidence},
                                     "patch": row["patch"]}, best_commit)
        except BudgetExceeded:
            return None
        row["llm"][f"repair_{repairs}"] = {**info, "failure": failure}
        return commit_on_best(patch, " (repair)") if patch else None

    while True:
        say(f"{title}: building")
        try:
            with timed("build"):
                build = target.build(commit, variant, worker=worker)
        except OSError as e:  # a build record or artifact that could not be read back: the candidate's doing
            return finish(_discarded("build", f"the build's results could not be read back ({e})."))
        row["build"] = to_dict(build)
        if not build.ok:
            fixed = repaired("build", build_evidence(build))
            if isinstance(fixed, Verdict):
                return finish(fixed)
            if fixed is not None:
                commit = fixed
                continue
            error = first_error(build.log_tail)
            return finish(_discarded("build", f"the build failed at the {build.stage} stage"
                                              f"{': ' + error if error else ''}."))
        say(f"{title}: checking")
        try:
            with timed("checks"):
                checks = target.checks(commit, variant, baseline=baseline, worker=worker)
        except (SandboxError, OSError, ValueError) as e:  # OSError, ValueError: evidence that could not be read
            return finish(_discarded("checks", f"the checks could not run: {str(e)[:300]}"))
        row["checks"] = to_dict(checks)
        verdict = gates(checks, None)
        if verdict.gate == "performance":
            break
        failed = checks.first_failure()
        fixed = repaired(verdict.gate, check_evidence(failed, verdict.reason)) if failed is not None else None
        if isinstance(fixed, Verdict):
            return finish(fixed)
        if fixed is None:
            return finish(verdict)
        commit = fixed

    # -- performance: interleaved A/B against the current best -----------------------------------------------------------
    arms = {BASELINE: (best_commit, best_variant), "candidate": (commit, variant)}

    bench = ArmBench(target, arms, clock)
    say(f"{title}: measuring against the current best")
    failure = ""
    try:
        with timed("bench"):
            perf = evaluate(bench, evaluator_config, clock=bench.seconds)
    except (SandboxError, OSError) as e:  # OSError: a result file that could not be read back
        failure = f"the benchmark failed: {(str(e).splitlines() or [''])[0][:300]}"
    except ValueError as e:  # a value that is not a positive number, or no objective metric: the candidate's fault
        failure = f"the benchmark's figures are unusable: {str(e)[:300]}"
    bench.record_setup(row)
    if failure:
        return finish(_discarded("performance", failure))
    perf = bench.held_to_account(perf, row, say=lambda why: say(f"{title}: tampered? {why}"))
    return finish(gates(checks, perf))


def confirm_stack(target: Target, *, baseline: tuple[str, Mapping[str, Any]], best: tuple[str, Mapping[str, Any]],
                  max_runs: int, noise: Mapping[str, Any] | None = None, say: Callable[[str], None] = lambda _: None
                  ) -> dict[str, Any]:
    """`best` (commit, variant) against `baseline`, both built from nothing (the target's clean variants: fresh
    build directories, no compiler cache) and measured in one interleaved A/B under the run's keep rule.

    The run's own builds are incremental and cached: a stale object can make a win the code does not have, and a
    stack that builds only on top of earlier objects is caught here as a failed clean build. The record: which
    builds, their minutes, then the verdict (speedup, interval, pairs, decision, reason, bench minutes), or the
    error that stopped it."""
    arms = {BASELINE: (baseline[0], target.clean(baseline[1])), CANDIDATE: (best[0], target.clean(best[1]))}
    fresh = arms[BASELINE][1] != dict(baseline[1]) or arms[CANDIDATE][1] != dict(best[1])
    record: dict[str, Any] = {"builds": "clean builds (fresh build directories, no compiler cache)" if fresh
                              else "the target's own builds (each made from nothing already)"}
    build_s = 0.0
    for arm, what in ((BASELINE, "the baseline"), (CANDIDATE, "the final stack")):
        commit, variant = arms[arm]
        if fresh:
            say(f"confirm: building {what} ({commit[:10]}) from nothing")
        built = target.build(commit, variant)
        build_s += built.duration_s
        if not built.ok:
            record.update(error=f"the clean build of {what} ({commit[:10]}) failed at {built.stage}: "
                                f"{built.log_tail[-300:].strip()}",
                          decision="discard" if arm == CANDIDATE else None, build_minutes=round(build_s / 60, 2))
            say(f"confirm: {record['error'][:400]}")
            return record
    record["build_minutes"] = round(build_s / 60, 2)
    bench = ArmBench(target, arms)
    try:
        verdict = evaluate(bench, evaluator_for(target, max_runs=max_runs, noise=noise), clock=bench.seconds)
    except (SandboxError, ValueError) as e:
        record["error"] = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        say(f"confirm: could not measure: {record['error']}")
        return record
    verdict = bench.held_to_account(verdict, record)
    obj = verdict.objective
    record.update(speedup=obj.estimate if obj else None, ci_low=obj.low if obj else None,
                  ci_high=obj.high if obj else None, pairs=obj.n_pairs if obj else 0,
                  decision=verdict.decision, reason=verdict.reason, bench_minutes=round(bench.spent_s / 60, 2))
    return record
