"""The profile step: where the baseline stands against the machine's limits, as facts the other roles read.

Text generation at batch 1 reads every weight once per token, so the machine's read bandwidth divided by the
bytes a token reads bounds tokens per second from above. The reference experiment's first, code-only wave spent
itself on SIMD tweaks of this memory-bound path (0.6-0.9%, inside the noise): saying up front how close tg is to
its roofline steers the research towards fewer bytes and fewer passes (fusions), not faster arithmetic.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from ...protocols import Sandbox
from ...records import BenchResult, Mount


@dataclass
class RooflineProfile:
    read_gbs: float
    bytes_per_token: int
    tg_limit: float          # tokens/s the bandwidth allows
    tg: float                # measured tokens/s (generation)
    pp: float                # measured tokens/s (prompt processing)
    tg_test: str
    pp_test: str
    facts: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def measure_read_bandwidth(sandbox: Sandbox, scratch: Path, *, threads: int, mib: int = 1024) -> float:
    """Best-of-5 read bandwidth (GB/s) inside the sandbox, with the benchmark's thread count."""
    scratch.mkdir(parents=True, exist_ok=True)
    src = scratch / "read_bandwidth.c"
    with resources.as_file(resources.files("readfirst.targets.llama_cpp") / "native" / "read_bandwidth.c") as f:
        shutil.copyfile(f, src)
    r = sandbox.run(f"gcc -O2 -march=native -fopenmp /bw/read_bandwidth.c -o /tmp/bw && "
                    f"OMP_NUM_THREADS={threads} OMP_PROC_BIND=spread /tmp/bw {mib}",
                    mounts=[Mount(scratch, "/bw", True)], timeout_s=300)
    if not r.ok:
        raise RuntimeError(f"the bandwidth probe failed: {r.output_tail[-500:]}")
    line = next(ln for ln in r.output_tail.splitlines() if ln.startswith("{"))
    return float(json.loads(line)["read_gbs"])


def make_profile(bench: BenchResult, *, read_gbs: float, bytes_per_token: int) -> RooflineProfile:
    tg_s = next((s for s in bench.samples if s.n_prompt == 0 and s.n_gen > 0), None)
    pp_s = next((s for s in bench.samples if s.n_gen == 0 and s.n_prompt > 0), None)
    tg = tg_s.mean_ts if tg_s else 0.0
    pp = pp_s.mean_ts if pp_s else 0.0
    limit = read_gbs * 1e9 / bytes_per_token if bytes_per_token else 0.0
    facts = [f"Machine: {bench.cpu}, {bench.threads} threads; read bandwidth measured in the sandbox: "
             f"{read_gbs:.1f} GB/s."]
    if limit and tg > 1.05 * limit:
        # Physically impossible: the probe was disturbed (or the model is cached in a way it does not see). A
        # wrong roofline steers every hypothesis, so none is stated.
        facts.append(f"The baseline generates {tg:.1f} t/s, above the {limit:.1f} t/s that the measured bandwidth "
                     f"allows for {bytes_per_token / 2**20:.0f} MiB per token: the bandwidth figure is not "
                     f"trustworthy, so whether generation is memory-bound is unknown.")
    else:
        facts.append(f"One generated token reads {bytes_per_token / 2**20:.0f} MiB of weights, so generation is "
                     f"bounded at {limit:.1f} t/s; the baseline generates {tg:.1f} t/s = "
                     f"{100 * tg / limit if limit else 0:.0f}% of that limit.")
        if limit and tg / limit > 0.6:
            facts.append("Generation is memory-bound: faster arithmetic (SIMD micro-tuning) will not move it; read "
                         "fewer bytes or make fewer passes over activations (operator fusion, fewer graph nodes, "
                         "less synchronization between threads).")
        else:
            facts.append("Generation is well below its bandwidth limit: overheads (thread synchronization, small "
                         "ops, graph scheduling, dequantization cost) leave room before memory becomes the wall.")
    if pp:
        facts.append(f"Prompt processing runs {pp:.1f} t/s and is compute-bound (weights are reused across the "
                     f"batch): matmul kernels, repacking and tiling decide it.")
    return RooflineProfile(read_gbs, bytes_per_token, limit, tg, pp, tg_s.test if tg_s else "",
                           pp_s.test if pp_s else "", facts)
