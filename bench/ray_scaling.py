"""Scale-out through Ray: what the executor costs per experiment, and experiments per hour against nodes.

For 1, 2 and 3 worker nodes (each its own `ray start` process on this machine, 1 CPU each, beside a head that
runs nothing), through sandbox/ray_executor.RayExecutor:
  - the scheduling overhead: the wall time of one experiment that does nothing, driver to node and back
    (median of --calls sequential calls, after the nodes' actors exist);
  - experiments per hour: waves of one experiment per node, each experiment a fixed --seconds of waiting (a
    stand-in with a known cost, so the figure is the executor's and not this 2-core machine's: the nodes share
    its cores, so real builds and benchmarks would not scale here).
Writes its section of docs/PERFORMANCE.md.

    .venv/bin/python bench/ray_scaling.py [--calls 20] [--seconds 2] [--waves 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _report import write_section  # noqa: E402
from ray_local import LocalCluster  # noqa: E402


def idle_experiment(payload, target_of, say):
    """A stand-in experiment: waits as long as the hypothesis says, touches no target."""
    h = payload["hypothesis"]
    time.sleep(h["seconds"])
    return {"id": h["id"], "key": h["key"], "title": h["title"], "kind": "patch", "decision": "discard",
            "reason": "bench", "candidate": dict(payload["best"])}


def measure(workers: int, *, calls: int, seconds: float, waves: int) -> dict:
    import ray
    from readfirst.sandbox.ray_executor import RayExecutor
    nodes = LocalCluster(Path(tempfile.mkdtemp(prefix="rfbench-", dir="/tmp")))
    best = {"commit": "0" * 40, "variant": {}}
    try:
        nodes.start_head()
        for i in range(workers):
            nodes.start_worker(f"n{i}")
        executor = RayExecutor(nodes.address, {"name": "none"}, experiment=idle_experiment)
        try:
            assert len(executor.nodes()) == workers

            def call(i: int, s: float) -> None:
                executor({"id": f"H{i}", "key": f"k{i}", "title": f"h{i}", "kind": "patch", "seconds": s},
                         best=best, baseline=best)

            for i in range(workers):  # every node's actor exists and has run once
                call(-1 - i, 0.0)
            spans = []
            for i in range(calls):
                began = time.perf_counter()
                call(i, 0.0)
                spans.append(time.perf_counter() - began)
            began = time.perf_counter()
            for w in range(waves):
                threads = [threading.Thread(target=call, args=(1000 + w * workers + j, seconds))
                           for j in range(workers)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            wall = time.perf_counter() - began
        finally:
            executor.close()
            if ray.is_initialized():
                ray.shutdown()
    finally:
        nodes.stop()
    done = waves * workers
    return {"workers": workers, "overhead_ms": statistics.median(spans) * 1000,
            "overhead_p90_ms": sorted(spans)[int(0.9 * (len(spans) - 1))] * 1000,
            "per_hour": done / wall * 3600, "ideal_per_hour": workers * 3600 / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--waves", type=int, default=3)
    args = ap.parse_args()
    results = []
    for workers in (1, 2, 3):
        r = measure(workers, calls=args.calls, seconds=args.seconds, waves=args.waves)
        print(json.dumps(r), flush=True)
        results.append(r)
    lines = ["| nodes | overhead per experiment (median, p90) | experiments per hour | ideal |", "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['workers']} | {r['overhead_ms']:.0f} ms, {r['overhead_p90_ms']:.0f} ms | "
                     f"{r['per_hour']:.0f} | {r['ideal_per_hour']:.0f} |")
    body = "\n".join(lines) + f"""

The experiments are stand-ins that wait {args.seconds:g} s each ({args.waves} waves of one per node), so the
figures are the executor's: a round trip through Ray to a node's actor and back, and how close waves come to one
experiment per node at once. The nodes are `ray start` processes on this one machine and share its 2 cores: real
builds and benchmarks would not run faster here with more nodes (and share one machine lock when they share a
cache); on separate machines each node builds and measures alone. The overhead is small beside one experiment
(tens of seconds for LZ4 in the tests, minutes for llama.cpp)."""
    write_section("ray-scaling", "Scale-out through Ray: overhead and experiments per hour (issue 15)", body)


if __name__ == "__main__":
    main()
