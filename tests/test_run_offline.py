"""`readfirst run --offline` end to end on llama.cpp: the real sandbox, build, model and benchmarks, a small
budget. Also: kill -9 in the middle, then --resume, loses at most the experiment in flight and redoes none.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# Small shapes keep each benchmark run to seconds; the statistics still need their minimum number of pairs.
# Runtime experiments need no build; build experiments are exercised by the first test.
FAST = ["--offline", "-p", "16", "-n", "8", "--max-runs", "8", "--calibration-pairs", "0"]
RUNTIME_ONLY = [*FAST, "--kind", "runtime"]


def readfirst(*args: str, home: Path, timeout: float = 3600, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "READFIRST_HOME": str(home)}
    env.pop("ANTHROPIC_API_KEY", None)
    return subprocess.run([sys.executable, "-m", "readfirst.graph", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


def ledger_rows(run_dir: Path) -> list[tuple]:
    db = sqlite3.connect(run_dir / "ledger.sqlite")
    try:
        return db.execute("SELECT id, key, decision, created_at FROM experiments ORDER BY seq").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


def test_without_a_key_and_without_offline_nothing_starts(tmp_path):
    proc = readfirst("run", home=tmp_path)
    assert proc.returncode == 2
    assert "ANTHROPIC_API_KEY" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_a_missing_model_is_a_clear_error_before_any_work(tmp_path):
    proc = readfirst("run", "--offline", "--model", str(tmp_path / "nope.gguf"), home=tmp_path)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_an_offline_run_completes_and_its_report_and_ledger_agree(tmp_path):
    proc = readfirst("run", *FAST, "--budget-experiments", "2", "--json", home=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    run_dir = tmp_path / "runs" / summary["run_id"]
    rows = ledger_rows(run_dir)
    assert summary["experiments"] == len(rows) == 2
    assert summary["stop_reason"].startswith("experiment budget spent")
    with open(summary["results_tsv"]) as f:
        tsv = list(csv.DictReader(f, delimiter="\t"))
    assert [r["id"] for r in tsv] == [r[0] for r in rows]
    assert [r["decision"] for r in tsv] == [r[2] for r in rows]
    assert Path(summary["report"]).stat().st_size > 1000
    assert any("bounded at" in f for f in summary["facts"])
    listed = json.loads(readfirst("runs", "--json", home=tmp_path).stdout)
    assert [r["status"] for r in listed if r["run_id"] == summary["run_id"]] == ["finished"]
    report = readfirst("report", summary["run_id"], home=tmp_path)
    assert report.returncode == 0 and rows[0][0] in report.stdout


def test_kill_9_then_resume_redoes_no_finished_experiment(tmp_path):
    env = {**os.environ, "READFIRST_HOME": str(tmp_path)}
    env.pop("ANTHROPIC_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "readfirst.graph", "run", *RUNTIME_ONLY, "--budget-experiments",
                             "3"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 3000
        run_dir = None
        while time.monotonic() < deadline:
            dirs = list((tmp_path / "runs").glob("*")) if (tmp_path / "runs").exists() else []
            if dirs and (dirs[0] / "ledger.sqlite").exists() and len(ledger_rows(dirs[0])) >= 1:
                run_dir = dirs[0]
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(2)
        assert run_dir is not None
        before = ledger_rows(run_dir)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and everything it started
        proc.wait()
    listed = json.loads(readfirst("runs", "--json", home=tmp_path).stdout)
    assert listed[0]["status"] == "crashed"
    resumed = readfirst("run", "--offline", "--resume", run_dir.name, "--json", home=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = ledger_rows(run_dir)
    assert len(after) == 3
    assert after[:len(before)] == before  # same ids, keys, decisions and timestamps: nothing redone
    assert len({r[1] for r in after}) == 3
    assert json.loads(resumed.stdout)["experiments"] == 3
