"""What one benchmark run costs at the default shapes, and what it would cost measuring only what decides.

The evaluator's unit of work is one llama-bench invocation. Today every run measures pp512 and tg128, each after
llama-bench's own warm-up pass (a whole pp512 pass before pp, one token before tg), although a tg objective
decides on tg alone. This measures, on the baseline build, interleaved round by round so drift hits every shape
alike: the run's wall time in the sandbox, and the tg figure it reports, for
- pp512 + tg128 with llama-bench's warm-up (what runs today),
- tg128 alone with the warm-up,
- tg128 alone without it (`--no-warmup`): the evaluator already discards its own first run of each build, so the
  question is whether the first token of a fresh process is slower than the rest, not whether caches are cold.
Writes its section of docs/PERFORMANCE.md.

    .venv/bin/python bench/run_shape_cost.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

from readfirst.config import Paths  # noqa: E402
from readfirst.graph.deps import compose_target  # noqa: E402
from readfirst.targets import make_spec  # noqa: E402
from readfirst.targets.llama_cpp.target import BenchOptions  # noqa: E402

DEFAULT = BenchOptions(repetitions=1)
SHAPES = [("pp512 + tg128, llama-bench warm-up (today)", DEFAULT),
          ("tg128 alone, llama-bench warm-up", replace(DEFAULT, n_prompt=0)),
          ("tg128 alone, --no-warmup", replace(DEFAULT, n_prompt=0, warmup=False))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (one run of every shape each)")
    args = ap.parse_args()
    say = lambda m: print(f"· {m}", file=sys.stderr, flush=True)  # noqa: E731
    paths = Paths.resolve()
    _, target = compose_target(paths, make_spec("llama.cpp", source="llama.cpp"), say=say)
    base = target.prepare()
    model = Path(base.variant["model"])
    started = time.monotonic()
    for _, options in SHAPES:  # one discarded run each: the page cache and the first container start
        target.bench(base.commit, model=model, options=options)
    walls: dict[str, list[float]] = {name: [] for name, _ in SHAPES}
    tg: dict[str, list[float]] = {name: [] for name, _ in SHAPES}
    for r in range(args.rounds):
        order = SHAPES if r % 2 == 0 else SHAPES[::-1]  # alternate the order so a drift within a round cancels
        for name, options in order:
            result = target.bench(base.commit, model=model, options=options)
            walls[name].append(result.duration_s)
            tg[name].append(next(s.mean_ts for s in result.samples if s.test.startswith("tg")))
        say(f"round {r + 1}/{args.rounds} done")
    today = SHAPES[0][0]
    rows = ["| shape | runs | wall s per run (median) | of today's | tg128 t/s (mean ± SD) | tg vs today |",
            "|---|---|---|---|---|---|"]
    for name, _ in SHAPES:
        w, t = walls[name], tg[name]
        ratio = [math.log(a / b) for a, b in zip(t, tg[today])]
        rows.append(f"| {name} | {len(w)} | {statistics.median(w):.1f} | "
                    f"{statistics.median(w) / statistics.median(walls[today]):.0%} | "
                    f"{statistics.mean(t):.2f} ± {statistics.stdev(t):.2f} | "
                    f"{math.expm1(statistics.mean(ratio)):+.1%} |")
    body = (f"The baseline build ({target.config.note}), the run's model (`{model.name}`), 2 threads, fa on, one "
            f"repetition per run as the evaluator runs them; {args.rounds} interleaved rounds after one discarded "
            f"run of each shape. 'tg vs today' is the mean per-round log ratio of the tg figure against today's "
            f"shape (the pairs share a round). Total {time.monotonic() - started:.0f} s.\n\n" + "\n".join(rows) + "\n")
    write_section("run-shape-cost", "One benchmark run: what it costs at the default shapes", body)
    print(body)


if __name__ == "__main__":
    main()
