"""`readfirst run`'s options say what they do, through the real CLI: an option that would be ignored is refused
or named, a missing paper is 'no such file', a finished run is said finished, a Ray address where nothing
listens is one sentence at once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from config_project import CONFIG  # noqa: E402

pytestmark = pytest.mark.timeout(180)


def readfirst(*args: str, home: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    return subprocess.run([sys.executable, "-m", "readfirst.graph", *args], capture_output=True, text=True,
                          env={**environ, "READFIRST_HOME": str(home), "COLUMNS": "200", **(env or {})},
                          timeout=120)


def _runs(home: Path) -> list[str]:
    runs = home / "runs"
    return sorted(p.name for p in runs.iterdir()) if runs.exists() else []


def test_a_missing_paper_is_no_such_file_not_an_arxiv_search(tmp_path):
    proc = readfirst("run", "--offline", "--papers", "/missing/x.pdf", home=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "no such file: /missing/x.pdf" in proc.stderr
    assert "arxiv" not in proc.stderr.lower() and "connection" not in proc.stderr.lower()
    assert _runs(tmp_path) == []


def test_resuming_a_finished_run_says_it_finished_even_without_a_key(tmp_path):
    run = tmp_path / "runs" / "20261207-000000-done"
    run.mkdir(parents=True)
    (run / "meta.json").write_text(json.dumps({"run_id": run.name, "created_at": time.time(), "status": "finished",
                                               "offline": False, "target": "llama.cpp"}))
    proc = readfirst("run", "--resume", run.name, home=tmp_path)
    assert proc.returncode == 2
    assert f"run {run.name} has finished" in proc.stderr and "ANTHROPIC_API_KEY" not in proc.stderr


def test_a_ray_address_where_nothing_listens_is_said_at_once(tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago, and now nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = readfirst("run", "--offline", "--ray", f"127.0.0.1:{port}", home=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"--ray 127.0.0.1:{port}: nothing answers there" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 3
    assert _runs(tmp_path) == []


def test_ref_for_a_readfirst_toml_project_is_refused(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "readfirst.toml").write_text(CONFIG.format(bench="./bench", bench_timeout=60, metric="mb_per_s",
                                                          objective_extra=""))
    proc = readfirst("run", "--offline", "--source", str(project), "--ref", "v1.0", home=tmp_path / "home")
    assert proc.returncode == 2, proc.stderr
    assert "--ref does not apply to a readfirst.toml project" in proc.stderr
    assert _runs(tmp_path / "home") == []
