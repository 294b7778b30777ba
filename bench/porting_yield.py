"""What reading ik_llama.cpp yields offline: candidates per source for llama.cpp, and what the fork's candidates
cost and become when they are tried for real.

1. The offline policy's candidates at the main job's settings (the pinned llama.cpp and ik_llama.cpp sdists,
   the fork read at --fork-subdir, the profile's hot symbols for the model type): per source, and the fork
   changes dropped before any experiment, per reason.
2. The first N fork candidates in the order a run tries them, each through the real pipeline
   (agents.experiment.run_experiment: commit, incremental build, the ctest subset and the KLD check, then the
   interleaved A/B against the baseline): how many build, how many pass the checks, the verdicts, and the cost
   of each stage.

Writes the section `porting-yield` of docs/PERFORMANCE.md.

    python bench/porting_yield.py [--try 6] [-p 64 -n 16] [--max-runs 14] [--fork-subdir ggml/src ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

from readfirst.agents import porting  # noqa: E402
from readfirst.agents.experiment import evaluator_for, run_experiment  # noqa: E402
from readfirst.agents.offline_policy import ForkSources, propose  # noqa: E402
from readfirst.config import Paths  # noqa: E402
from readfirst.graph.deps import compose_target, open_fork_trees  # noqa: E402
from readfirst.graph.workflow import _ranker  # noqa: E402
from readfirst.sources import GitTree, merge_file  # noqa: E402
from readfirst.targets import make_spec  # noqa: E402
from readfirst.targets.llama_cpp.target import hot_symbols  # noqa: E402

MAIN_JOB_SUBDIRS = ["ggml/src/ggml.c", "ggml/src/ggml-quants.c", "ggml/src/iqk", "ggml/src/llamafile"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--try", dest="n_try", type=int, default=6, help="fork candidates tried for real")
    ap.add_argument("-p", "--n-prompt", type=int, default=64)
    ap.add_argument("-n", "--n-gen", type=int, default=16)
    ap.add_argument("--max-runs", type=int, default=14)
    ap.add_argument("--fork-subdir", action="append", default=None)
    args = ap.parse_args()
    subdirs = args.fork_subdir or MAIN_JOB_SUBDIRS
    paths = Paths.resolve()
    say = lambda m: print(f"· {m}", flush=True)  # noqa: E731
    _, target = compose_target(paths, make_spec("llama.cpp", source="llama.cpp", options={
        "n_prompt": args.n_prompt, "n_gen": args.n_gen}), say=say)
    baseline = target.prepare()
    forks = open_fork_trees(paths, ["ik_llama.cpp"], subdirs)
    current = GitTree(target.name, target.repository, baseline.commit)
    symbols = hot_symbols(target.quant, flash_attn=bool(baseline.variant["run"]["flash_attn"]))
    t0 = time.monotonic()
    proposal = propose([], variants=target.variants(baseline.variant), tried=set(), profile_finding="Fprofile",
                       forks=ForkSources(current=current, base=current, forks=forks, hot_paths=target.hot_paths,
                                         merge_file=merge_file, rank=_ranker(symbols)))
    propose_s = time.monotonic() - t0
    stats = proposal.stats()
    fork_made = [h for h in proposal.hypotheses if h["source_kind"] == "fork"]
    hot = [h for h in fork_made if _ranker(symbols)(h["where"].split()[-1]) < len(symbols)]
    say(f"candidates: {stats['candidates_by_source']}; dropped: {stats['dropped']}; {propose_s:.1f} s")

    rows = []
    for h in fork_made[:args.n_try]:
        say(f"trying: {h['title']}")
        t = time.monotonic()
        row = run_experiment(h, target=target, best={"commit": baseline.commit, "variant": baseline.variant},
                             baseline=baseline, evaluator_config=evaluator_for(target, max_runs=args.max_runs),
                             say=say)
        row["wall_s"] = time.monotonic() - t
        rows.append(row)
        say(f"  {row['decision']} at {row['verdict']['gate']}: {row['reason'][:160]}")

    built = [r for r in rows if (r.get("build") or {}).get("ok")]
    checked = [r for r in built if r.get("checks") and all(c["passed"] for c in r["checks"]["results"])]
    lines = [
        f"Main job settings: llama.cpp (pinned sdist) against ik_llama.cpp read at `{' '.join(subdirs)}`, model "
        f"type {target.quant}, bench shape pp{args.n_prompt}+tg{args.n_gen}, A/B at most {args.max_runs} runs.",
        "",
        f"**Candidates by source** (one proposal, {propose_s:.1f} s to compute): "
        + ", ".join(f"{k} {n}" for k, n in stats["candidates_by_source"].items())
        + f"; {len(hot)} of the fork's are in the profile's hot symbols ({', '.join(symbols[:4])}...).",
        "",
        "**Fork changes dropped before any experiment**: "
        + (", ".join(f"{n} {r}" for r, n in stats["dropped"].items()) or "none") + ".",
        "",
        f"**The first {len(rows)} fork candidates, tried for real**: {len(built)} built, {len(checked)} passed the "
        f"checks, {sum(r['decision'] == 'keep' for r in rows)} kept.",
        "",
        "| candidate | lines | build s | checks s | bench s | gate | decision | reason |",
        "|---|---:|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        d = r.get("durations") or {}
        changed = sum(1 for ln in (r.get("patch") or "").splitlines() if ln[:1] in "+-" and ln[:3] not in ("+++", "---"))
        lines.append(f"| {r['title']} | {changed} | {d.get('build', 0):.1f} | {d.get('checks', 0):.1f} | "
                     f"{d.get('bench', 0):.1f} | {r['verdict']['gate']} | {r['decision']} | "
                     f"{r['reason'][:140].replace('|', '/')} |")
    if rows:
        n = len(rows)
        lines += ["", f"Cost per candidate, mean of {n}: build {sum((r.get('durations') or {}).get('build', 0) for r in rows) / n:.1f} s, "
                      f"checks {sum((r.get('durations') or {}).get('checks', 0) for r in rows) / n:.1f} s, "
                      f"verdict {sum((r.get('durations') or {}).get('bench', 0) for r in rows) / n:.1f} s, "
                      f"wall {sum(r['wall_s'] for r in rows) / n:.1f} s."]
    lines += ["", "Dropped, by reason, with examples:", ""]
    by_reason: dict[str, list[str]] = {}
    for d in proposal.dropped:
        by_reason.setdefault(d["reason"], []).append(f"{d['what']}" + (f" ({d['detail'][:80]})" if d["detail"] else ""))
    for reason, items in by_reason.items():
        lines.append(f"- {reason} ({porting.REASONS.get(reason, '')}): {'; '.join(items[:3])}")
    write_section("porting-yield", "Porting yield: what ik_llama.cpp becomes offline", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
