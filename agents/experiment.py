"""One experiment, start to finish: implement the hypothesis on top of the current best, build, test, check the
logits against the baseline, and only then measure it against the current best (interleaved A/B).

The current best is plain data: {"commit", "config" (BuildConfig as a dict), "options" (BenchOptions as a dict)}.
A hypothesis changes one of them: a patch (a new commit), a build configuration, or runtime options. Whatever
fails (does not apply, does not build, breaks tests or numerics, is not faster) is a recorded, discarded
experiment with its reason, never an exception out of here, except a ReadfirstError that stops the run itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..errors import PatchDoesNotApply, PatchRejected, SandboxError
from .llm import BudgetExceeded
from ..sandbox.llama_cpp import BenchOptions, LlamaCppTarget
from ..sandbox.records import BuildConfig, TestResult, from_dict, to_dict
from .evaluator import BASELINE, EvaluatorConfig, Verdict, evaluate, gates

Say = Callable[[str], None]


def best_parts(best: dict[str, Any]) -> tuple[str, BuildConfig, BenchOptions]:
    return best["commit"], from_dict(BuildConfig, best["config"]), BenchOptions(**best["options"])


def _discarded(gate: str, reason: str) -> Verdict:
    return Verdict("discard", reason, gate, "not measured", None, {}, [], 0, 0, 0.0)


def run_experiment(hypothesis: dict[str, Any], *, target: LlamaCppTarget, best: dict[str, Any],
                   baseline: dict[str, Any], model: Path, worker: int = 0,
                   evaluator_config: EvaluatorConfig | None = None, bench_options: BenchOptions | None = None,
                   implement: Callable[[dict[str, Any], str], tuple[str | None, dict[str, Any]]] | None = None,
                   say: Say = lambda _: None) -> dict[str, Any]:
    """Run `hypothesis` against `best`; return the ledger row (plain data)."""
    durations: dict[str, float] = {}
    clock = time.monotonic
    row: dict[str, Any] = {"hypothesis": hypothesis, "kind": hypothesis["kind"], "title": hypothesis["title"],
                           "citations": hypothesis.get("citations", []), "patch": None, "build": None,
                           "tests": None, "kld": None, "llm": {}}
    best_commit, best_config, best_options = best_parts(best)
    commit, config, options = best_commit, best_config, best_options
    change = hypothesis.get("change", {})
    title = hypothesis["title"]

    def finish(verdict: Verdict) -> dict[str, Any]:
        row.update(candidate={"commit": commit, "config": to_dict(config), "options": asdict(options)},
                   verdict=verdict.to_dict(), decision=verdict.decision, reason=verdict.reason,
                   durations={k: round(v, 2) for k, v in durations.items()})
        obj = verdict.objective
        row.update(speedup=obj.estimate if obj else None, ci_low=obj.low if obj else None,
                   ci_high=obj.high if obj else None)
        say(f"{title}: {verdict.decision} — {verdict.reason}")
        return row

    # -- implement ---------------------------------------------------------------------------------------------
    t0 = clock()
    kind = hypothesis["kind"]
    patch = change.get("patch")
    if kind == "llm" and implement is not None:
        say(f"{title}: implementing")
        try:
            patch, info = implement(hypothesis, best_commit)
        except BudgetExceeded as e:
            durations["implement"] = clock() - t0
            return finish(_discarded("implement", f"not implemented: {e}"))
        row["llm"] = info
        if not patch:
            durations["implement"] = clock() - t0
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
            durations["implement"] = clock() - t0
            return finish(applied)
        commit = applied
    if change.get("cmake_flags_add"):
        flags = [f for f in config.cmake_flags if f.split("=")[0] not in {a.split("=")[0] for a in change["cmake_flags_add"]}]
        config = BuildConfig(flags + list(change["cmake_flags_add"]), config.c_flags,
                             f"{config.note} + {' '.join(change['cmake_flags_add'])}")
    if change.get("options"):
        options = replace(options, **change["options"])
    durations["implement"] = clock() - t0

    # -- build and tests (only when the code or its configuration changed) ----------------------------------------
    tests: TestResult | None
    if (commit, config) != (best_commit, best_config):
        say(f"{title}: building")
        t0 = clock()
        build = target.build(commit, worker=worker, config=config)
        repairs = 0
        while not build.ok and kind == "llm" and implement is not None and repairs < 2:
            repairs += 1
            say(f"{title}: build failed at {build.stage}, repair {repairs}")
            try:
                patch, info = implement({**hypothesis, "repair_log": build.log_tail[-4000:], "patch": row["patch"]},
                                        best_commit)
            except BudgetExceeded:
                break
            row["llm"][f"repair_{repairs}"] = info
            if not patch:
                break
            applied = commit_on_best(patch, " (repair)")
            if isinstance(applied, Verdict):
                durations["build"] = clock() - t0
                return finish(applied)
            commit = applied
            build = target.build(commit, worker=worker, config=config)
        durations["build"] = clock() - t0
        row["build"] = to_dict(build)
        if not build.ok:
            tail = [ln for ln in build.log_tail.splitlines() if "error" in ln.lower()][:1]
            return finish(_discarded("build", f"the build failed at the {build.stage} stage"
                                              f"{': ' + tail[0].strip()[:200] if tail else ''}."))
        say(f"{title}: testing")
        t0 = clock()
        tests = target.test(commit, worker=worker, config=config)
        durations["tests"] = clock() - t0
    else:
        tests = from_dict(TestResult, baseline["tests"])  # same build: the baseline's own tests stand
    row["tests"] = to_dict(tests)

    # -- logits against the baseline ------------------------------------------------------------------------------
    say(f"{title}: checking logits")
    t0 = clock()
    base_commit, base_config, base_options = best_parts(baseline)
    try:
        base_logits = target.kld_base(base_commit, model=model, config=base_config, flash_attn=base_options.flash_attn)
        kld = target.logits_check(commit, model=model, base_logits=base_logits, config=config,
                                  flash_attn=options.flash_attn)
    except SandboxError as e:
        durations["kld"] = clock() - t0
        return finish(_discarded("logits", f"the logits check could not run: {str(e)[:300]}"))
    durations["kld"] = clock() - t0
    row["kld"] = to_dict(kld)
    verdict = gates(tests, kld, None)
    if verdict.gate != "performance":
        return finish(verdict)

    # -- performance: interleaved A/B against the current best -----------------------------------------------------
    shape = bench_options or BenchOptions()
    arms = {BASELINE: (best_commit, best_config, best_options), "candidate": (commit, config, options)}

    def measure(which: str) -> dict[str, float]:
        c, cfg, opts = arms[which]
        run_opts = replace(opts, n_prompt=shape.n_prompt, n_gen=shape.n_gen, repetitions=1)
        result = target.bench(c, model=model, options=run_opts, config=cfg)
        # the measuring setup, fixed for every run of both arms, recorded once with the experiment
        row.setdefault("bench_setup", {"cpu": result.cpu, "threads": result.threads, "cpus": result.cpus,
                                       "flash_attn": result.flash_attn})
        return {s.test.split("+")[0]: s.mean_ts for s in result.samples}

    say(f"{title}: measuring against the current best")
    t0 = clock()
    try:
        perf = evaluate(measure, evaluator_config)
    except SandboxError as e:
        durations["bench"] = clock() - t0
        return finish(_discarded("performance", f"the benchmark failed: {str(e).splitlines()[0][:300]}"))
    durations["bench"] = clock() - t0
    return finish(gates(tests, kld, perf))
