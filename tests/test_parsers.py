"""Parsing what llama.cpp's tools print, and the records that carry it: no Docker needed."""

from __future__ import annotations

import json
import math

import pytest

from readfirst.errors import SandboxError
from readfirst.records import BenchResult, BuildConfig, BuildResult, from_dict, to_dict
from readfirst.targets.llama_cpp.logits import kld_failure, parse_kld
from readfirst.sandbox.workers import bench_cpus
from readfirst.targets.llama_cpp.target import BenchOptions, _parse_junit, _tests_check, parse_bench_json

KLD_OUTPUT = """
====== Perplexity statistics ======
Mean PPL(Q)                   :  35.123456 ±   1.234567
====== KL divergence statistics ======
Mean    KLD:   0.000002 ±   0.000000
Maximum KLD:   0.000019
99.9%   KLD:   0.000015
99.0%   KLD:   0.000009
Median  KLD:   0.000001
====== Token probability statistics ======
Same top p: 99.902 ±  0.098 %
"""


def test_kld_within_thresholds_passes_and_values_are_read():
    r = parse_kld(KLD_OUTPUT)
    assert r.ok and kld_failure(r) is None
    assert math.isclose(r.mean_kld, 2e-6) and math.isclose(r.max_kld, 1.9e-5) and math.isclose(r.p999_kld, 1.5e-5)
    assert math.isclose(r.same_top_p, 99.902)


def test_the_kld_evidence_shows_the_figures():
    # a short output: the figures sit less than 600 characters from its start, and output follows them
    r = parse_kld(KLD_OUTPUT + "llama_perf_context_print: total time\n" * 20)
    assert "Maximum KLD:   0.000019" in r.log_tail, r.log_tail
    # figures read from the collected lines after output pushed them out of the tail: the lines are the evidence
    lines = [ln for ln in KLD_OUTPUT.splitlines() if "KLD" in ln or "Same top p" in ln]
    r = parse_kld("\n" * 5000, lines=lines)
    assert r.ok and "Maximum KLD:   0.000019" in r.log_tail, r.log_tail


def test_kld_over_a_threshold_or_missing_fails():
    broken = KLD_OUTPUT.replace("Maximum KLD:   0.000019", "Maximum KLD:   2.500000")
    assert "max KLD" in kld_failure(parse_kld(broken))
    flipped = KLD_OUTPUT.replace("Same top p: 99.902", "Same top p: 91.000")
    assert "same top token" in kld_failure(parse_kld(flipped))
    truncated = KLD_OUTPUT.split("Maximum")[0]
    r = parse_kld(truncated)
    assert not r.ok and "max" in r.log_tail and "did not complete" in kld_failure(r)


def test_bench_json_keeps_every_sample():
    rows = [
        {"n_prompt": 512, "n_gen": 0, "avg_ts": 290.5, "stddev_ts": 3.1, "samples_ts": [288.0, 293.0, 290.5],
         "cpu_info": "AMD EPYC", "build_commit": "abc123"},
        {"n_prompt": 0, "n_gen": 128, "avg_ts": 70.2, "stddev_ts": 1.0, "samples_ts": [69.0, 70.4, 71.2]},
    ]
    r = parse_bench_json(json.dumps(rows), options=BenchOptions(repetitions=3), config=BuildConfig(note="native"),
                         model="m.gguf")
    assert [s.test for s in r.samples] == ["pp512", "tg128"]
    assert r.get("tg128").samples_ts == [69.0, 70.4, 71.2]
    assert r.cpu == "AMD EPYC" and r.build_commit == "abc123"
    again = from_dict(BenchResult, json.loads(json.dumps(to_dict(r))))
    assert again.get("pp512").samples_ts == [288.0, 293.0, 290.5] and again.config.note == "native"


def test_benchmarks_are_pinned_to_a_fixed_set_of_cpus_away_from_cpu_0():
    assert bench_cpus(4, set(range(16))) == "12,13,14,15"
    assert bench_cpus(2, {0, 1}) == "0,1"          # no more CPUs than threads: all of them, still a fixed set
    assert bench_cpus(8, {0, 1}) == "0,1"
    assert bench_cpus(1, {0, 1}) == "1"
    assert bench_cpus(2, {3, 5, 9}) == "5,9"       # only CPUs this process may use


def test_records_load_with_fields_they_do_not_know():
    data = to_dict(BuildResult(True, "ok", 1.0, "", BuildConfig(), "c0ffee"))
    data["added_in_a_later_version"] = 42
    data["config"]["also_new"] = "x"
    assert from_dict(BuildResult, data).commit == "c0ffee"


def test_junit_cases_pass_fail_and_skip():
    xml = """<testsuite><testcase name="test-rope" time="1.5" status="run"/>
    <testcase name="test-quantize-fns" time="2"><failure message="x"/></testcase>
    <testcase name="test-barrier" time="0"><skipped/></testcase></testsuite>"""
    cases = {c.name: c.passed for c in _parse_junit(xml)}
    assert cases == {"test-rope": True, "test-quantize-fns": False, "test-barrier": False}


def test_the_ctest_check_names_failed_cases_or_quotes_the_log():
    from readfirst.records import TestCase, TestResult
    cases = [TestCase("test-rope", True, 1.0), TestCase("test-quantize-fns", False, 1.0)]
    failed = _tests_check(TestResult(False, cases, "", 2.0))
    assert not failed.passed and failed.reason == "tests failed: test-quantize-fns (1 of 2)."
    assert failed.evidence["cases"][1]["name"] == "test-quantize-fns"
    quoted = _tests_check(TestResult(False, [], "...\nctest: 3 tests failed\n", 1.0))
    assert quoted.reason == "tests failed: ctest: 3 tests failed"
    assert _tests_check(TestResult(True, cases[:1], "", 1.0)).passed


@pytest.mark.parametrize("text", ['{"a": 1}', '[{"n_prompt": 0, "n_gen": 8, "samples_ts": ["fast"]}]',
                                  "[" * 100_000 + "]" * 100_000, '[{"avg_ts": "NaN"}]', '[1, 2]', "not json"])
def test_odd_bench_json_is_a_sandbox_error_that_discards_the_candidate(text):
    with pytest.raises(SandboxError):
        parse_bench_json(text, options=BenchOptions(), config=BuildConfig(), model="m.gguf")


def test_a_bench_file_whose_mean_is_not_its_samples_mean_or_that_lacks_samples_is_refused():
    """The verdict reads avg_ts and the host's clock check reads samples_ts: a patched build that rewrites one and
    not the other, or leaves no samples for the clock to judge, has its file refused (the candidate discarded)."""
    options = BenchOptions(repetitions=1)
    row = {"n_prompt": 0, "n_gen": 128, "avg_ts": 70.0, "stddev_ts": 0.0, "samples_ts": [70.0]}
    assert parse_bench_json(json.dumps([row]), options=options, config=BuildConfig(),
                            model="m.gguf").get("tg128").mean_ts == 70.0
    for forged in ({**row, "avg_ts": 140.0}, {**row, "samples_ts": []}, {**row, "samples_ts": [70.0, 70.0]},
                   {**row, "avg_ts": 0.0, "samples_ts": [0.0]}):
        with pytest.raises(SandboxError):
            parse_bench_json(json.dumps([forged]), options=options, config=BuildConfig(), model="m.gguf")


def test_a_result_file_that_is_a_fifo_is_refused_at_once(tmp_path):
    import os
    import threading

    from readfirst.sandbox.readback import read_text_inside
    os.mkfifo(tmp_path / "bench.json")
    outcome: list = []
    reader = threading.Thread(target=lambda: outcome.append(_raises(read_text_inside, tmp_path, "bench.json")),
                              daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert outcome == ["refusing to read 'bench.json': not a regular file"]  # no writer ever comes: no wait


def _raises(fn, *args):
    try:
        fn(*args)
    except OSError as e:
        return str(e)
    return None
