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

from readfirst.config import Paths
from readfirst.agents.statistics import kld_failure
from readfirst.errors import PatchRejected
from readfirst.graph.deps import model_maker, open_llama_target, open_sandbox
from readfirst.sandbox.baseline import establish_baseline
from readfirst.sandbox.llama_cpp import BenchOptions
from readfirst.sandbox.model import ModelShape, validate_gguf
from readfirst.sandbox.sources import git

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
    sandbox = open_sandbox(paths, say=notes.append)
    target = open_llama_target(paths, sandbox, say=notes.append)
    baseline, model = establish_baseline(target, say=notes.append,
                                         build_model=model_maker(paths, model=None, quant="Q4_0", say=notes.append))
    return target, baseline, model


def test_the_baseline_builds_passes_its_tests_and_the_model_has_tinyllama_shapes(llama):
    target, baseline, model = llama
    assert baseline.build.ok and baseline.tests.ok
    assert {c.name for c in baseline.tests.cases} >= {"test-quantize-fns", "test-rope"}
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


def test_a_harmless_kernel_patch_builds_incrementally_and_passes_the_logits_check(llama):
    target, baseline, model = llama
    # Unique per session: commits are content-addressed, and a worker tree that already holds this exact change
    # (an earlier session's) would rebuild nothing. The worker is put back at the baseline first, so the files
    # this patch changes are all that differ.
    marker = f"\n                // readfirst test {uuid.uuid4().hex}"
    patch = make_patch(target.source.path, OPS, SUM_FORWARD, SUM_BACKWARD + marker)
    commit = target.commit_patch(patch, base=baseline.commit, message="sum rms_norm backwards")
    assert target.build(baseline.commit).ok
    build = target.build(commit)
    assert build.ok, build.log_tail
    # Only the patched file recompiles: the build log names ops.cpp and not, say, ggml-cpu.c.
    log = open(build.log_path).read()
    assert "ops.cpp.o" in log and "ggml-cpu.c.o" not in log
    assert target.test(commit).ok
    base_logits = target.kld_base(baseline.commit, model=model)
    kld = target.logits_check(commit, model=model, base_logits=base_logits)
    assert kld.ok and kld_failure(kld) is None, kld


def test_a_patch_that_breaks_numerics_fails_the_logits_check(llama):
    target, baseline, model = llama
    patch = make_patch(target.source.path, OPS, SCALE, WRONG_SCALE)
    commit = target.commit_patch(patch, base=baseline.commit, message="wrong rms_norm scale")
    assert target.build(commit).ok
    base_logits = target.kld_base(baseline.commit, model=model)
    kld = target.logits_check(commit, model=model, base_logits=base_logits)
    assert kld.ok  # the check ran...
    assert "logits differ" in kld_failure(kld)  # ...and the gate catches the broken kernel
    assert kld.mean_kld > 1e-3


def test_a_patch_to_the_benchmark_is_refused_before_it_is_built(llama):
    target, baseline, _ = llama
    patch = make_patch(target.source.path, "tools/llama-bench/llama-bench.cpp", "#include", "#include ", )
    with pytest.raises(PatchRejected, match="protected"):
        target.commit_patch(patch, base=baseline.commit)


def test_sandbox_bench_cli_end_to_end_with_a_patch(llama, tmp_path):
    target, baseline, _ = llama
    patch_file = tmp_path / "rev.patch"
    patch_file.write_text(make_patch(target.source.path, OPS, SUM_FORWARD, SUM_BACKWARD))
    proc = subprocess.run([sys.executable, "-m", "readfirst.graph", "sandbox", "bench", "--patch", str(patch_file),
                           "-p", "16", "-n", "4", "-r", "2", "--json"], capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["baseline"]["commit"] == baseline.commit
    cand = report["candidate"]
    assert cand["build"]["ok"] and cand["tests"]["ok"] and cand["kld"]["ok"] and cand["kld_verdict"] is None
    tests = {s["test"] for s in cand["bench"]["samples"]}
    assert tests == {"pp16", "tg4"}
