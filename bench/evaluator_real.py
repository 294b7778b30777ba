"""The evaluator's keep rule on real builds: A/A false keeps, and detection of planted slowdowns and speedups.

Identical builds (A/A) must almost never be kept; a planted slowdown in a CPU kernel (rms_norm recomputing its
row sum R times) must be discarded, and its removal (the slowed build as the current best, the original as the
candidate) kept. The true size of each planted effect is the median of all its trials' estimates. As in a run,
an A/A calibration comes first and every verdict pools its noise, and a run asked for tg alone runs tg alone.
As in a run too, every keep is held against the host's clock (agents.experiment.ArmBench): the removal is an
honest win, so a keep refuted there is a false discard, and the table counts them. Writes its section of
docs/PERFORMANCE.md (`--section` names another, for a run that answers another question).

    .venv/bin/python bench/evaluator_real.py [--aa 20] [--trials 5] [--reps 10 40] [--max-runs 62] [-p 32 -n 16]
"""

from __future__ import annotations

import argparse
import difflib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

from readfirst.agents.evaluator import BASELINE, CANDIDATE, EvaluatorConfig, evaluate  # noqa: E402
from readfirst.agents.experiment import ArmBench, calibrate_build  # noqa: E402
from readfirst.config import Paths  # noqa: E402
from readfirst.graph.deps import compose_target  # noqa: E402
from readfirst.targets import make_spec  # noqa: E402
from readfirst.sources import git  # noqa: E402

OPS = "ggml/src/ggml-cpu/ops.cpp"
SUM = ("                for (int64_t i00 = 0; i00 < ne00; i00++) {\n"
       "                    sum += (ggml_float)(x[i00] * x[i00]);\n"
       "                }\n")


def slowdown_patch(repo: Path, reps: int) -> str:
    slow = (f"                for (int rep = 0; rep < {reps}; rep++) {{\n"
            "                    sum = 0.0;\n"
            "                    __asm__ volatile(\"\" ::: \"memory\");\n"
            + SUM.replace("                ", "                    ") + "                }\n")
    before = git(repo, "show", f"baseline:{OPS}").stdout
    after = before.replace(SUM, slow, 1)
    return f"diff --git a/{OPS} b/{OPS}\n" + "".join(difflib.unified_diff(
        before.splitlines(True), after.splitlines(True), f"a/{OPS}", f"b/{OPS}"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--aa", type=int, default=20, help="A/A trials")
    ap.add_argument("--trials", type=int, default=5, help="trials per planted effect and direction")
    ap.add_argument("--reps", type=int, nargs="+", default=[10, 40], help="planted slowdowns (row-sum repeats)")
    ap.add_argument("--max-runs", type=int, default=62)
    ap.add_argument("--calibration-pairs", type=int, default=8)
    ap.add_argument("-p", "--n-prompt", type=int, default=32)
    ap.add_argument("-n", "--n-gen", type=int, default=16)
    ap.add_argument("--section", default="evaluator-real", help="the docs/PERFORMANCE.md section written")
    args = ap.parse_args()
    say = lambda m: print(f"· {m}", file=sys.stderr, flush=True)  # noqa: E731
    paths = Paths.resolve()
    spec = make_spec("llama.cpp", source="llama.cpp", options={"n_prompt": args.n_prompt, "n_gen": args.n_gen})
    _, target = compose_target(paths, spec, say=say)
    base = target.prepare()

    def verdict_between(a: str, b: str):
        """One verdict of `b` against `a`, measured and held to account as a run's: (the evaluator's verdict, why
        its keep was not believed, or None)."""
        bench = ArmBench(target, {BASELINE: (a, base.variant), CANDIDATE: (b, base.variant)})
        verdict = evaluate(bench, config, clock=bench.seconds)
        held = bench.held_to_account(verdict, {})
        return verdict, held.reason if held is not verdict else None

    started = time.monotonic()
    say(f"A/A calibration: {args.calibration_pairs} pairs")
    calibration = calibrate_build(target, base.commit, base.variant, pairs=args.calibration_pairs,
                                  max_runs=args.max_runs)
    config = EvaluatorConfig(max_runs=args.max_runs, priors=calibration.priors())
    rows = []
    say(f"A/A: {args.aa} trials")
    if args.aa:
        rows.append(("A/A (identical builds)", [verdict_between(base.commit, base.commit) for _ in range(args.aa)]))
    for reps in args.reps:
        commit = target.commit_patch(slowdown_patch(target.repository, reps), base=base.commit,
                                     message=f"planted slowdown x{reps}")
        build = target.build_config(commit)
        assert build.ok, build.log_tail
        say(f"planted slowdown x{reps}: {args.trials} trials each way")
        rows.append((f"planted slowdown (rms_norm x{reps}) as candidate",
                     [verdict_between(base.commit, commit) for _ in range(args.trials)]))
        rows.append(("its removal as candidate (the slowed build is the best)",
                     [verdict_between(commit, base.commit) for _ in range(args.trials)]))
    table = ["| trials | n | kept | median tg estimate | median runs | max runs | median s per verdict | "
             "stopped clear / futile / cap | keeps the host's clock refuted |", "|---|---|---|---|---|---|---|---|---|"]
    refutations = []
    for name, judged in rows:
        vs = [v for v, _ in judged]
        refuted = [why for _, why in judged if why]
        refutations += [f"{name}: {why}" for why in refuted]
        kept = sum(v.kept for v in vs)
        est = [v.objective.estimate for v in vs if v.objective is not None]
        stops = " / ".join(str(sum(v.stopped == why for v in vs)) for why in ("clear", "futile", "max runs"))
        table.append(f"| {name} | {len(vs)} | {kept} ({kept / len(vs):.0%}) | "
                     f"{statistics.median(est):+.1%} | {statistics.median(v.runs_used for v in vs):.0f} | "
                     f"{max(v.runs_used for v in vs)} | {statistics.median(v.time_spent_s for v in vs):.0f} | "
                     f"{stops} | {len(refuted)} of {kept} |" if est
                     else f"| {name} | {len(vs)} | {kept} | n/a | n/a | n/a | n/a | n/a | n/a |")
    body = (f"Real llama.cpp builds in the sandbox, llama-bench pp{args.n_prompt} + tg{args.n_gen} (tg alone in "
            f"warm-ups and the blocks between guard checks), 2 threads, fa on, one repetition per run; the "
            f"evaluator's defaults (the sequential rule, at most {args.max_runs} runs per verdict), every verdict "
            f"pooling one A/A calibration of {args.calibration_pairs} pairs taken first: {calibration.describe()}. "
            f"Build configuration: {target.config.note}. Total {time.monotonic() - started:.0f} s.\n\n"
            + "\n".join(table) + "\n"
            + "".join(f"\n- refuted: {r}" for r in refutations) + ("\n" if refutations else ""))
    title = "Evaluator keep rule on real builds" + ("" if args.section == "evaluator-real" else f" ({args.section})")
    write_section(args.section, title, body)
    print(body)


if __name__ == "__main__":
    main()
