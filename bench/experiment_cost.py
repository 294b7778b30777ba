"""What one experiment costs, target by target: build, checks, and one A/B verdict, through the real pipeline
(agents.experiment.run_experiment) and the real sandbox.

- config target: the LZ4 harness of the tests (lz4.c from the lz4 4.4.5 sdist, tests/config_project.py); two
  candidates: the fork's fix (a redundant pass removed: a decisive win) and a comment-only change (no effect);
- llama.cpp: a comment-only change to ggml-cpu/ops.cpp (a one-file incremental build, the ctest subset, the KLD
  check, then A/B at the shape given).

Each candidate is a fresh commit (a unique comment), so its build is real, not a reused one.
Writes the section `experiment-cost` of docs/PERFORMANCE.md.

    python bench/experiment_cost.py [-p 64 -n 16] [--skip-llama]
"""

from __future__ import annotations

import argparse
import difflib
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _report import write_section  # noqa: E402
from config_project import SLOWDOWN, make_project  # noqa: E402

from readfirst.agents.experiment import evaluator_for, run_experiment  # noqa: E402
from readfirst.config import Paths  # noqa: E402
from readfirst.graph.deps import compose_target  # noqa: E402
from readfirst.sources import git  # noqa: E402
from readfirst.targets import make_spec  # noqa: E402


def patch(repo: Path, path: str, old: str, new: str) -> str:
    before = git(repo, "show", f"baseline:{path}").stdout
    assert old in before, f"{path}: anchor {old[:40]!r} not found"
    after = before.replace(old, new, 1)
    return f"diff --git a/{path} b/{path}\n" + "".join(difflib.unified_diff(
        before.splitlines(True), after.splitlines(True), f"a/{path}", f"b/{path}"))


def one(target, baseline, title: str, diff: str, say) -> dict:
    h = {"id": "H" + uuid.uuid4().hex[:8], "key": title, "kind": "patch", "title": title, "change": {"patch": diff}}
    t0 = time.monotonic()
    row = run_experiment(h, target=target, best={"commit": baseline.commit, "variant": baseline.variant},
                         baseline=baseline, evaluator_config=evaluator_for(target), say=say)
    row["wall_s"] = time.monotonic() - t0
    return row


def line(target_name: str, title: str, row: dict) -> str:
    d = row.get("durations") or {}
    v = row.get("verdict") or {}
    runs = v.get("runs") or []
    per_run = sum(r["duration_s"] for r in runs) / len(runs) if runs else 0
    estimate = "" if row.get("speedup") is None else f"{row['speedup']:+.1%} [{row['ci_low']:+.1%}, {row['ci_high']:+.1%}]"
    return (f"| {target_name} | {title} | {d.get('build', 0):.1f} | {d.get('checks', 0):.1f} | "
            f"{d.get('bench', 0):.1f} | {v.get('runs_used', 0)} | {per_run:.2f} | {row['wall_s']:.0f} | "
            f"{row['decision']} {estimate} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-p", "--n-prompt", type=int, default=64, help="llama.cpp: prompt tokens per run")
    ap.add_argument("-n", "--n-gen", type=int, default=16, help="llama.cpp: generated tokens per run")
    ap.add_argument("--skip-llama", action="store_true")
    args = ap.parse_args()
    say = lambda m: print(f"· {m}", file=sys.stderr, flush=True)  # noqa: E731
    paths = Paths.resolve()
    rows: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="readfirst-cost-") as tmp:
        project = make_project(Path(tmp) / "lz4", paths.sdists)
        _, lz4 = compose_target(paths, make_spec(None, source=str(project)), say=say)
        t0 = time.monotonic()
        base = lz4.prepare()
        rows.append(f"| lz4 (config) | baseline: build, tests, one bench run | {base.build_s:.1f} | "
                    f"{sum(c.duration_s for c in base.checks.results):.1f} | | | | {time.monotonic() - t0:.0f} | |")
        tag = uuid.uuid4().hex[:8]
        fix = patch(lz4.repository, "lz4/lz4.c", SLOWDOWN, f"    /* {tag} */\n")
        rows.append(line("lz4 (config)", "the fork's fix (decisive win)", one(lz4, base, "fix", fix, say)))
        neutral = patch(lz4.repository, "lz4/lz4.c", "int LZ4_compress_default(",
                        f"/* {tag} */\nint LZ4_compress_default(")
        rows.append(line("lz4 (config)", "a comment (no effect)", one(lz4, base, "comment", neutral, say)))
    if not args.skip_llama:
        spec = make_spec("llama.cpp", source="llama.cpp", options={"n_prompt": args.n_prompt, "n_gen": args.n_gen})
        _, llama = compose_target(paths, spec, say=say)
        base = llama.prepare()
        ops = "ggml/src/ggml-cpu/ops.cpp"
        neutral = patch(llama.repository, ops, "// TODO: optimize", f"// TODO: optimize ({uuid.uuid4().hex[:8]})")
        rows.append(line(f"llama.cpp (pp{args.n_prompt}+tg{args.n_gen})", "a comment in ops.cpp (no effect)",
                         one(llama, base, "comment", neutral, say)))
    body = ("One experiment through the real pipeline (`run_experiment`: commit, build, checks, then the evaluator's "
            "interleaved A/B against the baseline with its defaults: 1+1 warm-up runs, ABBA blocks, keep from 6 "
            "pairs, at most 26 runs). Seconds; 'per run' is one benchmark run (container start, copy, the bench). "
            f"Total {time.monotonic() - started:.0f} s.\n\n"
            "| target | candidate | build s | checks s | A/B s | runs | s per run | wall s | verdict |\n"
            "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    write_section("experiment-cost", "Cost of one experiment, per target", body)
    print(body)


if __name__ == "__main__":
    main()
