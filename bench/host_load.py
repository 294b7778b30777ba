"""What the foreign-load reading (sandbox/host_load.py) says on a quiet machine and beside a CPU hog: the basis of
the retake threshold (FOREIGN_MAX).

Each run is a real sandbox command pinned to the benchmark CPUs, spinning for `--seconds` (a short benchmark
run); its CommandResult.foreign_share is what the target's LoadWatch judges. Quiet runs first, then the same runs
with one `sha256sum /dev/zero` per CPU started outside readfirst. Writes its section of docs/PERFORMANCE.md.

    .venv/bin/python bench/host_load.py [--runs 12] [--seconds 1.5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

from readfirst.config import Paths  # noqa: E402
from readfirst.graph.deps import open_sandbox  # noqa: E402
from readfirst.sandbox.host_load import FOREIGN_MAX  # noqa: E402
from readfirst.sandbox.workers import bench_cpus  # noqa: E402


def shares(sandbox, cpus: str, runs: int, seconds: float) -> list[float]:
    spin = f"import time\nt = time.time()\nwhile time.time() - t < {seconds}: pass"
    out = []
    for i in range(runs):
        r = sandbox.run(f"python3 -c '{spin}'", cpuset=cpus, timeout_s=60)
        if not r.ok or r.foreign_share is None:
            raise SystemExit(f"run {i + 1} gave no reading (exit {r.exit_code}): {r.output_tail[-300:]}")
        out.append(r.foreign_share)
        print(f"· {len(out)}/{runs}: {r.foreign_share:.1%}", file=sys.stderr, flush=True)
    return out


def row(name: str, values: list[float]) -> str:
    over = sum(v > FOREIGN_MAX for v in values)
    return (f"| {name} | {len(values)} | {min(values):.1%} | {statistics.median(values):.1%} | {max(values):.1%} "
            f"| {over} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=12, help="runs in each condition")
    ap.add_argument("--seconds", type=float, default=1.5, help="how long each run spins")
    args = ap.parse_args()
    paths = Paths.resolve()
    sandbox = open_sandbox(paths, say=lambda m: print(f"· {m}", file=sys.stderr))
    cpus = bench_cpus(len(os.sched_getaffinity(0)))
    load_before = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    quiet = shares(sandbox, cpus, args.runs, args.seconds)
    hogs = [subprocess.Popen(["sha256sum", "/dev/zero"], stdout=subprocess.DEVNULL)
            for _ in os.sched_getaffinity(0)]
    try:
        busy = shares(sandbox, cpus, args.runs, args.seconds)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    body = f"""Load average when it started: {load_before}. Each run: a sandbox command pinned to CPUs {cpus}, spinning
{args.seconds:g} s; the share is what other processes used of those CPUs during the run (the busy time of the
CPUs less the container's own), as the target's retake rule reads it. The rule retakes a run above
{FOREIGN_MAX:.0%}.

| condition | runs | min | median | max | runs above {FOREIGN_MAX:.0%} |
|---|---|---|---|---|---|
{row("quiet machine", quiet)}
{row("one `sha256sum /dev/zero` per CPU beside it", busy)}

Quiet runs: {", ".join(f"{v:.1%}" for v in quiet)}. With the hog: {", ".join(f"{v:.1%}" for v in busy)}.
"""
    write_section("host-load", "Foreign load: a quiet machine against a CPU hog", body)
    print(body)


if __name__ == "__main__":
    main()
