"""What a user reads about a run: a wait for the machine is its own bar and its own part of an experiment's time
(not 'build 20.8 s' beside a build of 0.2 s), the page names the project, a fork-port finding names the fork's
function it rests on, results.tsv has the source column, a resumed run names the options it ignores, the
knowledge base names a fork readably and a fact says 'under a second' instead of '0 s'."""

from __future__ import annotations

import csv
import json
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_report_html import _interrupted_run, cli  # noqa: E402, F401 - cli: the run and trace commands' fixture
from test_trace_standin import StandInTarget, record_run  # noqa: E402

from readfirst.sandbox import machine_lock as ml  # noqa: E402

pytestmark = pytest.mark.timeout(300)


class WaitingTarget(StandInTarget):
    """The first candidate's build waits for the machine: another run measures on it for a second and a half."""
    waited = False

    def build(self, commit, variant, *, worker=0):
        cache = self.repository.parent / "cache"
        if variant["flags"] and not WaitingTarget.waited:
            WaitingTarget.waited = True
            held, release = threading.Event(), threading.Event()

            def other_runs_bench() -> None:
                with ml.machine_lock(cache, exclusive=True, what="bench"):
                    held.set()
                    release.wait(60)
            threading.Thread(target=other_runs_bench).start()
            held.wait(60)
            threading.Timer(1.5, release.set).start()
        with ml.machine_lock(cache, exclusive=False, what="build"):
            return super().build(commit, variant, worker=worker)


def test_a_wait_for_the_machine_is_its_own_bar_and_part(paths, tmp_path):
    from readfirst.graph.report_html import write_html_report
    directory, _, _ = record_run(paths.home, target_class=WaitingTarget)
    from readfirst.graph.report_data import ledger_rows
    rows = ledger_rows(directory)
    waited = [r for r in rows if (r.get("durations") or {}).get("wait", 0) > 1.0]
    assert len(waited) == 1, [r.get("durations") for r in rows]
    durations = waited[0]["durations"]
    assert durations["build"] < 1.0 < durations["wait"]  # the build's own time, the wait apart
    text = write_html_report(directory, tmp_path / "run.html").read_text()
    assert "waiting for the machine" in text  # the bars' legend, in the SVG's text
    assert f"waiting for the machine {durations['wait']:.1f}s" in text and f"build {durations['build']:.1f}s" in text
    steps = [json.loads(line) for line in (directory / "trace.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "step_end" and e.get("waited_s", 0) > 1.0 for e in steps)
    assert "waiting)" in text  # the node's share says its waits apart


def test_the_page_names_the_project_not_the_kind_of_target(paths, tmp_path):
    from readfirst.graph.report_html import write_html_report
    directory, _, _ = record_run(paths.home)
    meta = json.loads((directory / "meta.json").read_text())
    (directory / "meta.json").write_text(json.dumps({**meta, "target": "config"}))
    text = write_html_report(directory, tmp_path / "a.html").read_text()
    assert "make stand-in better on" in text and "make config better" not in text
    (directory / "meta.json").write_text(json.dumps({**meta, "target": "config", "project": "lz4"}))
    assert "make lz4 better on" in write_html_report(directory, tmp_path / "b.html").read_text()


def test_a_fork_port_finding_names_the_forks_function(paths):
    from readfirst.agents.offline_policy import port_finding
    from readfirst.graph.report_data import cited_chunks
    from readfirst.graph.report_html import _experiment

    class Port:
        def __init__(self, symbol):
            self.symbol, self.fork, self.fork_path, self.path = symbol, "ik_llama.cpp", "ggml/src/new.c", "ggml/src/q.c"

    class Ports:
        candidates = [Port("ggml_vec_dot"), Port("ggml_gemv")]
    finding = port_finding(Ports(), ["ik_llama.cpp"])
    row = {"id": "E001", "title": "port ggml_gemv", "decision": "discard", "kind": "patch", "reason": "slower",
           "hypothesis": {"where": "ggml/src/q.c ggml_gemv", "citations": [finding["id"]]}}
    cites = cited_chunks(row, {finding["id"]: finding})
    assert [(c["kind"], c["origin"]) for c in cites] == [
        ("fork function", "ik_llama.cpp: ggml/src/new.c, the whole of ggml_gemv (the tree's is in ggml/src/q.c)")]
    html = _experiment({"citations": {"E001": cites}}, row, "tg", {})
    assert "<td>fork function</td>" in html and "the whole of ggml_gemv" in html


def test_results_tsv_has_the_source_column(paths):
    from readfirst.graph.ledger import Ledger
    directory, summary, _ = record_run(paths.home)
    ledger = Ledger(directory / "ledger.sqlite")
    ledger.record({"key": "k-fork", "kind": "patch", "title": "a port", "decision": "discard", "reason": "slower",
                   "hypothesis": {"source_kind": "fork"}, "durations": {"build": 1.0, "wait": 2.5}})
    tsv = ledger.export_tsv(directory / "results.tsv")
    ledger.close()
    rows = list(csv.DictReader(tsv.open(), delimiter="\t"))
    assert rows[-1]["source"] == "fork" and rows[-1]["wait_s"] == "2.5" and rows[-1]["build_s"] == "1.0"


def test_a_resumed_run_names_the_options_it_ignores(cli, paths, monkeypatch):
    run_id = _interrupted_run(cli, paths, monkeypatch)
    resumed = cli("run", "--resume", run_id, "--budget-minutes", "5", "--workers", "2")
    assert f"resuming run {run_id} with the options it started with; ignored: --budget-minutes, --workers" \
        in resumed.output, resumed.output


def test_names_a_user_reads():
    from readfirst.knowledge_base.ingest import fork_recipe, source_key
    from readfirst.targets.config_target import _seconds_said
    key = source_key(fork_recipe("/home/me/fork", "/home/me/proj", as_trees=True))
    assert key == "fork:/home/me/fork against /home/me/proj" and ".." not in key
    assert source_key(fork_recipe("ik_llama.cpp", subdirs=["ggml/src"])) == \
        "fork:ik_llama.cpp against llama.cpp in ggml/src"
    assert _seconds_said(0.229) == "under a second" and _seconds_said(12.4) == "12 s"
