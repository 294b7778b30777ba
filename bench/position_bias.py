"""Does a llama-bench run's figure depend on where it sits in an ABBA block?

The evaluator's blocks are ABBA, always baseline first, and most blocks measure tg alone (warm-ups, the blocks
between guard checks): the first run of a full block (pp + tg) follows a tg-only run and is always the
baseline's, and the baseline holds the outer positions. Two A/A calibrations on real builds read a pp512 bias
of -1.7% [-3.0%, -0.3%] and -1.8% [-4.6%, -0.2%] at the candidate's positions (4 pairs each). If the position
caused it, ABBA would need counterbalancing (BAAB every other block). This measures it on one build: cycles of
one tg-only run then four full runs; per cycle, the full run right after the tg-only one against the mean of
the three after it, and the two middle runs against the two outer ones (what an ABBA block of identical builds
reads as the candidate's effect), as log ratios.

    .venv/bin/python bench/position_bias.py [--cycles 12] [-p 512 -n 128]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

from readfirst.agents.statistics import speedup  # noqa: E402
from readfirst.config import Paths  # noqa: E402
from readfirst.graph.deps import compose_target  # noqa: E402
from readfirst.targets import make_spec  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=12)
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    say = lambda m: print(f"· {m}", file=sys.stderr, flush=True)  # noqa: E731
    spec = make_spec("llama.cpp", source="llama.cpp", options={"n_prompt": args.n_prompt, "n_gen": args.n_gen})
    _, target = compose_target(Paths.resolve(), spec, say=say)
    base = target.prepare()
    pp, tg = f"pp{args.n_prompt}", f"tg{args.n_gen}"

    def run(metrics: tuple[str, ...] | None) -> dict[str, float]:
        return target.measure(base.commit, base.variant, metrics=metrics).values

    started = time.monotonic()
    run(("tg",))  # warm-up, as the evaluator's
    cycles = []
    for c in range(args.cycles):
        run(("tg",))
        cycles.append([run(None) for _ in range(4)])
        say(f"cycle {c + 1}/{args.cycles}: {pp} " + " ".join(f"{r[pp]:.1f}" for r in cycles[-1]))
    def effect(ratios: list[float], test: str) -> str:
        e = speedup(np.array(ratios), metric=test, screen_outliers=False)
        return f"{e.estimate:+.1%} [{e.low:+.1%}, {e.high:+.1%}]"

    lines = []
    for test in (pp, tg):
        after_tg = [math.log(runs[0][test] / statistics.fmean(r[test] for r in runs[1:])) for runs in cycles]
        # an ABBA block's A/A "effect": the candidate's positions (2, 3) against the baseline's (1, 4)
        middle = [math.log(runs[1][test] * runs[2][test] / (runs[0][test] * runs[3][test])) / 2 for runs in cycles]
        by_position = " / ".join(f"{statistics.median(runs[i][test] for runs in cycles):.1f}" for i in range(4))
        lines.append(f"| {test} | {by_position} | {effect(after_tg, test)} | {effect(middle, test)} |")
    body = (f"One build (the baseline, {target.config.note}), llama-bench {pp} + {tg} at one repetition per run, "
            f"{args.cycles} cycles of a tg-only run then four full runs. 'after tg alone' is the full run right "
            f"after the tg-only run against the mean of the three full runs after it, per cycle; 'positions 2 and 3' "
            f"is what an ABBA block of identical builds reads as the candidate's effect (runs 2 and 3 against 1 and "
            f"4). Hodges-Lehmann estimates over cycles, 95% bootstrap intervals. "
            f"Total {time.monotonic() - started:.0f} s.\n\n"
            "| test | median t/s at positions 1 / 2 / 3 / 4 | run 1 (after tg alone) against runs 2-4 | "
            "positions 2 and 3 against 1 and 4 |\n|---|---|---|---|\n" + "\n".join(lines) + "\n")
    if not args.no_write:
        write_section("position-bias", "Does a run depend on its position in an ABBA block?", body)
    print(body)


if __name__ == "__main__":
    main()
