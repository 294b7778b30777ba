"""The profile step: where the baseline stands against the machine's limits, as facts the other roles read.

Text generation at batch 1 reads every weight once per token, so the machine's read bandwidth divided by the
bytes a token reads bounds tokens per second from above. The reference experiment's first, code-only wave spent
itself on SIMD tweaks of this memory-bound path (0.6-0.9%, inside the noise): saying up front how close tg is to
its roofline steers the research towards fewer bytes and fewer passes (fusions), not faster arithmetic.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from ...protocols import Sandbox
from ...records import BenchResult, CommandResult, Mount
from ...sandbox.host_load import LoadWatch, is_busy


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
    busy: list[str] = field(default_factory=list)  # the measurements taken while other processes used the CPUs

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BandwidthReading:
    gbs: float
    foreign_share: float | None = None  # other processes' share of the CPUs while it ran (sandbox.host_load)


def read_bandwidth(sandbox: Sandbox, scratch: Path, *, threads: int, mib: int = 1024,
                   watch: LoadWatch | None = None) -> BandwidthReading:
    """Best-of-20 read bandwidth (GB/s) inside the sandbox, with the benchmark's thread count, and the load it ran
    under; with a `watch`, retaken while the machine is busy."""
    scratch.mkdir(parents=True, exist_ok=True)
    src = scratch / "read_bandwidth.c"
    with resources.as_file(resources.files("readfirst.targets.llama_cpp") / "native" / "read_bandwidth.c") as f:
        shutil.copyfile(f, src)
    # -O3, not -O2: at -O2 GCC 12 leaves the sum one scalar add chain, and the probe measured its adds: in CI it
    # read 24.1 GB/s while generation read 26.8, and the profile had to call the bandwidth untrustworthy
    def run() -> CommandResult:
        return sandbox.run(f"gcc -O3 -march=native -fopenmp /bw/read_bandwidth.c -o /tmp/bw && "
                           f"OMP_NUM_THREADS={threads} OMP_PROC_BIND=spread /tmp/bw {mib}",
                           mounts=[Mount(scratch, "/bw", True)], timeout_s=300)
    r, _ = (run(), 0) if watch is None else watch.take(
        run, lambda r: r.foreign_share if r.ok else None, what="the bandwidth probe")
    if not r.ok:
        raise RuntimeError(f"the bandwidth probe failed: {r.output_tail[-500:]}")
    line = next(ln for ln in r.output_tail.splitlines() if ln.startswith("{"))
    return BandwidthReading(float(json.loads(line)["read_gbs"]), r.foreign_share)


def make_profile(bench: BenchResult, *, read_gbs: float, bytes_per_token: int,
                 probe_share: float | None = None) -> RooflineProfile:
    """The roofline facts; none from a figure measured while other processes used the CPUs (`bench`'s foreign
    share, or the bandwidth probe's `probe_share`): a busy machine read tg at a third of its quiet speed, and
    the profile called the gap overheads worth working on."""
    tg_s = next((s for s in bench.samples if s.n_prompt == 0 and s.n_gen > 0), None)
    pp_s = next((s for s in bench.samples if s.n_gen == 0 and s.n_prompt > 0), None)
    tg = tg_s.mean_ts if tg_s else 0.0
    pp = pp_s.mean_ts if pp_s else 0.0
    limit = read_gbs * 1e9 / bytes_per_token if bytes_per_token else 0.0
    facts = [f"Machine: {bench.cpu}, {bench.threads} threads; read bandwidth measured in the sandbox: "
             f"{read_gbs:.1f} GB/s."]
    busy = [f"{what} ({share:.0%} of the CPUs)" for what, share in
            (("the benchmark", bench.foreign_share), ("the bandwidth probe", probe_share)) if is_busy(share)]
    if busy:
        facts.append(f"Other processes used the machine while {' and '.join(busy)} ran, and it stayed busy "
                     f"through every retake: the measured figures (tg {tg:.1f} t/s, {read_gbs:.1f} GB/s) are "
                     f"unreliable, so how far generation is from its bandwidth limit is unknown.")
    elif limit and tg > 1.05 * limit:
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
        caveat = " (measured on a busy machine: unreliable)" if is_busy(bench.foreign_share) else ""
        facts.append(f"Prompt processing runs {pp:.1f} t/s{caveat} and is compute-bound (weights are reused across "
                     f"the batch): matmul kernels, repacking and tiling decide it.")
    return RooflineProfile(read_gbs, bytes_per_token, limit, tg, pp, tg_s.test if tg_s else "",
                           pp_s.test if pp_s else "", facts, busy)


# -- where the time goes, by ggml op -----------------------------------------------------------------------------

OP_PROFILE_TG_TOKENS = 32   # generation's shares settle within a few tokens; the full tg128 would add minutes
MAX_OVERHEAD = 0.5          # a profile that slowed the run by more than this is reported, not trusted


def op_profile_source(scratch: Path) -> Path:
    """native/op_profile.cpp copied to `scratch` (mounted into the sandbox, where it is compiled)."""
    scratch.mkdir(parents=True, exist_ok=True)
    with resources.as_file(resources.files("readfirst.targets.llama_cpp") / "native" / "op_profile.cpp") as f:
        shutil.copyfile(f, scratch / "op_profile.cpp")
    return scratch


def op_summary(raw: dict) -> dict:
    """op_profile's JSON as shares: per phase, each op's seconds, share of the op total, and calls per token, most
    time first; the ISA paths compiled in (llama's system info, the flags set to 1); and whether it holds together
    (the ops' sum within the profiled wall time, the profiling overhead bounded)."""
    phases = {}
    for name, ph in (raw.get("phases") or {}).items():
        ops = [o for o in ph.get("ops") or [] if o.get("seconds", 0) >= 0]
        total = sum(o["seconds"] for o in ops)
        tokens = max(1, int(ph.get("tokens") or 1))
        wall, plain = float(ph.get("seconds") or 0), float(ph.get("unprofiled_seconds") or 0)
        problems = []
        if not ops or total <= 0:
            problems.append("no op was timed")
        if wall and total > 1.05 * wall:
            problems.append(f"the ops add up to {total:.3f} s, more than the {wall:.3f} s the profiled run took")
        overhead = wall / plain - 1 if plain > 0 else None
        if overhead is not None and overhead > MAX_OVERHEAD:
            problems.append(f"timing op by op slowed it by {overhead:.0%}")
        rows = sorted(({"op": o["op"], "seconds": o["seconds"], "share": o["seconds"] / total if total else 0.0,
                        "per_token": o["count"] / tokens} for o in ops), key=lambda o: -o["seconds"])
        phases[name] = {"tokens": tokens, "seconds": wall, "unprofiled_seconds": plain, "op_seconds": total,
                        "overhead": overhead, "ops": rows, "problems": problems}
    info = str(raw.get("system_info") or "")
    # "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | ... | REPACK = 1 |": the backend's name before the first flag
    isa = list(dict.fromkeys(part.split("=")[0].split(":")[-1].strip() for part in info.split("|")
                             if part.strip().endswith("= 1")))
    return {"phases": phases, "isa": isa, "system_info": info}


def op_facts(summary: dict, *, top: int = 6) -> list[str]:
    """The profile's lines for the agents: where each phase's time goes, or why that is unknown."""
    facts = []
    for name, what in (("tg", "generation"), ("pp", "prompt processing")):
        ph = summary["phases"].get(name)
        if ph is None:
            continue
        if ph["problems"]:
            facts.append(f"Where {what}'s time goes is unknown: the per-op profile does not hold together "
                         f"({'; '.join(ph['problems'])}).")
            continue
        shown = ph["ops"][:top]
        rest = 1 - sum(o["share"] for o in shown)
        parts = [f"{o['op']} {o['share']:.0%} ({o['per_token']:g}/token)" if name == "tg" else
                 f"{o['op']} {o['share']:.0%}" for o in shown]
        overhead = (f"{ph['overhead']:.0%} profiling overhead" if ph["overhead"] is not None
                    else "overhead not measured")
        facts.append(f"Where {what}'s time goes (ggml ops timed one by one over {ph['tokens']} tokens, "
                     f"{overhead}): " + ", ".join(parts)
                     + (f"; everything else {rest:.0%}" if rest > 0.005 else "")
                     + ". A change to one op can save at most its share.")
    if summary["isa"]:
        facts.append("CPU paths compiled into this build (ggml's system info): " + ", ".join(summary["isa"]) + ".")
    return facts
