"""End to end on the real thing: the pinned llama.cpp sdist built in the sandbox, the synthetic model, llama-bench,
the ctest subset and the logits check, with a harmless and a numerics-breaking patch to a CPU kernel.

The build, source and model are cached in the shared cache, so only the first run on a machine pays for them.
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
import uuid

import pytest

from pathlib import Path

from readfirst.config import Paths
from readfirst.errors import PatchRejected
from readfirst.graph.deps import compose_target
from readfirst.sources import git
from readfirst.targets import make_spec
from readfirst.targets.llama_cpp.model import ModelShape, validate_gguf
from readfirst.targets.llama_cpp.target import BenchOptions

pytestmark = [pytest.mark.docker, pytest.mark.slow]

OPS = "ggml/src/ggml-cpu/ops.cpp"
SUM_FORWARD = "                for (int64_t i00 = 0; i00 < ne00; i00++) {\n                    sum += (ggml_float)(x[i00] * x[i00]);"
SUM_BACKWARD = "                for (int64_t i00 = ne00 - 1; i00 >= 0; i00--) {\n                    sum += (ggml_float)(x[i00] * x[i00]);"
SCALE = "                const float scale = 1.0f/sqrtf(mean + eps);"
WRONG_SCALE = "                const float scale = 1.25f/sqrtf(mean + eps);"


def make_patch(repo, path: str, old: str, new: str) -> str:
    """A real unified diff against the baseline, replacing the first occurrence of `old`."""
    before = git(repo, "show", f"baseline:{path}").stdout
    assert old in before, f"{path} changed upstream: the test's anchor is gone"
    after = before.replace(old, new, 1)
    lines = difflib.unified_diff(before.splitlines(True), after.splitlines(True), f"a/{path}", f"b/{path}")
    return f"diff --git a/{path} b/{path}\n" + "".join(lines)


@pytest.fixture(scope="module")
def llama(docker_client, base_image, shared_cache, tmp_path_factory):
    paths = Paths(home=tmp_path_factory.mktemp("e2e-home"), cache=shared_cache)
    notes: list[str] = []
    _, target = compose_target(paths, make_spec("llama.cpp", source="llama.cpp"), say=notes.append)
    baseline = target.prepare()
    return target, baseline, Path(baseline.variant["model"])


def test_the_baseline_builds_passes_its_tests_and_the_model_has_tinyllama_shapes(llama):
    target, baseline, model = llama
    tests = baseline.checks.get("tests")
    assert baseline.checks.ok and tests is not None
    assert {c["name"] for c in tests.evidence["cases"]} >= {"test-quantize-fns", "test-rope"}
    assert target.build(baseline.commit, baseline.variant).reused  # the baseline's build is kept and reused
    info = validate_gguf(model)
    assert info["architecture"] == "llama"
    assert info["tensors"] == 3 + 9 * ModelShape().n_layer
    # TinyLlama 1.1B in Q4_0 is 606.5 MiB; ours has the same shapes and types.
    assert 590 < info["bytes"] / 2**20 < 625


def test_bench_returns_every_sample_with_build_and_machine(llama):
    target, baseline, model = llama
    result = target.bench(baseline.commit, model=model, options=BenchOptions(n_prompt=32, n_gen=8, repetitions=3))
    pp, tg = result.get("pp32"), result.get("tg8")
    assert pp is not None and tg is not None
    for s in (pp, tg):
        assert len(s.samples_ts) == 3 and all(x > 0 for x in s.samples_ts)
    assert pp.mean_ts > tg.mean_ts  # prompt processing batches tokens; generation is one at a time
    assert result.cpu and result.config.cmake_flags
    assert result.cpus and len(result.cpus.split(",")) == min(result.threads, len(os.sched_getaffinity(0)))


def test_the_op_profile_times_every_op_of_the_real_build_and_its_counts_follow_the_model(llama):
    from readfirst.targets.llama_cpp.profile import op_facts
    target, baseline, model = llama
    shape = target.shape
    target.shape = BenchOptions(n_prompt=64, n_gen=16)
    try:
        ops = target.op_profile(baseline.commit, baseline.variant)
    finally:
        target.shape = shape
    tg, pp = ops["phases"]["tg"], ops["phases"]["pp"]
    assert tg["tokens"] == 16 and pp["tokens"] == 64 and not tg["problems"] and not pp["problems"]
    assert abs(sum(o["share"] for o in tg["ops"]) - 1) < 1e-6 and tg["op_seconds"] <= tg["seconds"] * 1.05
    n_layer = ModelShape().n_layer
    # one graph per generated token: the FFN's gate and up projections (2048 -> 5632) twice per layer, the down one
    # (5632 -> 2048) once, in the model's own type
    by_op = {o["op"]: o for o in tg["ops"]}
    assert by_op["MUL_MAT q4_0 2048x5632"]["per_token"] == 2 * n_layer
    assert by_op["MUL_MAT q4_0 5632x2048"]["per_token"] == n_layer
    # the weights' matmuls are most of generation on a 1.1B model
    assert sum(o["share"] for o in tg["ops"] if o["op"].startswith("MUL_MAT q4_0")) > 0.4
    assert ops["isa"] and "AVX2" in ops["isa"]
    facts = op_facts(ops)
    assert facts[0].startswith("Where generation's time goes") and "MUL_MAT q4_0" in facts[0]


def test_a_harmless_kernel_patch_builds_incrementally_and_passes_the_logits_check(llama):
    target, baseline, model = llama
    # Unique per session: commits are content-addressed, and a worker tree that already holds this exact change
    # (an earlier session's) would rebuild nothing. The worker is put back at the baseline first, so the files
    # this patch changes are all that differ.
    marker = f"\n                // readfirst test {uuid.uuid4().hex}"
    patch = make_patch(target.repository, OPS, SUM_FORWARD, SUM_BACKWARD + marker)
    commit = target.commit_patch(patch, base=baseline.commit, message="sum rms_norm backwards")
    assert target.build_config(baseline.commit).ok  # the worker's tree back at the baseline
    build = target.build(commit, baseline.variant)
    assert build.ok and not build.reused, build.log_tail
    # Only the patched file recompiles: the build log names ops.cpp and not, say, ggml-cpu.c.
    log = open(build.log_path).read()
    assert "ops.cpp.o" in log and "ggml-cpu.c.o" not in log
    checks = target.checks(commit, baseline.variant, baseline=baseline)
    assert [c.name for c in checks.results] == ["tests", "logits"]
    assert checks.ok, checks
    assert checks.get("logits").evidence["mean_kld"] < 1e-5


def test_a_patch_that_breaks_numerics_fails_the_logits_check(llama):
    target, baseline, model = llama
    patch = make_patch(target.repository, OPS, SCALE, WRONG_SCALE)
    commit = target.commit_patch(patch, base=baseline.commit, message="wrong rms_norm scale")
    assert target.build(commit, baseline.variant).ok
    logits = target.checks(commit, baseline.variant, baseline=baseline).get("logits")
    assert logits is not None and logits.evidence["ok"]  # the check ran...
    assert not logits.passed and "logits differ" in logits.reason  # ...and the gate catches the broken kernel
    assert logits.evidence["mean_kld"] > 1e-3


def test_a_patch_to_the_benchmark_is_refused_before_it_is_built(llama):
    target, baseline, _ = llama
    patch = make_patch(target.repository, "tools/llama-bench/llama-bench.cpp", "#include", "#include ", )
    with pytest.raises(PatchRejected, match="protected"):
        target.commit_patch(patch, base=baseline.commit)


def test_sandbox_bench_cli_end_to_end_with_a_patch(llama, tmp_path):
    target, baseline, _ = llama
    patch_file = tmp_path / "rev.patch"
    patch_file.write_text(make_patch(target.repository, OPS, SUM_FORWARD, SUM_BACKWARD))
    proc = subprocess.run([sys.executable, "-m", "readfirst.graph", "sandbox", "bench", "--patch", str(patch_file),
                           "-p", "16", "-n", "4", "-r", "2", "--json"], capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["baseline"]["commit"] == baseline.commit
    cand = report["candidate"]
    assert cand["build"]["ok"] and [(c["name"], c["passed"]) for c in cand["checks"]["results"]] == [
        ("tests", True), ("logits", True)]
    tests = {s["test"] for s in cand["bench"]["samples"]}
    assert tests == {"pp16", "tg4"}


def test_the_bandwidth_probe_bounds_what_generation_reads(llama):
    """The roofline's limit is the probe's bandwidth over the bytes one token reads; generation cannot beat it.
    A probe that measures its own adds instead of the memory (the scalar sum GCC leaves at -O2) read 24 GB/s
    here while generation read 27, and the profile called the bandwidth untrustworthy."""
    from readfirst.sandbox.machine_lock import machine_lock
    from readfirst.targets.llama_cpp.model import bytes_read_per_token
    from readfirst.targets.llama_cpp.profile import read_bandwidth
    target, baseline, model = llama
    threads = int(baseline.variant["run"]["threads"])
    with machine_lock(target.paths.cache, exclusive=True):
        read_gbs = read_bandwidth(target.sandbox, target.paths.cache / "probes", threads=threads).gbs
    result = target.bench(baseline.commit, model=model,
                          options=BenchOptions(n_prompt=0, n_gen=32, repetitions=3, threads=threads))
    tg = result.get("tg32")
    assert tg is not None
    generation_gbs = tg.mean_ts * bytes_read_per_token(model) / 1e9
    assert generation_gbs < 1.05 * read_gbs, (generation_gbs, read_gbs)  # the profile's own tolerance
