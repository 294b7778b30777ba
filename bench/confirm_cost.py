"""What the run's confirmation costs on llama.cpp: two builds from nothing and one more A/B at the default shapes.

The confirmation (agents.experiment.confirm_stack, the run's last step when something was kept) builds the final
stack and the baseline again from nothing (a fresh build directory, no compiler cache, llama-bench only) and
measures them against each other under the run's keep rule. This runs it as the run does on the pinned llama.cpp
and the run's model, with a stack that changes nothing the compiler sees (a comment in ops.cpp): an effect of
zero is the slowest verdict the rule reaches (futility or the cap), so the minutes are an upper bound for a real
stack. The clean artifacts of both commits are removed first, so both builds are timed. No A/A calibration is
pooled (a run pools its own): the verdict rests on its own pairs. Writes its section of docs/PERFORMANCE.md.

    .venv/bin/python bench/confirm_cost.py [--max-runs 62]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

from readfirst.agents.experiment import confirm_stack  # noqa: E402
from readfirst.config import Paths  # noqa: E402
from readfirst.graph.deps import compose_target  # noqa: E402
from readfirst.sources import git  # noqa: E402
from readfirst.targets import make_spec  # noqa: E402

OPS = "ggml/src/ggml-cpu/ops.cpp"


def comment_patch(repo: Path, commit: str) -> str:
    """A diff adding one comment line at the top of ops.cpp: the same object code."""
    first = git(repo, "show", f"{commit}:{OPS}").stdout.splitlines()[0]
    return (f"diff --git a/{OPS} b/{OPS}\n--- a/{OPS}\n+++ b/{OPS}\n@@ -1 +1,2 @@\n"
            f"+// confirmation cost benchmark: no code change\n {first}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-runs", type=int, default=62, help="the run cap (the run's default)")
    args = ap.parse_args()
    say = lambda m: print(f"· {m}", file=sys.stderr, flush=True)  # noqa: E731
    _, target = compose_target(Paths.resolve(), make_spec("llama.cpp", source="llama.cpp"), say=say)
    base = target.prepare()
    stack = target.commit_patch(comment_patch(target.repository, base.commit), base=base.commit,
                                message="confirmation cost benchmark")
    for commit in (base.commit, stack):
        shutil.rmtree(target.artifact_dir(commit, target.config_of(target.clean(base.variant))), ignore_errors=True)
    started = time.monotonic()
    record = confirm_stack(target, baseline=(base.commit, base.variant), best=(stack, base.variant),
                           max_runs=args.max_runs, say=say)
    wall = time.monotonic() - started
    if record.get("error"):
        raise SystemExit(f"the confirmation failed: {record['error']}")
    body = (f"The pinned llama.cpp ({target.config.note}), the run's model "
            f"(`{Path(base.variant['model']).name}`), pp{target.shape.n_prompt} + tg{target.shape.n_gen}, "
            f"{base.variant['run']['threads']} threads, the run cap {args.max_runs}; the stack is a comment in "
            f"`{OPS}` (no effect: the slowest verdict).\n\n"
            f"| step | minutes |\n|---|---:|\n"
            f"| two builds from nothing (baseline and stack; llama-bench only, no ccache) | "
            f"{record['build_minutes']:.1f} |\n"
            f"| the interleaved A/B ({record['pairs']} pairs, {record['decision']}) | {record['bench_minutes']:.1f} |\n"
            f"| the whole confirmation, wall | {wall / 60:.1f} |\n\n"
            f"Verdict: {record['reason']}\n\n"
            f"A run pays the baseline's clean build once per source and machine (its artifact is kept); every run "
            f"that kept something pays the stack's.\n")
    write_section("confirm-cost", "The confirmation: clean builds and one more A/B (issue 16)", body)
    print(body)


if __name__ == "__main__":
    main()
