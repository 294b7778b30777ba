"""Issue 32, items 3, 4, 5 and 7 through the real command line: `runs prune`, no litter from a refused run,
options that say what is wrong, --help that cuts no option name, and --json everywhere it was missing."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from readfirst.graph.runner import write_meta
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_cli import readfirst  # noqa: E402

DAY = 86400


def _run(home: Path, run_id: str, *, status: str, age_days: float = 0, started: bool = True,
         **meta) -> Path:
    d = home / "runs" / run_id
    d.mkdir(parents=True)
    write_meta(d, {"run_id": run_id, "status": status, "created_at": time.time() - age_days * DAY, **meta})
    if started:
        (d / "checkpoints.sqlite").write_bytes(b"")
    return d


@pytest.fixture
def littered(tmp_path) -> Path:
    home = tmp_path / "home"
    _run(home, "never-started", status="failed", started=False, error="EngineUnavailable: no engine")
    _run(home, "interrupted-early", status="interrupted", started=False)
    unknown = home / "runs" / "unreadable"
    unknown.mkdir(parents=True)
    (unknown / "meta.json").write_text("{ not json")
    os.utime(unknown, (time.time() - 3600, time.time() - 3600))
    _run(home, "being-created", status="unknown", started=False)
    (home / "runs" / "being-created" / "meta.json").write_text("")  # unreadable, but made a moment ago
    _run(home, "old-finished", status="finished", age_days=40)
    _run(home, "old-but-running", status="running", age_days=40, pid=os.getpid())
    _run(home, "recent-finished", status="finished")
    _run(home, "failed-while-running", status="failed")  # it started: its checkpoints are worth reading
    return home


def _prune(home: Path, *args: str) -> dict:
    proc = readfirst("runs", "prune", *args, "--json", home=home)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)


def test_prune_is_a_dry_run_that_lists_the_litter(littered):
    plan = _prune(littered)
    assert plan["dry_run"] and plan["removed"] == []
    why = {r["run_id"]: r["reason"] for r in plan["runs"]}
    assert why == {"never-started": "failed before it started", "interrupted-early": "failed before it started",
                   "unreadable": "meta.json cannot be read"}
    assert sorted(p.name for p in (littered / "runs").iterdir()) == sorted(
        ["never-started", "interrupted-early", "unreadable", "being-created", "old-finished", "old-but-running",
         "recent-finished", "failed-while-running"])
    table = readfirst("runs", "prune", home=littered)
    assert "dry run: 3 runs would be removed" in table.stdout and "never-started" in table.stdout


def test_prune_yes_removes_what_the_dry_run_listed_and_older_than_adds_old_runs(littered):
    plan = _prune(littered, "--older-than", "30")
    assert {r["run_id"] for r in plan["runs"]} == {"never-started", "interrupted-early", "unreadable",
                                                   "old-finished"}
    done = _prune(littered, "--older-than", "30", "--yes")
    assert sorted(done["removed"]) == sorted(r["run_id"] for r in plan["runs"]) and not done["dry_run"]
    left = sorted(p.name for p in (littered / "runs").iterdir())
    assert left == ["being-created", "failed-while-running", "old-but-running", "recent-finished"]
    listed = json.loads(readfirst("runs", "--json", home=littered).stdout)
    assert sorted(r["run_id"] for r in listed) == left


def test_prune_removes_a_linked_run_folder_as_a_link(tmp_path):
    home = tmp_path / "home"
    elsewhere = _run(tmp_path / "elsewhere", "kept", status="failed", started=False)
    (home / "runs").mkdir(parents=True)
    (home / "runs" / "linked").symlink_to(elsewhere)
    os.utime(home / "runs" / "linked", (time.time() - 3600,) * 2, follow_symlinks=False)
    done = _prune(home, "--yes")
    assert done["removed"] == ["linked"] and not (home / "runs" / "linked").exists()
    assert (elsewhere / "meta.json").is_file()


@pytest.mark.parametrize("args", [["--kind", "bogus"], ["--kind", "llm", "--kind", "nope"]])
def test_a_run_refused_for_its_options_leaves_no_run_folder(tmp_path, args):
    proc = readfirst("run", "--offline", *args, home=tmp_path)
    assert proc.returncode == 2 and "unknown kind" in proc.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("item", ["/missing/x.pdf", "./notes.md", "~/no-such-readfirst-paper.txt", "paper.pdf"])
def test_a_missing_paper_file_is_no_such_file_not_an_arxiv_error(tmp_path, item):
    proc = readfirst("kb", "ingest", "papers", item, "--arxiv-url", "http://127.0.0.1:9", home=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    said = " ".join(proc.stderr.split())
    assert f"no such file: {item}" in said and "arXiv did not answer" not in said, said


@pytest.mark.parametrize("home", ["/proc/nope", "/proc/nope/deeper", "/etc/hostname"])
@pytest.mark.parametrize("args", [["runs"], ["runs", "--json"], ["trace", "list"], ["kb", "stats"]])
def test_a_data_directory_that_cannot_be_used_is_said(home, args):
    proc = readfirst("--home", home, *args, home=home)
    said = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "Traceback" not in said, said
    assert f"the data directory {home}" in said and said.count("error:") == 1, said
    assert proc.stdout == "", proc.stdout


def test_a_data_directory_not_made_yet_lists_nothing_and_is_not_made(tmp_path):
    home = tmp_path / "new" / "home"
    proc = readfirst("runs", "--json", home=home)
    assert proc.returncode == 0 and json.loads(proc.stdout) == [] and not (tmp_path / "new").exists()


def _one_json_document(proc) -> dict:
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return json.loads(proc.stdout)  # the whole of stdout: one document, nothing before or after


def test_trace_export_json(tmp_path):
    from test_trace_standin import record_run
    record_run(tmp_path)
    page = tmp_path / "page.html"
    out = _one_json_document(readfirst("trace", "export", "run-a", "--html", str(page), "--json", home=tmp_path))
    assert out["run_id"] == "run-a" and out["html"] == str(page) and out["bytes"] == page.stat().st_size > 0


def test_kb_reset_json_asks_on_stderr(tmp_path):
    import os
    import subprocess
    proc = subprocess.run([sys.executable, "-m", "readfirst.graph", "kb", "reset", "--json"], input="y\n",
                          capture_output=True, text=True, env={**os.environ, "READFIRST_HOME": str(tmp_path)},
                          timeout=300)
    out = _one_json_document(proc)
    assert "Remove every chunk" in proc.stderr
    assert out == {"knowledge_base": str(tmp_path / "knowledge_base"), "removed_chunks": 0}


@pytest.mark.docker
def test_sandbox_gc_and_image_json(tmp_path, base_image):
    gc = _one_json_document(readfirst("sandbox", "gc", "--json", home=tmp_path))
    assert isinstance(gc["removed_containers"], int) and gc["all"] is False
    image = _one_json_document(readfirst("sandbox", "image", "--json", home=tmp_path))
    assert image["image"] == base_image and image["id"].startswith("sha256:") and image["rebuilt"] is False


@pytest.mark.docker
def test_setup_json(tmp_path, shared_cache, base_image):
    from config_project import make_project
    project = make_project(tmp_path / "lz4", shared_cache / "sdists")
    out = _one_json_document(readfirst("setup", "--target-config", str(project / "readfirst.toml"), "--json",
                                       home=tmp_path / "home"))
    assert out["engine"] == "up" and out["target"] == "config" and out["image"].startswith("readfirst")
    assert len(out["baseline"]) == 40, out
