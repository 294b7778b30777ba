"""The trace: what a run records, replay to identical decisions without calls, divergence after a code change,
a trace cut by kill -9, and fork. The graph, runner, ledger and checkpointer are the real ones; the target is the
in-process stand-in (test_trace_standin.py), the LLM the real Anthropic client against the local fake API."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_anthropic import FakeAnthropic  # noqa: E402
from test_trace_standin import (CountingSandbox, StandInKnowledgeBase, StandInTarget, continue_run,  # noqa: E402
                                record_run)

from readfirst.agents.llm import AnthropicLLM, make_client, message_json  # noqa: E402
from readfirst.graph import workflow  # noqa: E402
from readfirst.graph.runner import open_checkpointer, read_meta  # noqa: E402
from readfirst.graph.trace import TRACE_FILE, TraceError  # noqa: E402
from readfirst.graph.trace_fork import fork_run  # noqa: E402
from readfirst.graph.trace_read import Trace  # noqa: E402
from readfirst.graph.trace_replay import replay  # noqa: E402


def test_a_run_records_every_step_with_its_checkpoints_and_calls(tmp_path):
    directory, summary, target = record_run(tmp_path)
    trace = Trace(directory)
    steps = trace.ordered()
    assert [s.node for s in steps[:5]] == ["profile", "research", "competitors", "hypothesize", "experiment"]
    assert all(s.status == "ok" and s.starts_from and s.ends_at for s in steps)
    # Each step ends at the checkpoint the next one starts from (one node per superstep in this run).
    assert all(a.ends_at == b.starts_from for a, b in zip(steps, steps[1:]))
    profile = steps[0]
    assert [c["method"] for c in profile.calls if c["kind"] == "target"] == ["prepare", "profile"]
    sandbox = [c for c in profile.calls if c["kind"] == "sandbox"]
    assert sandbox and all(c.get("nested") for c in sandbox)  # made by the target's methods
    assert sum(s.count("sandbox") for s in steps) == len(target.sandbox.commands)
    experiment = next(s for s in steps if s.node == "experiment")
    assert [c["method"] for c in experiment.calls if c["kind"] == "target"][:3] == ["apply", "build", "checks"]
    assert [i for s in steps for i in s.experiment_ids()] == ["E001", "E002"] == summary["kept"] + ["E002"]
    # Large payloads are files beside the trace, referenced from it.
    blobs = list((directory / "trace").glob("*.json"))
    assert blobs and all(len(line) < 20_000 for line in (directory / TRACE_FILE).read_text().splitlines())
    assert trace.update(steps[0])["baseline"]["commit"] == target.baseline_commit


def test_replay_gives_identical_decisions_without_sandbox_or_api_calls(tmp_path):
    chunks_asked = []

    def answer(request):
        ids = re.findall(r'id=\\*"([\w.-]+)', json.dumps(request["messages"]))
        chunks_asked.append(ids)
        return message_json(json.dumps([{"claim": f"claim about {ids[0]}", "citations": ids[:1]}]))

    with FakeAnthropic([answer] * 200) as api:
        llm = AnthropicLLM(make_client("test-key", base_url=api.url, max_retries=0), model="claude-sonnet-4-6")
        directory, summary, target = record_run(tmp_path, kb=StandInKnowledgeBase(), llm=llm)
        recorded_requests, recorded_commands = api.count, len(target.sandbox.commands)
        assert recorded_requests > 0 and recorded_commands > 0
        trace = Trace(directory)
        llm_calls = [c for s in trace.ordered() for c in s.calls if c["kind"] == "llm"]
        assert len(llm_calls) == recorded_requests and all(c["cost_usd"] > 0 for c in llm_calls)
        assert trace.summary()["cost_usd"] > 0
        report = replay(directory)
        assert api.count == recorded_requests  # not one request reached the API
    assert len(target.sandbox.commands) == recorded_commands
    assert report.identical, report.divergence
    assert [s["step"] for s in report.steps] == sorted(trace.steps)
    assert report.served["llm"] == recorded_requests and report.served["kb"] > 0 and report.served["target"] > 0


def test_a_run_whose_summaries_came_from_an_earlier_run_replays_identically(tmp_path):
    # The second run finds every chunk's summary in the file the first one filled, so it asks the model for none:
    # its replay must be served the cache's answers as they were, not an empty cache that asks a model.
    from readfirst.agents.summaries import SummaryCache

    def answer(request):
        ids = re.findall(r'id=\\*"([\w.-]+)', json.dumps(request["messages"]))
        return message_json(json.dumps([{"claim": f"claim about {ids[0]}", "citations": ids[:1]}]))

    with FakeAnthropic([answer] * 400) as api:
        llm = AnthropicLLM(make_client("test-key", base_url=api.url, max_retries=0), model="claude-sonnet-4-6")
        cache = SummaryCache(tmp_path / "summaries.sqlite")
        record_run(tmp_path, "run-a", kb=StandInKnowledgeBase(), llm=llm, summaries=cache)
        first = api.count
        directory, _, _ = record_run(tmp_path, "run-b", kb=StandInKnowledgeBase(), llm=llm, summaries=cache)
        second = api.count - first
        assert first > 0 and second < first  # run-b summarized nothing again
        hits = [c for s in Trace(directory).ordered() for c in s.calls if c["kind"] == "summaries"]
        assert hits and any(c["claims"] for c in hits)
        report = replay(directory)
        assert api.count == first + second  # not one request reached the API
    assert report.identical, report.divergence
    assert report.served["summaries"] == len(hits)


def test_a_code_change_makes_replay_name_the_divergent_step(tmp_path, monkeypatch):
    directory, _, _ = record_run(tmp_path)
    first_experiment = next(s for s in Trace(directory).ordered() if s.node == "experiment")
    real = workflow._summary
    monkeypatch.setattr(workflow, "_summary", lambda row: {**real(row), "title": row["title"].upper()})
    report = replay(directory)
    d = report.divergence
    assert d is not None and d.step == first_experiment.step and d.node == "experiment"
    assert list(d.differences) == ["wave_results"]
    assert report.steps[-1] == {"step": first_experiment.step, "node": "experiment", "same": False}


def test_a_changed_target_call_is_named_in_the_divergence(tmp_path, monkeypatch):
    directory, _, _ = record_run(tmp_path)
    real = workflow.run_experiment
    monkeypatch.setattr(workflow, "run_experiment", lambda h, **kw: real(h, **{**kw, "worker": kw["worker"] + 1}))
    first_experiment = next(s for s in Trace(directory).ordered() if s.node == "experiment")
    d = replay(directory).divergence
    assert d is not None and d.step == first_experiment.step and d.node == "experiment"
    assert "target.build with other arguments" in d.reason


def _rerun(directory: Path, home: Path, target: StandInTarget):
    return replay(directory, target=target)


def test_rerun_sandbox_measures_again_and_compares_decisions_not_numbers(tmp_path):
    directory, summary, recorded_target = record_run(tmp_path)
    assert summary["kept"]  # the stand-in's changed build is 8% faster: the recording holds a keep
    again = StandInTarget(tmp_path, tmp_path / "source", CountingSandbox())
    again.benches = 1000  # another phase of its deterministic noise: every sample differs from the recording
    report = _rerun(directory, tmp_path, again)
    assert again.sandbox.commands and again.benches > 0  # built, tested and benchmarked for real
    assert "target" not in report.served and report.rerun_sandbox
    assert report.identical, report.divergence
    assert [s["step"] for s in report.steps] == sorted(Trace(directory).steps)


def test_rerun_sandbox_names_the_experiment_whose_decision_changed(tmp_path):
    directory, _, _ = record_run(tmp_path)

    class NoLongerFaster(StandInTarget):
        def measure(self, commit, variant, metrics=None):
            return super().measure(commit, {**variant, "flags": []}, metrics=metrics)

    report = _rerun(directory, tmp_path, NoLongerFaster(tmp_path, tmp_path / "source", CountingSandbox()))
    d = report.divergence
    kept = next(s for s in Trace(directory).ordered() if s.node == "experiment"
                and (Trace(directory).update(s) or {})["wave_results"][0]["decision"] == "keep")
    assert d is not None and d.node == "experiment" and d.step == kept.step, d
    recorded, replayed = d.differences["wave_results"]["recorded"], d.differences["wave_results"]["replayed"]
    assert recorded[0]["decision"] == "keep" and replayed[0]["decision"] == "discard"


def test_the_implementer_reads_the_cited_chunks_whole_and_replay_serves_them(tmp_path):
    shown: list[list[dict]] = []

    def plan(facts, findings, tried, n):
        cited = next(f for f in findings if f.get("citations"))
        chunk_ids = [c["id"] for c in cited["citations"]]
        return [{"id": "H1", "key": "h1", "kind": "llm", "source": "llm", "title": "port the fork's kernel",
                 "rationale": "", "files": [], "citations": [cited["id"]], "chunk_ids": chunk_ids, "evidence": []}]

    def implement(hypothesis, base_commit):
        shown.append(hypothesis.get("context") or [])
        return None, {"error": "no edits"}

    options = workflow.RunOptions(budget_experiments=1, calibration_pairs=0, max_runs=8, max_research_rounds=1)
    directory, _, _ = record_run(tmp_path, kb=StandInKnowledgeBase(), plan=plan, implement=implement,
                                 options=options)
    assert len(shown) == 1 and shown[0] and all(c["text"].startswith("the whole of chunk") for c in shown[0])
    trace = Trace(directory)
    experiment = next(s for s in trace.ordered() if s.node == "experiment")
    reads = [c for c in experiment.calls if c["kind"] == "kb" and "ids" in c]
    assert [r["ids"] for r in reads] == [[c["id"] for c in shown[0]]]
    report = replay(directory, make_roles=lambda _llm: {"implement": implement, "plan": plan})
    assert report.identical, report.divergence
    assert len(shown) == 2 and shown[1] == shown[0]  # served from the recording


def test_replay_from_a_later_step_until_another(tmp_path):
    directory, _, _ = record_run(tmp_path)
    steps = Trace(directory).ordered()
    decide = next(s for s in steps if s.node == "decide")
    report = replay(directory, from_step=decide.step, until_step=decide.step + 2)
    assert report.identical and [s["step"] for s in report.steps] == [decide.step, decide.step + 1, decide.step + 2]
    with pytest.raises(TraceError, match="no step 99"):
        replay(directory, from_step=99)
    with pytest.raises(TraceError, match="comes before"):
        replay(directory, from_step=5, until_step=2)


def test_a_trace_cut_by_kill_9_is_readable(tmp_path):
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from pathlib import Path; "
              f"from test_trace_standin import record_run, CountingSandbox; "
              f"record_run(Path({str(tmp_path)!r}), sandbox=CountingSandbox(slow_bench_s=0.3))")
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = tmp_path / "runs" / "run-a" / TRACE_FILE
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:  # kill it inside an experiment, while it benchmarks
            if path.exists() and '"node": "experiment"' in path.read_text():
                break
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with open(path, "a") as f:
        f.write('{"event": "call", "kind": "sandbox", "step": 5, "comm')  # a torn last line
    trace = Trace(path.parent)
    steps = trace.ordered()
    assert steps[0].node == "profile" and steps[0].status == "ok"
    assert steps[-1].node == "experiment" and steps[-1].status == "interrupted" and steps[-1].calls
    assert trace.summary()["interrupted_steps"] == [steps[-1].step]


def test_fork_starts_from_the_checkpoint_with_new_options_and_names_its_parent(tmp_path):
    directory, _, _ = record_run(tmp_path)
    trace = Trace(directory)
    second_experiment = [s for s in trace.ordered() if s.node == "experiment"][1]
    new_dir = tmp_path / "runs" / "run-b"
    meta = fork_run(directory, new_dir, from_step=second_experiment.step, overrides={"workers": 2,
                                                                                   "budget_experiments": 3})
    assert meta["parent"] == {"run_id": "run-a", "step": second_experiment.step, "node": "experiment",
                              "checkpoint_id": second_experiment.starts_from,
                              "changed": {"workers": 2, "budget_experiments": 3}}
    assert read_meta(new_dir)["status"] == "forked"
    saver, conn = open_checkpointer(new_dir)
    try:
        graph = workflow.build_graph(workflow.RunDeps(target=None, ledger=None, run_dir=new_dir),
                                     checkpointer=saver)
        state = graph.get_state({"configurable": {"thread_id": "run-b"}})
    finally:
        conn.close()
    given = trace.blob(second_experiment.payload)
    assert state.values["run_id"] == "run-b" and state.values["options"]["workers"] == 2
    assert state.values["best"] == given["best"] and state.values["experiments"] == 1
    assert state.next == ("experiment", "experiment")  # the wave is sent again, now two wide
    assert [r["id"] for r in _ledger_rows(new_dir)] == ["E001"]  # the parent's experiments before the fork
    assert Trace(directory).ordered()[-1].step == trace.ordered()[-1].step  # the parent is left as it was
    with pytest.raises(TraceError, match="unknown run option"):
        fork_run(directory, tmp_path / "runs" / "run-c", from_step=1, overrides={"wokers": 2})


def test_fork_from_the_first_step_is_a_fresh_start_with_new_options(tmp_path):
    directory, _, _ = record_run(tmp_path)
    fork_run(directory, tmp_path / "runs" / "run-b", from_step=1, overrides={"budget_experiments": 1})
    summary = continue_run(tmp_path, "run-b")
    assert summary["experiments"] == 1 and summary["run_id"] == "run-b"


def _ledger_rows(directory: Path) -> list[dict]:
    from readfirst.graph.ledger import Ledger
    ledger = Ledger(directory / "ledger.sqlite")
    try:
        return ledger.rows()
    finally:
        ledger.close()


def test_a_run_without_a_trace_is_one_sentence(tmp_path):
    (tmp_path / "old").mkdir()
    with pytest.raises(TraceError, match="has no trace"):
        Trace(tmp_path / "old")


def test_the_planner_is_told_each_tried_experiment_with_its_outcome(tmp_path):
    told: list[list[dict]] = []

    def plan(facts, findings, tried, n):
        told.append(list(tried))
        return []  # the offline ideas run

    record_run(tmp_path, kb=StandInKnowledgeBase(), plan=plan)
    assert told[0] == [] and len(told) >= 2
    later = told[-1]
    assert [t["title"] for t in later if t.get("title")] == ["build with -DFAST=ON"]
    assert later[0]["decision"] == "keep" and later[0]["speedup"] > 0.05 and later[0]["key"]
