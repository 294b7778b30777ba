"""`readfirst trace ...` on a recorded stand-in run: list, show, replay, fork, export; the page in headless
Chromium (tests/chromium_page.py); user errors as one sentence."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from test_trace_standin import record_run  # noqa: E402

from readfirst.errors import ReadfirstError  # noqa: E402
from readfirst.graph import cli_trace, workflow  # noqa: E402


@pytest.fixture
def cli():
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    cli_trace.register(app)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["trace", *args])


@pytest.fixture
def recorded(paths):
    directory, summary, _ = record_run(paths.home)
    return directory


def test_list_shows_status_experiments_and_duration(cli, recorded):
    result = cli("list", "--json")
    assert result.exit_code == 0, result.output
    [run] = json.loads(result.stdout)
    assert run["run_id"] == "run-a" and run["status"] == "finished" and run["traced"]
    assert run["experiments"] == 2 and run["steps"] >= 6 and run["duration_s"] >= 0
    table = cli("list")
    assert "run-a" in table.stdout and "finished" in table.stdout


def test_show_timeline_one_step_a_node_and_an_experiment(cli, recorded):
    timeline = cli("show", "run-a")
    assert timeline.exit_code == 0, timeline.output
    assert "profile" in timeline.stdout and "E001" in timeline.stdout
    step = cli("show", "run-a", "--step", "1")
    assert step.exit_code == 0, step.output
    assert "target.prepare" in step.stdout and "sandbox `make" in step.stdout and "state update" in step.stdout
    data = json.loads(cli("show", "run-a", "--step", "1", "--json").stdout)
    assert data["node"] == "profile" and data["input"]["run_id"] == "run-a" and data["update"]["baseline"]
    assert any(c["kind"] == "target" and c["method"] == "profile" for c in data["calls"])
    nodes = json.loads(cli("show", "run-a", "--node", "experiment", "--json").stdout)
    assert {s["node"] for s in nodes["steps"]} == {"experiment"} and len(nodes["steps"]) == 2
    experiment = json.loads(cli("show", "run-a", "--experiment", "E002", "--json").stdout)
    assert experiment["experiments"] == ["E002"] and experiment["input"]["hypothesis"]["title"]


@pytest.mark.parametrize("args, says", [
    (("show", "nope"), "no run 'nope'"),
    (("show", "run-a", "--step", "99"), "has no step 99"),
    (("show", "run-a", "--node", "dream"), "has no step of node 'dream'"),
    (("show", "run-a", "--experiment", "E404"), "no step of run run-a ran experiment E404"),
    (("replay", "run-a", "--from", "3", "--until", "2"), "comes before"),
    (("fork", "run-a", "--from", "40"), "has no step 40"),
])
def test_user_errors_are_one_sentence(cli, recorded, args, says):
    result = cli(*args)
    assert isinstance(result.exception, ReadfirstError), result.output
    assert says in str(result.exception) and "\n" not in str(result.exception)


def test_a_run_without_a_trace(cli, paths):
    (paths.runs / "old").mkdir(parents=True)
    result = cli("show", "old")
    assert isinstance(result.exception, ReadfirstError) and "has no trace" in str(result.exception)


def test_replay_command_reports_identical_then_the_divergent_step(cli, recorded, monkeypatch):
    same = cli("replay", "run-a")
    assert same.exit_code == 0 and "identical" in same.stdout, same.output
    monkeypatch.setattr(workflow, "_config_id", lambda best: "changed")  # the experiments' ledger keys change
    changed = cli("replay", "run-a", "--json")
    assert changed.exit_code == 1
    report = json.loads(changed.stdout)
    assert report["divergence"]["node"] == "experiment" and "wave_results" in report["divergence"]["differences"]


def test_fork_prepare_only_names_its_parent(cli, recorded, paths):
    result = cli("fork", "run-a", "--from", "4", "--workers", "2", "--prepare-only", "--json")
    assert result.exit_code == 0, result.output
    meta = json.loads(result.stdout)
    assert meta["parent"]["run_id"] == "run-a" and meta["parent"]["step"] == 4 and meta["options"]["workers"] == 2
    listed = {r["run_id"]: r for r in json.loads(cli("list", "--json").stdout)}
    assert listed[meta["run_id"]]["parent"] == "run-a" and listed[meta["run_id"]]["status"] == "forked"


def test_the_html_export_is_self_contained_and_renders_in_headless_chromium(cli, recorded, tmp_path):
    from chromium_page import broken_links, external_references, open_page
    page = tmp_path / "trace.html"
    result = cli("export", "run-a", "--html", str(page))
    assert result.exit_code == 0, result.output
    assert external_references(page.read_text()) == []  # nothing to fetch
    opened = open_page(page, tmp_path)
    assert opened.requests == [] and broken_links(opened.dom) == []
    steps = re.findall(r'<details class="step (ok|error|interrupted)" id="step-(\d+)">', opened.dom)
    assert len(steps) == len(json.loads(cli("show", "run-a", "--json").stdout)["steps"])
    assert "target.prepare" in opened.dom and "state update" in opened.dom and "readfirst run run-a" in opened.dom
    # a step that ran an experiment links to it, and the experiment back to its step
    assert re.search(r'href="#exp-E001"', opened.dom) and re.search(r'href="#step-\d+"', opened.dom)


def test_fork_continues_as_a_run_of_its_own(cli, recorded, paths, monkeypatch):
    """The whole command: `trace fork` goes on through `readfirst run --resume`'s composition, here with the
    stand-in target in place of the Docker sandbox and llama.cpp."""
    _stand_in_composition(monkeypatch, paths)
    result = cli("fork", "run-a", "--from", "6", "--budget-experiments", "3", "--json")
    assert result.exit_code == 0, result.output
    forked = [r for r in json.loads(cli("list", "--json").stdout) if r["parent"] == "run-a"]
    assert len(forked) == 1 and forked[0]["status"] == "finished" and forked[0]["experiments"] == 3
    from readfirst.graph.trace_read import Trace
    assert Trace(paths.runs / forked[0]["run_id"]).ordered()[0].node == "decide"  # it goes on from the fork


def _stand_in_composition(monkeypatch, paths):
    from test_trace_standin import CountingSandbox, StandInTarget

    from readfirst.graph import deps

    def compose(_paths, spec, **_):
        sandbox = CountingSandbox()
        return sandbox, StandInTarget(paths.home, Path(spec["source"]), sandbox)
    # `readfirst run` takes its composition from graph.deps when it runs, so the stand-ins go there.
    monkeypatch.setattr(deps, "compose_target", compose)
    monkeypatch.setattr(deps, "open_knowledge_base", lambda *_, **__: None)


def test_an_llm_mode_run_of_readfirst_run_replays_with_no_request(paths, monkeypatch):
    """`readfirst run` composes the Anthropic model, planner and implementer itself; replay rebuilds the planner
    and implementer around the recorded answers, and the fake API sees nothing more."""
    from fake_anthropic import FakeAnthropic
    from test_trace_standin import make_source

    from readfirst.agents.llm import message_json
    from readfirst.graph import cli_run
    _stand_in_composition(monkeypatch, paths)
    app = typer.Typer()
    cli_run.register(app)
    cli_trace.register(app)
    runner = CliRunner()
    source = make_source(paths.home / "source")
    with FakeAnthropic([message_json("[]")] * 50) as api:  # the planner proposes nothing: offline ideas run
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        ran = runner.invoke(app, ["run", "--source", str(source), "--budget-experiments", "1", "--calibration-pairs",
                                  "0", "--max-runs", "16", "--json"])
        assert ran.exit_code == 0, ran.output
        run_id = json.loads(ran.stdout)["run_id"]
        asked = api.count
        assert asked > 0
        replayed = runner.invoke(app, ["trace", "replay", run_id, "--json"])
        assert api.count == asked
    assert replayed.exit_code == 0, replayed.output
    report = json.loads(replayed.stdout)
    assert report["identical"] and report["served"]["llm"] == asked
    timeline = json.loads(runner.invoke(app, ["trace", "show", run_id, "--json"]).stdout)
    planned = next(s for s in timeline["steps"] if s["llm"])
    shown = runner.invoke(app, ["trace", "show", run_id, "--step", str(planned["step"])], terminal_width=200)
    assert shown.exit_code == 0 and "LLM" in shown.stdout and "answered: []" in shown.stdout, shown.output
    assert timeline["summary"]["cost_usd"] > 0
