"""Sandbox overhead: the same llama.cpp build benchmarked natively and in the container, and build times.

Measures, on this machine, in one run (benchmarks serialized, native and container runs interleaved):
  - tg and pp of one build, natively (the build's binaries run on the host) and in the sandbox: ratio of medians;
  - cold full build time (fresh build directory, ccache disabled);
  - incremental rebuild time after a one-file patch to ggml-cpu/ops.cpp;
  - base image build time (with --image; it rebuilds the image).
Writes its section of docs/PERFORMANCE.md.

    .venv/bin/python bench/sandbox_overhead.py [--rounds 5] [--image] [--skip-cold]
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

from readfirst.config import Paths  # noqa: E402
from readfirst.graph.deps import compose_target  # noqa: E402
from readfirst.targets import make_spec  # noqa: E402
from readfirst.sandbox import image  # noqa: E402
from readfirst.targets.llama_cpp.target import BenchOptions, parse_bench_json  # noqa: E402
from readfirst.records import BuildConfig  # noqa: E402
from readfirst.sources import git  # noqa: E402


def native_bench(bin_dir: Path, model: Path, options: BenchOptions) -> dict[str, float]:
    cmd = [str(bin_dir / "llama-bench"), "-m", str(model), "-p", str(options.n_prompt), "-n",
           str(options.n_gen), "-t", str(options.threads), "-fa", str(int(options.flash_attn)), "-r",
           str(options.repetitions), "-o", "json"]
    env = {"PATH": os.environ["PATH"], "LD_LIBRARY_PATH": str(bin_dir)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    result = parse_bench_json(proc.stdout, options=options, config=BuildConfig(note="native"), model=model.name)
    return {s.test: s.mean_ts for s in result.samples}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved native/container rounds (median of these)")
    ap.add_argument("--image", action="store_true", help="also time a rebuild of the base image")
    ap.add_argument("--skip-cold", action="store_true", help="skip the cold full build (minutes)")
    args = ap.parse_args()

    paths = Paths.resolve()
    load_before = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    say = lambda m: print(f"· {m}", file=sys.stderr, flush=True)  # noqa: E731
    rows: list[str] = []

    if args.image:
        from readfirst.sandbox.engine import require_engine
        t = time.monotonic()
        image.ensure_image(require_engine(), rebuild=True, say=say)
        rows.append(f"| base image build (debootstrap + docker import) | {time.monotonic() - t:.0f} s |")

    _, target = compose_target(paths, make_spec("llama.cpp", source="llama.cpp"), say=say)
    baseline = target.prepare()
    model = Path(baseline.variant["model"])

    if not args.skip_cold:
        say("cold full build (fresh build directory, ccache disabled)")
        cold_worker = 7
        shutil.rmtree(paths.builds / target.source.key / f"w{cold_worker}", ignore_errors=True)
        target.use_ccache = False
        cold = target.build_config(baseline.commit, worker=cold_worker)
        target.use_ccache = True
        assert cold.ok, cold.log_tail
        rows.append(f"| cold full build (llama-bench, llama-perplexity, llama-quantize, 4 tests), no ccache | "
                    f"{cold.duration_s:.0f} s |")
        shutil.rmtree(paths.builds / target.source.key / f"w{cold_worker}", ignore_errors=True)

    say("incremental rebuild after a one-file patch")
    ops = "ggml/src/ggml-cpu/ops.cpp"
    text = git(target.repository, "show", f"baseline:{ops}").stdout
    patched = text.replace("// TODO: optimize", "// TODO: optimize (touched by the benchmark)", 1)
    patch = f"diff --git a/{ops} b/{ops}\n" + "".join(difflib.unified_diff(
        text.splitlines(True), patched.splitlines(True), f"a/{ops}", f"b/{ops}"))
    commit = target.commit_patch(patch, base=baseline.commit, message="bench: touch ops.cpp")
    target.build_config(baseline.commit)  # make sure the worker is at the baseline and up to date
    inc = target.build_config(commit)
    rows.append(f"| incremental rebuild after a one-file patch (`{ops}`) | {inc.duration_s:.1f} s |")
    back = target.build_config(baseline.commit)
    rows.append(f"| rebuild back to the baseline (same file) | {back.duration_s:.1f} s |")

    options = BenchOptions(repetitions=1)
    bin_dir = target.artifact_dir(baseline.commit) / "bin"  # the very binaries the sandbox runs
    native, container = {"pp512": [], "tg128": []}, {"pp512": [], "tg128": []}
    for r in range(args.rounds):
        say(f"round {r + 1}/{args.rounds}: native, then container")
        order = [("native", native), ("container", container)]
        if r % 2:
            order.reverse()  # alternate which goes first, so drift does not favour one side
        for name, sink in order:
            if name == "native":
                res = native_bench(bin_dir, model, options)
            else:
                res = {s.test: s.mean_ts for s in target.bench(baseline.commit, model=model, options=options).samples}
            for k in sink:
                sink[k].append(res[k])
    bench_rows = []
    for k in ("pp512", "tg128"):
        n, c = statistics.median(native[k]), statistics.median(container[k])
        bench_rows.append(f"| {k} | {n:.2f} | {c:.2f} | {c / n:.3f} | {', '.join(f'{x:.1f}' for x in native[k])} | "
                          f"{', '.join(f'{x:.1f}' for x in container[k])} |")

    body = (
        f"Load average when it started: {load_before}. "
        f"Build configuration: {target.config.note}; model: synthetic TinyLlama-1.1B Q4_0 "
        f"({model.stat().st_size / 2**20:.1f} MiB); llama-bench, 2 threads, flash attention on, "
        f"{args.rounds} interleaved rounds of one repetition each.\n\n"
        "| throughput (t/s) | native median | sandbox median | sandbox / native | native runs | sandbox runs |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(bench_rows) + "\n\n"
        "| build step | time |\n|---|---|\n" + "\n".join(rows) + "\n"
    )
    write_section("sandbox", "Sandbox overhead and build times", body)
    print(body)
    print(json.dumps({"native": native, "container": container}))


if __name__ == "__main__":
    main()
