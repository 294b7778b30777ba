"""The run's HTML page and the CLI's run tables, on real ledgers and traces of the stand-in target: a finished run,
one interrupted with Ctrl-C through `readfirst run` itself, and the page opened in headless Chromium."""

from __future__ import annotations

import json
import re
import sqlite3
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import typer
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from chromium_page import broken_links, external_references, open_page  # noqa: E402
from test_trace_standin import CountingSandbox, StandInTarget, make_source, record_run  # noqa: E402

from readfirst.graph import cli_run, cli_trace  # noqa: E402


@pytest.fixture
def cli():
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    cli_run.register(app)
    cli_trace.register(app)
    runner = CliRunner()
    return lambda *args, width=200: runner.invoke(app, list(args), terminal_width=width)


class InterruptedTarget(StandInTarget):
    """Ctrl-C while the second experiment (run with 1 thread) is being measured: the first one, a keep, is in
    the ledger; the run's summary never gets written."""

    def measure(self, commit, variant, metrics=None):
        if variant["threads"] == 1:
            raise KeyboardInterrupt
        return super().measure(commit, variant)


def _interrupted_run(cli, paths, monkeypatch) -> str:
    from readfirst.graph import deps

    def compose(_paths, spec, **_):
        sandbox = CountingSandbox()
        return sandbox, InterruptedTarget(paths.home, Path(spec["source"]), sandbox)
    monkeypatch.setattr(deps, "compose_target", compose)
    monkeypatch.setattr(deps, "open_knowledge_base", lambda *_, **__: None)
    source = make_source(paths.home / "source")
    ran = cli("run", "--offline", "--source", str(source), "--budget-experiments", "4", "--calibration-pairs", "0",
              "--max-runs", "16")
    assert ran.exit_code == 130, ran.output
    [run_id] = [d.name for d in paths.runs.iterdir()]
    return run_id


def test_an_interrupted_run_shows_its_keep_from_the_ledger_marked_partial(cli, paths, monkeypatch):
    run_id = _interrupted_run(cli, paths, monkeypatch)
    [listed] = json.loads(cli("runs", "--json").stdout)
    assert listed["status"] == "interrupted" and "summary" not in listed
    assert listed["figures"]["partial"] and listed["figures"]["experiments"] == 1
    assert listed["figures"]["kept"] == ["E001"] and listed["figures"]["best_speedup"] == pytest.approx(0.08, abs=0.01)
    [traced] = json.loads(cli("trace", "list", "--json").stdout)
    assert traced["partial"] and traced["experiments"] == 1 and traced["best_speedup"] == pytest.approx(0.08, abs=0.01)
    # the page was written on the way out, from what the run had done
    page = (paths.runs / run_id / "report.html").read_text()
    assert "partial" in page and "id='exp-E001'" in page and f"{listed['figures']['best_speedup']:+.1%}" in page


@pytest.mark.parametrize("width", [40, 80])
def test_run_tables_never_cut_an_id_at_any_width(cli, paths, monkeypatch, width):
    run_id = _interrupted_run(cli, paths, monkeypatch)
    for args in (("runs",), ("trace", "list"), ("report", run_id)):
        shown = cli(*args, width=width)
        assert shown.exit_code == 0, shown.output
        assert run_id in shown.stdout or args[0] == "report", (args, shown.stdout)
        assert "…" not in shown.stdout, (args, shown.stdout)  # rich's ellipsis: nothing is cut
    assert "(partial)" in cli("runs", width=width).stdout
    assert "E001" in cli("report", run_id, width=width).stdout


@pytest.fixture
def finished(paths):
    directory, _, _ = record_run(paths.home)
    return directory


def test_the_page_of_a_finished_run(cli, finished, tmp_path):
    page = tmp_path / "run.html"
    result = cli("report", "run-a", "--html", str(page), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["html"] == str(page)
    text = page.read_text()
    assert external_references(text) == [] and "<script" not in text
    assert broken_links(text) == []
    for section in ("setup", "experiments", "best", "time", "details", "timeline"):
        assert f"id='{section}'" in text
    # the table links each experiment to its section, and the section to the step that ran it
    assert "href='#exp-E001'" in text and "href='#exp-E002'" in text and re.search(r"href='#step-\d+'", text)
    assert "experiment budget spent (2)" in text and "stand-in CPU" in text and "not calibrated" in text
    # plots: the running best, time per node, per step, per experiment, and each experiment's samples
    assert text.count("<svg") == 6
    assert "time per node" in text and "E001: samples" in text and "E002: samples" in text


def test_the_source_kind_is_a_column_and_colours_the_wins(cli, finished, tmp_path):
    ledger = sqlite3.connect(finished / "ledger.sqlite")
    row = json.loads(ledger.execute("SELECT row FROM experiments WHERE id='E001'").fetchone()[0])
    ledger.execute("UPDATE experiments SET row=? WHERE id='E001'", (json.dumps({**row, "source_kind": "fork"}),))
    ledger.commit()
    ledger.close()
    page = tmp_path / "run.html"
    assert cli("report", "run-a", "--html", str(page)).exit_code == 0
    text = page.read_text()
    assert "<td>fork</td>" in text and "kept (fork)" in text
    assert "fork" in cli("report", "run-a").stdout


def test_trace_export_writes_the_same_page(cli, finished, tmp_path):
    assert cli("trace", "export", "run-a", "--html", str(tmp_path / "a.html")).exit_code == 0
    assert cli("report", "run-a", "--html", str(tmp_path / "b.html")).exit_code == 0
    strip = lambda t: re.sub(r"written [0-9: -]+", "", t)  # noqa: E731 - the one line that differs
    assert strip((tmp_path / "a.html").read_text()) == strip((tmp_path / "b.html").read_text())


def test_the_page_in_chromium_renders_links_inside_and_asks_for_nothing(cli, finished, tmp_path):
    page = tmp_path / "run.html"
    assert cli("report", "run-a", "--html", str(page)).exit_code == 0
    opened = open_page(page, tmp_path)
    assert opened.requests == []
    assert broken_links(opened.dom) == []
    assert opened.dom.count("<svg") == 6 and opened.dom.count("<table") >= 4
    assert "readfirst run run-a" in opened.dom and 'id="exp-E001"' in opened.dom
    assert opened.screenshot.stat().st_size > 20_000  # a drawn page, not a blank one
    # the same checks catch a page that fetches from elsewhere or links to nothing
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><img src='http://example.invalid/x.png'><a href='#nowhere'>x</a>")
    caught = open_page(bad, tmp_path / "bad")
    assert caught.requests == ["http://example.invalid/x.png"] and broken_links(caught.dom) == ["#nowhere"]
    assert external_references(bad.read_text())


def test_the_page_says_how_many_runs_a_busy_machine_cost(cli, finished, tmp_path):
    page = tmp_path / "run.html"
    assert cli("report", "run-a", "--html", str(page)).exit_code == 0
    assert "busy machine" not in page.read_text()  # a quiet run says nothing of it
    meta_path = finished / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "host_load": {"measured": 8, "retaken": 5, "contaminated": 2}}))
    assert cli("report", "run-a", "--html", str(page)).exit_code == 0
    text = page.read_text()
    assert "busy machine" in text and "5 runs retaken" in text and "2 of 8 measurements stayed busy" in text


class BusyTarget(StandInTarget):
    """Its measurements were retaken for other processes' load, as sandbox.host_load.LoadWatch reports it."""

    def __init__(self, *args):
        super().__init__(*args)
        self.load_watch = SimpleNamespace(report=lambda: {"measured": 8, "retaken": 5, "contaminated": 2})


def test_a_run_on_a_busy_machine_says_so_and_keeps_it_with_its_summary(cli, paths, monkeypatch, tmp_path):
    from readfirst.graph import deps

    def compose(_paths, spec, **_):
        sandbox = CountingSandbox()
        return sandbox, BusyTarget(paths.home, Path(spec["source"]), sandbox)
    monkeypatch.setattr(deps, "compose_target", compose)
    monkeypatch.setattr(deps, "open_knowledge_base", lambda *_, **__: None)
    source = make_source(paths.home / "source")
    ran = cli("run", "--offline", "--source", str(source), "--budget-experiments", "2", "--calibration-pairs", "0",
              "--max-runs", "16")
    assert ran.exit_code == 0, ran.output
    assert "busy machine: 5 runs retaken" in " ".join(ran.output.split()), ran.output
    [run_dir] = list(paths.runs.iterdir())
    assert json.loads((run_dir / "meta.json").read_text())["summary"]["host_load"]["retaken"] == 5
    page = tmp_path / "run.html"
    assert cli("report", run_dir.name, "--html", str(page)).exit_code == 0
    assert "2 of 8 measurements stayed busy" in page.read_text()


@pytest.mark.parametrize("width", [80, 200])
def test_a_long_reason_is_short_in_the_table_and_whole_below_it(cli, finished, width):
    reason = ("discarded at gate performance: the candidate is not shown faster within the run cap (30 pairs); "
              "tg128 +0.4% [-1.2%, +2.0%] after 30 pairs against the calibrated noise 1.3%, and pp512 -0.2% "
              "[-0.9%, +0.5%]: the change moves nothing this benchmark measures. The end of the reason.")
    ledger = sqlite3.connect(finished / "ledger.sqlite")
    row = json.loads(ledger.execute("SELECT row FROM experiments WHERE id='E001'").fetchone()[0])
    ledger.execute("UPDATE experiments SET row=? WHERE id='E001'", (json.dumps({**row, "reason": reason}),))
    ledger.commit()
    ledger.close()
    out = cli("report", "run-a", width=width).stdout
    table, _, below = out.partition("reasons in full:")
    assert below, out
    assert " ".join(below.split()).count(" ".join(f"E001: {reason}".split())) == 1  # whole, wrapped at words
    table_lines = [line for line in table.splitlines() if "E001" in line or "..." in line]
    assert "The end of the reason" not in " ".join(table.split())
    assert len(table.splitlines()) < 40, table  # the cell is a sentence, not a paragraph
    assert table_lines
