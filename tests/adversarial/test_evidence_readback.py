"""Issue 29 items 1 and 4: what the host reads as evidence cannot be written by a container, and evidence that
cannot be read back is a discarded candidate, never an exception out of the run.

- **A planted test result** (item 1): llama.cpp's artifact folder is mounted writable while a candidate builds,
  and the ctest result the tests gate reads back was kept there: a build step that wrote "passed" passed the gate,
  a FIFO there blocked the host's read for good. The record now lives under the cache's records/, which no
  container mounts.
- **An odd result file** (item 4): a candidate's llama-bench that leaves /out/bench.json as a symlink or a FIFO
  raised OSError out of run_experiment, the run failed, and --resume met it again. The bench here is the
  candidate's own build's llama-bench (a script standing in for the binary, as a patched build could make it),
  run by the real target in the real sandbox; the build and the checks stages are not what is tested, so they
  report the finished build they would for it."""

from __future__ import annotations

import json
import os
import threading

import pytest

from readfirst.agents.experiment import evaluator_for, run_experiment
from readfirst.records import Baseline, BuildResult, CheckResult, Checks, TestCase, TestResult, to_dict
from readfirst.sources import SourceRepo
from readfirst.targets.llama_cpp.target import BenchOptions, LlamaCppTarget, make_variant, native_config

from .helpers import case_paths, small_sandbox

CANDIDATE = "c" * 40


def test_a_tests_result_planted_in_the_artifact_folder_is_not_read(attack, tmp_path):
    target = LlamaCppTarget(case_paths(tmp_path), None, SourceRepo(tmp_path, "b" * 40, "test"))
    config = native_config()
    art = target.artifact_dir(CANDIDATE, config)  # the folder a candidate's build writes as /artifact
    art.mkdir(parents=True)
    forged = TestResult(True, [TestCase("test-rope", True, 0.1)], "100% tests passed", 1.0)
    (art / "tests.json").write_text(json.dumps(to_dict(forged)))
    if target._cached_tests(CANDIDATE, config) is not None:
        attack.escaped("a tests result written into the artifact folder was read as the build's")
    (art / "tests.json").unlink()
    os.mkfifo(art / "tests.json")
    read = threading.Thread(target=target._cached_tests, args=(CANDIDATE, config), daemon=True)
    read.start()
    read.join(timeout=30)
    if read.is_alive():
        attack.escaped("the host's read of the tests result blocked on a FIFO the build left")
    writable = [art, target.paths.builds]
    assert not any(p == target.records_dir(CANDIDATE, config) or p in target.records_dir(CANDIDATE, config).parents
                   for p in writable)


# The candidate's llama-bench: the shell made /out/bench.json for its output; it leaves something else there.
ODD = {"symlink": "rm -f /out/bench.json; ln -s /etc/hostname /out/bench.json",
       "fifo": "rm -f /out/bench.json; mkfifo /out/bench.json"}
HONEST = ('echo \'[{"n_prompt": 0, "n_gen": 128, "samples_ts": [10.0], "avg_ts": 10.0, "stddev_ts": 0.0}]\'')


class FinishedBuilds(LlamaCppTarget):
    """Commits, builds and checks as they come out for a candidate's finished, tested build: the seam under test is
    the bench."""

    def commit_patch(self, patch, *, base=None, message="experiment"):
        return CANDIDATE

    def build(self, commit, variant=None, *, worker=0, reuse=True):
        return BuildResult(True, "ok", 0.0, "", self.config_of(variant), commit, reused=True)

    def checks(self, commit, variant, *, baseline, worker=0):
        return Checks([CheckResult("tests", True)])


def _llama_bench(target: LlamaCppTarget, commit: str, script: str) -> None:
    bin_dir = target.artifact_dir(commit, native_config()) / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "llama-bench").write_text(f"#!/bin/sh\n{script}\n")
    (bin_dir / "llama-bench").chmod(0o755)


@pytest.mark.docker
@pytest.mark.parametrize("odd", sorted(ODD))
def test_an_odd_bench_result_file_is_a_discarded_candidate(attack, tmp_path, docker_client, base_image, odd):
    paths = case_paths(tmp_path)
    paths.models.mkdir(parents=True)
    (paths.models / "m.gguf").write_bytes(b"GGUF")
    base = "b" * 40
    target = FinishedBuilds(paths, small_sandbox(docker_client, base_image, tmp_path),
                            SourceRepo(tmp_path, base, "test"), shape=BenchOptions(n_prompt=0, threads=1))
    _llama_bench(target, base, HONEST)
    _llama_bench(target, CANDIDATE, ODD[odd])
    variant = make_variant(native_config(), target.shape, paths.models / "m.gguf")
    baseline = Baseline(base, variant, Checks([]), "", 0.0)
    hypothesis = {"id": "H1", "key": odd, "kind": "patch", "title": f"bench.json as a {odd}", "change": {"patch": "(its build's llama-bench)"}}
    try:
        row = run_experiment(hypothesis, target=target, best={"commit": base, "variant": variant},
                             baseline=baseline, evaluator_config=evaluator_for(target, max_runs=4))
    except OSError as e:
        attack.escaped(f"a {odd} result file ended the run: {e!r}")
    assert row["decision"] == "discard" and row["verdict"]["gate"] == "performance", row["reason"]
    assert "could not be read back" in row["reason"], row["reason"]
