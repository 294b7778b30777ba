"""Where the baseline's time goes by ggml op, at the run's default shapes, and what the profile costs.

The profile step times every op of pp512 and of 32 generated tokens one by one (native/op_profile.cpp through the
scheduler's eval callback) on the baseline build and the run's model. This runs it as the profile step does,
`--rounds` times, and reports per phase: the top ops' shares (median over rounds, and their spread), the
profiling overhead (the profiled pass against the same work without the callback), the wall time of the whole
probe (compile included), and the facts the agents are handed. Writes its section of docs/PERFORMANCE.md.

    .venv/bin/python bench/op_profile.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

from readfirst.config import Paths  # noqa: E402
from readfirst.graph.deps import compose_target  # noqa: E402
from readfirst.targets import make_spec  # noqa: E402
from readfirst.targets.llama_cpp.profile import op_facts  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="profiles taken (the shares' spread is over these)")
    ap.add_argument("--top", type=int, default=8, help="ops shown per phase")
    args = ap.parse_args()
    say = lambda m: print(f"· {m}", file=sys.stderr, flush=True)  # noqa: E731
    _, target = compose_target(Paths.resolve(), make_spec("llama.cpp", source="llama.cpp"), say=say)
    base = target.prepare()
    target.op_profile(base.commit, base.variant)  # discarded: the first compile and the page cache
    profiles, walls = [], []
    for r in range(args.rounds):
        t0 = time.monotonic()
        profiles.append(target.op_profile(base.commit, base.variant))
        walls.append(time.monotonic() - t0)
        say(f"profile {r + 1}/{args.rounds}: {walls[-1]:.1f} s")
    last = profiles[-1]
    parts = [f"The baseline build ({target.config.note}), the run's model (`{Path(base.variant['model']).name}`), "
             f"{base.variant['run']['threads']} threads, flash attention "
             f"{'on' if base.variant['run']['flash_attn'] else 'off'}; {args.rounds} profiles after a discarded one. "
             f"Whole probe (compile and both phases, in the sandbox): median {statistics.median(walls):.1f} s.\n"]
    for phase, what in (("pp", "prompt processing"), ("tg", "generation")):
        rounds = [p["phases"][phase] for p in profiles]
        shares = {}
        for ph in rounds:
            for o in ph["ops"]:
                shares.setdefault(o["op"], []).append(o["share"])
        top = sorted(shares, key=lambda k: -statistics.median(shares[k]))[:args.top]
        # calls per generated token; for the prompt, calls per pass (one graph per micro-batch)
        scale = 1 if phase == "tg" else last["phases"][phase]["tokens"]
        per_token = {o["op"]: o["per_token"] * scale for o in last["phases"][phase]["ops"]}
        overheads = [ph["overhead"] for ph in rounds if ph["overhead"] is not None]
        parts.append(f"### {what} ({rounds[0]['tokens']} tokens)\n\nprofiled pass median "
                     f"{statistics.median(ph['seconds'] for ph in rounds):.2f} s, the same work without the callback "
                     f"{statistics.median(ph['unprofiled_seconds'] for ph in rounds):.2f} s (overhead median "
                     f"{statistics.median(overheads):.0%}); the ops add up to "
                     f"{statistics.median(ph['op_seconds'] / ph['seconds'] for ph in rounds):.0%} of the profiled "
                     f"pass.\n\n| op (weights' type and shape for matmuls) | share, median | min-max | "
                     f"{'calls per token' if phase == 'tg' else 'calls per prompt'} |"
                     f"\n|---|---|---|---|")
        for k in top:
            s = shares[k]
            parts.append(f"| {k} | {statistics.median(s):.1%} | {min(s):.1%}-{max(s):.1%} | "
                         f"{per_token.get(k, 0):g} |")
        parts.append("")
    parts.append("The facts handed to the agents (last profile):\n")
    parts += [f"- {f}" for f in op_facts(last)]
    body = "\n".join(parts) + "\n"
    write_section("op-profile", "Where the baseline's time goes, by ggml op (the profile step)", body)
    print(body)


if __name__ == "__main__":
    main()
