"""The experiment pipeline (implement, apply, build, repair, checks, measure, verdict) on a small stand-in that
satisfies the Target interface and nothing more. Patches are real commits in a real git repository; builds,
checks and measurements are the stand-in's answers, in milliseconds.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from readfirst.agents.experiment import evaluator_for, run_experiment
from readfirst.errors import SandboxError
from readfirst.records import (Baseline, BuildConfig, BuildResult, CheckResult, Checks, Measurement, Objective,
                               Profile)
from readfirst.sandbox.patch import commit_patch

SOURCE = "int work(int n) {\n    return n * 2;\n}\n"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                          capture_output=True, text=True).stdout.strip()


def patch_replacing(old: str, new: str, path: str = "src/work.c") -> str:
    import difflib
    after = SOURCE.replace(old, new)
    return f"diff --git a/{path} b/{path}\n" + "".join(difflib.unified_diff(
        SOURCE.splitlines(True), after.splitlines(True), f"a/{path}", f"b/{path}"))


class PipelineTarget:
    """A one-file C project. Its answers follow the code: a commit whose src/work.c holds `#error` does not build,
    one holding `BUG` fails its tests, `FAST` makes it 10% faster; the variant {"opt": n} makes it n% faster."""
    name = "pipeline"
    objective = Objective(metric="ops_per_s", direction="higher", guards={})
    hot_paths = ("src/*",)
    protected = ("tests/*",)

    def __init__(self, repo: Path):
        self.repository = repo
        self.calls: list[str] = []
        self.bench_error: Exception | None = None
        self.build_error: Exception | None = None
        self.runs = 0

    def _text(self, commit: str) -> str:
        return git(self.repository, "show", f"{commit}:src/work.c")

    def prepare(self) -> Baseline:
        head = git(self.repository, "rev-parse", "HEAD")
        return Baseline(head, {"opt": 0}, Checks([CheckResult("tests", True)]))

    def commit_patch(self, patch: str, *, base: str, message: str = "experiment") -> str:
        return commit_patch(self.repository, patch, base=base, message=message, protected=self.protected)

    def build(self, commit: str, variant: dict[str, Any], *, worker: int = 0) -> BuildResult:
        self.calls.append("build")
        if self.build_error is not None:
            raise self.build_error
        broken = "#error" in self._text(commit)
        return BuildResult(not broken, "compile" if broken else "ok", 0.1,
                           "src/work.c:2: error: #error here" if broken else "", BuildConfig(), commit)

    def checks(self, commit: str, variant: dict[str, Any], *, baseline: Baseline, worker: int = 0) -> Checks:
        self.calls.append("checks")
        bug = "BUG" in self._text(commit)
        return Checks([CheckResult("tests", not bug, "work(2) returned 5, expected 4." if bug else "")])

    def measure(self, commit: str, variant: dict[str, Any], metrics=None) -> Measurement:
        self.calls.append("measure")
        if self.bench_error is not None:
            raise self.bench_error
        self.runs += 1
        speed = 1000.0 * (1.10 if "FAST" in self._text(commit) else 1.0) * (1 + variant["opt"] / 100)
        return Measurement({"ops_per_s": speed * (1 + 0.003 * math.sin(self.runs)), "noise": -1.0},
                           {"cpu": "stand-in"})

    def profile(self, baseline: Baseline) -> Profile:
        return Profile(["a stand-in"], {})

    def variants(self, variant: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"kind": "build", "title": "opt 5", "rationale": "", "change": {"opt": 5}}]

    def apply(self, variant: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
        if set(change) - {"opt"}:
            raise ValueError("only opt")
        return {**variant, **change}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


@pytest.fixture
def target(tmp_path) -> PipelineTarget:
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src/work.c").write_text(SOURCE)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "baseline")
    return PipelineTarget(repo)


def run(target: PipelineTarget, change: dict[str, Any], *, kind: str = "patch", implement=None) -> dict[str, Any]:
    baseline = target.prepare()
    best = {"commit": baseline.commit, "variant": baseline.variant}
    h = {"id": "H1", "key": "k", "kind": kind, "title": "t", "change": change}
    return run_experiment(h, target=target, best=best, baseline=baseline, implement=implement,
                          evaluator_config=evaluator_for(target, max_runs=18))


def test_a_faster_patch_is_committed_built_checked_measured_and_kept(target):
    row = run(target, {"patch": patch_replacing("n * 2", "n * 2 /* FAST */")})
    assert row["decision"] == "keep", row["reason"]
    assert 0.08 < row["speedup"] < 0.12 and row["objective"] == "ops_per_s"
    assert "FAST" in git(target.repository, "show", f"{row['candidate']['commit']}:src/work.c")
    assert target.calls[:2] == ["build", "checks"] and set(target.calls[2:]) == {"measure"}
    assert row["verdict"]["effects"].keys() == {"ops_per_s"}  # `noise` is neither the objective nor a guard
    assert row["bench_setup"] == {"cpu": "stand-in"}  # recorded once with the experiment


def test_a_variant_is_applied_by_the_target_and_kept_on_its_merit(target):
    row = run(target, {"variant": {"opt": 5}}, kind="build")
    assert row["decision"] == "keep" and row["candidate"]["variant"] == {"opt": 5}
    refused = run(target, {"variant": {"threads": 3}}, kind="runtime")
    assert (refused["decision"], refused["verdict"]["gate"]) == ("discard", "apply") and "only opt" in refused["reason"]


def test_a_patch_that_does_not_apply_or_touches_the_tests_is_discarded_unbuilt(target):
    stale = run(target, {"patch": patch_replacing("n * 2", "n * 3").replace("n * 2", "n * 7")})
    assert (stale["decision"], stale["verdict"]["gate"]) == ("discard", "apply")
    judge = run(target, {"patch": patch_replacing("n * 2", "n * 3", path="tests/work.c")})
    assert judge["verdict"]["gate"] == "apply" and "protected" in judge["reason"]
    assert target.calls == []


def test_a_build_failure_is_discarded_with_its_first_error(target):
    row = run(target, {"patch": patch_replacing("return", "#error\n    return")})
    assert (row["decision"], row["verdict"]["gate"]) == ("discard", "build")
    assert "compile stage" in row["reason"] and "#error here" in row["reason"] and "measure" not in target.calls


def test_the_implementer_repairs_a_failed_build_and_the_repair_is_measured(target):
    attempts: list[dict] = []

    def implement(hypothesis, base_commit):
        attempts.append(hypothesis)
        if "repair" not in hypothesis:
            return patch_replacing("return", "#error\n    return"), {"usd": 0.01}
        assert hypothesis["repair"]["failure"] == "build" and "#error" in hypothesis["patch"]
        assert "first errors:\nsrc/work.c:2: error: #error here" in hypothesis["repair"]["evidence"]
        return patch_replacing("n * 2", "n * 2 /* FAST */"), {"usd": 0.01}

    row = run(target, {}, kind="llm", implement=implement)
    assert len(attempts) == 2 and row["decision"] == "keep" and "repair_1" in row["llm"]
    assert target.calls.count("build") == 2


def test_a_failed_check_goes_back_to_the_implementer_with_its_reason(target):
    attempts: list[dict] = []

    def implement(hypothesis, base_commit):
        attempts.append(hypothesis)
        if "repair" not in hypothesis:
            return patch_replacing("n * 2", "n * 2 + 1 /* BUG */"), {"usd": 0.01}
        assert hypothesis["repair"]["failure"] == "tests"
        assert "reason: work(2) returned 5, expected 4." in hypothesis["repair"]["evidence"]
        return patch_replacing("n * 2", "n * 2 /* FAST */"), {"usd": 0.01}

    row = run(target, {}, kind="llm", implement=implement)
    assert len(attempts) == 2 and row["decision"] == "keep", row["reason"]
    assert row["llm"]["repair_1"]["failure"] == "tests" and target.calls[:4] == ["build", "checks", "build", "checks"]


def test_a_failed_check_is_the_verdict_and_nothing_is_measured(target):
    row = run(target, {"patch": patch_replacing("n * 2", "n * 2 + 1 /* BUG FAST */")})
    assert (row["decision"], row["verdict"]["gate"]) == ("discard", "tests")
    assert row["reason"] == "work(2) returned 5, expected 4." and "measure" not in target.calls
    assert row["checks"]["results"][0]["passed"] is False


def test_a_build_whose_results_cannot_be_read_back_is_discarded_not_the_run(target):
    # What a build leaves is the candidate's work: a record it turned into a FIFO or a link is its failure.
    target.build_error = OSError(6, "No such device or address", "build.json")
    build = target.build

    def slow_build(*args, **kwargs):
        time.sleep(0.2)  # the build ran before its record could not be read: its time is the build's
        return build(*args, **kwargs)
    target.build = slow_build
    row = run(target, {"patch": patch_replacing("n * 2", "n * 2 /* FAST */")})
    assert (row["decision"], row["verdict"]["gate"]) == ("discard", "build")
    assert "could not be read back" in row["reason"] and "checks" not in target.calls
    assert row["durations"]["build"] >= 0.2, row["durations"]


@pytest.mark.parametrize("error, says", [(SandboxError("the bench command timed out after 3 s and was killed"),
                                          "the benchmark failed: the bench command timed out"),
                                         (ValueError("measure returned no usable values"), "unusable")])
def test_a_benchmark_that_fails_discards_the_candidate_not_the_run(target, error, says):
    target.bench_error = error
    row = run(target, {"patch": patch_replacing("n * 2", "n * 2 /* FAST */")})
    assert (row["decision"], row["verdict"]["gate"]) == ("discard", "performance") and says in row["reason"]


def test_the_seams_roles_and_graph_import_neither_docker_nor_a_concrete_target():
    code = ("import sys, readfirst.protocols, readfirst.knowledge_base.ingest, readfirst.graph.workflow, "
            "readfirst.agents.experiment, readfirst.agents.offline_policy; "
            "bad = [m for m in sys.modules if m == 'docker' or m.startswith('readfirst.sandbox.docker') "
            "or m.startswith('readfirst.targets.')]; print(bad); sys.exit(bool(bad))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_measurement_never_shares_the_machine_with_a_build(tmp_path):
    import threading
    import time

    from readfirst.sandbox.machine_lock import machine_lock
    events: list[str] = []
    both_building = threading.Barrier(3)

    def build(name: str) -> None:
        with machine_lock(tmp_path, exclusive=False):
            events.append(f"{name} start")
            both_building.wait(timeout=10)
            time.sleep(0.3)
            events.append(f"{name} end")

    def bench() -> None:
        both_building.wait(timeout=10)  # both builds hold the machine, shared
        with machine_lock(tmp_path, exclusive=True):
            events.append("bench")

    threads = [threading.Thread(target=build, args=(n,)) for n in "ab"] + [threading.Thread(target=bench)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    # the two builds overlapped each other; the bench ran only once neither was running
    assert sorted(events[:2]) == ["a start", "b start"] and sorted(events[2:4]) == ["a end", "b end"]
    assert events[4:] == ["bench"]


def test_a_wait_for_the_machine_is_said_with_its_length(tmp_path):
    import threading
    import time

    from readfirst.sandbox.machine_lock import machine_lock
    said: list[str] = []
    held = threading.Event()

    def other_benchmark() -> None:
        with machine_lock(tmp_path, exclusive=True):
            held.set()
            time.sleep(1.3)

    t = threading.Thread(target=other_benchmark)
    t.start()
    held.wait(timeout=10)
    with machine_lock(tmp_path, exclusive=False, say=said.append, what="build"):
        pass
    t.join(timeout=10)
    assert len(said) == 1 and said[0].startswith("build waited 1 s for the machine: a measurement had the machine")
    with machine_lock(tmp_path, exclusive=True, say=said.append, what="bench"):
        pass  # no one holds it: nothing to say
    assert len(said) == 1


def test_the_time_budget_counts_benchmarking_not_waiting_for_the_machine(target):
    """Another process's benchmark holds the machine: each measurement waits, but reports the seconds it ran.
    The verdict is the same as without the wait (and a replay, which serves those seconds back, agrees)."""
    import time as _time
    from dataclasses import replace

    from readfirst.agents.evaluator import EvaluatorConfig
    plain = target.measure

    def waiting(commit, variant, *, metrics=None):
        _time.sleep(0.03)  # the wait for the lock
        return replace(plain(commit, variant, metrics=metrics), duration_s=0.001)
    target.measure = waiting
    baseline = target.prepare()
    h = {"id": "H1", "key": "k", "kind": "patch", "title": "t",
         "change": {"patch": patch_replacing("n * 2", "n * 2 /* FAST */")}}
    config = replace(evaluator_for(target, max_runs=18), time_budget_s=0.2)
    assert isinstance(config, EvaluatorConfig)
    row = run_experiment(h, target=target, best={"commit": baseline.commit, "variant": baseline.variant},
                         baseline=baseline, evaluator_config=config)
    # By the wall clock 0.2 s would not even cover the warm-up runs (about 0.03 s each).
    assert row["decision"] == "keep" and row["verdict"]["stopped"] != "time budget", row["reason"]
    assert all(r["duration_s"] < 0.01 for r in row["verdict"]["runs"])


class ClockedTarget(PipelineTarget):
    """Runs of 10,000 ops that say how long they took and what their figures claim: `FAST` is really 1.5x faster
    (the host's clock sees it), `FAKE` only says so (its figures were rewritten; the clock sees the old time)."""

    def measure(self, commit: str, variant: dict[str, Any], metrics=None) -> Measurement:
        self.runs += 1
        text = self._text(commit)
        real = 1000.0 * (1.5 if "FAST" in text else 1.0) * (1 + 0.003 * math.sin(self.runs))
        claimed = real * (1.5 if "FAKE" in text else 1.0)
        return Measurement({"ops_per_s": claimed}, {"cpu": "stand-in"}, duration_s=0.8 + 10_000 / real,
                           claimed_s=10_000 / claimed)


def test_figures_the_hosts_clock_does_not_support_are_discarded_as_tampered(tmp_path, target):
    clocked = ClockedTarget(target.repository)
    honest = run(clocked, {"patch": patch_replacing("n * 2", "n * 2 /* FAST */")})
    assert honest["decision"] == "keep", honest["reason"]
    faked = run(clocked, {"patch": patch_replacing("n * 2", "n * 2 /* FAKE */")})
    assert (faked["decision"], faked["verdict"]["gate"]) == ("discard", "clock"), faked["reason"]
    assert faked["reason"].startswith("tampered: the host's clock does not support") and "a saving of 3.3" in faked["reason"]
    assert faked["speedup"] > 0.4  # the claim stays on record beside why it was not believed


class ScriptedClock:
    """A target whose runs take `overhead + claimed` seconds on the host: the overheads (container start, model
    load) are drawn from `overheads` in turn, the claimed seconds are each arm's own."""
    objective = Objective(metric="ops_per_s", direction="higher", guards={})

    def __init__(self, claimed: dict[str, float], host_work: dict[str, float], overheads: list[float]):
        self.claimed, self.host_work, self.overheads = claimed, host_work, iter(overheads)

    def measure(self, commit: str, variant: dict[str, Any], metrics=None) -> Measurement:
        return Measurement({"ops_per_s": 1 / self.claimed[commit]}, {}, duration_s=self.host_work[commit]
                           + next(self.overheads), claimed_s=self.claimed[commit])


def clock_verdict(claimed: dict[str, float], host_work: dict[str, float], overheads: list[float]) -> str | None:
    from readfirst.agents.experiment import ArmBench
    bench = ArmBench(ScriptedClock(claimed, host_work, overheads), {"baseline": ("b", {}), "candidate": ("c", {})})
    for _ in range(len(overheads) // 2):
        bench("baseline")
        bench("candidate")
    return bench.unsupported_claim()


def test_the_clock_check_weighs_the_hosts_saving_against_the_runs_own_overhead_noise():
    # The CI case that discarded an honest win at -p 16 -n 16: a real 0.54 s saving seen as 0.22 s through
    # overheads that vary by ±0.2 s. A fixed "half the claim" refuted it; the runs' own spread does not.
    honest = {"b": 0.98, "c": 0.44}
    assert clock_verdict(honest, honest, [0.75, 1.00, 0.95, 1.34]) is None
    # The same overheads, a claim the host never saw: a 2 s saving claimed on 4 s of work, the host's time unmoved.
    forged, real = {"b": 4.0, "c": 2.0}, {"b": 4.0, "c": 4.0}
    refuted = clock_verdict(forged, real, [0.75, 1.00, 0.95, 1.34, 0.85, 0.90, 0.80, 1.10])
    assert refuted is not None and "a saving of 2.00 s" in refuted and "runs' overheads" in refuted
    # Quiet overheads judge a smaller claim: 0.6 s claimed, 0.1 s seen, overheads within ±0.01 s.
    small = {"b": 1.6, "c": 1.0}
    assert clock_verdict(small, {"b": 1.6, "c": 1.5}, [0.80, 0.81, 0.81, 0.80, 0.80, 0.80]) is not None
    assert clock_verdict(small, small, [0.80, 0.81, 0.81, 0.80, 0.80, 0.80]) is None


class Printing:
    """A bench whose runs print METRIC lines: `printed[commit]` is the signature of each of its runs in turn."""
    objective = Objective(metric="ops_per_s", direction="higher", guards={})

    def __init__(self, printed: dict[str, list[dict[str, int]]]):
        self.printed = {k: iter(v) for k, v in printed.items()}

    def measure(self, commit: str, variant: dict[str, Any], metrics=None) -> Measurement:
        return Measurement({"ops_per_s": 1.0}, {}, signature={"METRIC lines": next(self.printed[commit])})


def signature_verdict(base: list[dict[str, int]], cand: list[dict[str, int]]) -> str | None:
    from readfirst.agents.experiment import ArmBench
    bench = ArmBench(Printing({"b": base, "c": cand}), {"baseline": ("b", {}), "candidate": ("c", {})})
    for _ in base:
        bench("baseline")
    for _ in cand:
        bench("candidate")
    return bench.changed_signature()


def test_a_candidate_whose_runs_print_other_figures_than_the_baselines_is_refuted():
    once = {"ops_per_s": 1, "ratio": 1}
    assert signature_verdict([once] * 3, [once] * 3) is None
    # code under test printed the objective's line twice more: the median of three is its own figure
    forged = signature_verdict([once] * 3, [once, {"ops_per_s": 3, "ratio": 1}, once])
    assert forged is not None and "1 of the candidate's 3 runs printed METRIC lines {ops_per_s: 3, ratio: 1}" in forged
    assert "every one of the baseline's 3 printed METRIC lines {ops_per_s: 1, ratio: 1}" in forged
    # a bench whose own line count varies run to run sets no standard, and one baseline run is not a standard
    assert signature_verdict([once, {"ops_per_s": 2, "ratio": 1}], [{"ops_per_s": 3, "ratio": 1}]) is None
    assert signature_verdict([once], [{"ops_per_s": 3, "ratio": 1}]) is None


def test_a_kept_verdict_with_a_changed_signature_is_discarded_at_gate_signature():
    from readfirst.agents.evaluator import Verdict
    from readfirst.agents.experiment import ArmBench
    once = {"ops_per_s": 1}
    bench = ArmBench(Printing({"b": [once] * 2, "c": [once, {"ops_per_s": 3}]}),
                     {"baseline": ("b", {}), "candidate": ("c", {})})
    for arm in ("baseline", "baseline", "candidate", "candidate"):
        bench(arm)
    keep = Verdict("keep", "faster", "performance", "clear", None, {}, [], 4, 2, 1.0)
    row: dict[str, Any] = {}
    held = bench.held_to_account(keep, row)
    assert (held.decision, held.gate) == ("discard", "signature") and held.reason.startswith("tampered: 1 of")
    discard = dataclasses.replace(keep, decision="discard")
    assert bench.held_to_account(discard, row) is discard  # only keeps are held to account
