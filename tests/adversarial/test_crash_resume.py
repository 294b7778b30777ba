"""Issue 13, crash and resume: SIGKILL at random points, then resume, must lose nothing and count nothing twice.

- A run (the real graph, runner, ledger, LangGraph checkpoints and trace on the stand-in target; tests/adversarial/
  crash_driver.py) is killed 30 times at random moments, each kill followed by a resume that may itself be the
  next one killed; every run is then resumed to its end. Each must finish with every experiment of its budget in
  its ledger exactly once, and both SQLite files must pass `PRAGMA integrity_check`.
- `readfirst kb ingest path` of 5,000 chunks is killed 10 times at random moments; after each kill the store opens
  and answers a query, and the next ingestion goes on from what was written (what was embedded is not embedded
  again); the last one completes it with every chunk there once. An ingestion that ends before its kill is
  checked complete the same way, and the kills go on in a fresh store until ten have landed.

The kill moments come from a seeded generator and are printed when an assertion fails."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_trace_standin import make_source  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

DRIVER = Path(__file__).with_name("crash_driver.py")


def _integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def _killed_after(cmd: list[str], seconds: float, env: dict[str, str]) -> bool:
    """Start `cmd`, SIGKILL it after `seconds`; True when it was still running (killed), False when it ended."""
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty child never blocks on a full pipe
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        try:
            proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        err.seek(0)
        assert proc.returncode == 0, err.read().decode(errors="replace")[-3000:]
    return False


def test_thirty_kills_of_a_run_at_random_points_then_resumes_lose_and_double_nothing(attack, tmp_path):
    rng = random.Random(13)
    home = tmp_path / "home"
    make_source(home / "source")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    from readfirst.graph.ledger import Ledger
    from readfirst.graph.runner import read_meta

    def keys(run_id: str) -> list[str]:
        ledger = Ledger(home / "runs" / run_id / "ledger.sqlite")
        try:
            return [r["key"] for r in ledger.rows()]
        finally:
            ledger.close()
    # the run nothing interrupts: what every killed and resumed one must end with
    began = time.monotonic()
    reference = subprocess.run([sys.executable, str(DRIVER), str(home), "reference"], capture_output=True, text=True,
                               env=env, timeout=300)
    whole = time.monotonic() - began  # the kills spread over a whole run, start-up included
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = sorted(keys("reference"))
    assert len(expected) >= 3, expected
    kills, runs, run = [], [], 0
    runs.append(f"run-{run}")
    while len(kills) < 30:
        moment = rng.uniform(0.2, 1.1 * whole)
        if _killed_after([sys.executable, str(DRIVER), str(home), runs[-1]], moment, env):
            kills.append((runs[-1], round(moment, 2)))
        else:  # it finished before the kill: the next kills go to a new run
            run += 1
            runs.append(f"run-{run}")
    for run_id in runs:
        directory = home / "runs" / run_id
        if read_meta(directory).get("status") != "finished":
            proc = subprocess.run([sys.executable, str(DRIVER), str(home), run_id], capture_output=True, text=True,
                                  env=env, timeout=300)
            assert proc.returncode == 0, (run_id, kills, proc.stderr[-3000:])
        meta = read_meta(directory)
        assert meta["status"] == "finished", (run_id, meta.get("error"), kills)
        got = keys(run_id)
        if len(got) != len(set(got)):
            attack.escaped(f"{run_id}: an experiment recorded twice after the kills {kills}")
        if sorted(got) != expected:
            attack.escaped(f"{run_id}: its experiments {sorted(got)} are not the uninterrupted run's {expected} "
                           f"after the kills {kills}")
        assert len(got) == meta["summary"]["experiments"], (run_id, meta["summary"], kills)
        for name in ("ledger.sqlite", "checkpoints.sqlite"):
            assert _integrity(directory / name) == "ok", (run_id, name, kills)
    assert len({k[0] for k in kills}) >= 3, kills  # the kills landed in several runs, resumed ones among them


def _notes(directory: Path, files: int = 250, sections: int = 20) -> None:
    directory.mkdir(parents=True)
    words = ("tile", "stride", "vector", "cache", "lane", "block", "queue", "fence", "batch", "row")
    for f in range(files):
        body = "".join(f"## Section {s} of note {f}\n\nThe {words[(f + s) % 10]} {words[(f * s) % 10]} of note {f}, "
                       f"part {s}: {' '.join(words[(f + s + i) % 10] for i in range(40))}.\n\n"
                       for s in range(sections))
        (directory / f"note-{f:03d}.md").write_text(f"# Note {f}\n\n{body}")


def _stats(env: dict[str, str]) -> tuple[dict, float]:
    """`kb stats --json` and how long it took (a process start, the imports and opening the store)."""
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "readfirst.graph", "kb", "stats", "--json"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout), time.monotonic() - began


def test_ten_kills_of_a_five_thousand_chunk_ingestion_leave_a_store_that_answers_and_a_rerun_completes(
        attack, tmp_path):
    rng = random.Random(29)
    home = tmp_path / "home"
    notes = tmp_path / "notes"
    _notes(notes)
    env = {**os.environ, "READFIRST_HOME": str(home)}
    ingest = [sys.executable, "-m", "readfirst.graph", "kb", "ingest", "path", str(notes), "--json"]
    query = [sys.executable, "-m", "readfirst.graph", "kb", "query", "the stride of note 7", "--json"]
    # the embedder made ready first (its export on first use is a one-off that would inflate the timing below)
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "note.md").write_text("# One note\n\nA stride of a tile.\n")
    warm = subprocess.run([*ingest[:-2], str(tmp_path / "one")], capture_output=True, text=True,
                          env={**os.environ, "READFIRST_HOME": str(tmp_path / "warm")}, timeout=600)
    assert warm.returncode == 0, warm.stderr[-3000:]
    # a clean ingestion of the same notes, elsewhere: the count every chunk once makes, and how long the whole
    # takes, so that each kill can be aimed inside what is left of the work (a kill after the end proves nothing)
    clean_env = {**os.environ, "READFIRST_HOME": str(tmp_path / "clean")}
    began = time.monotonic()
    clean = subprocess.run(ingest, capture_output=True, text=True, env=clean_env, timeout=900)
    whole = time.monotonic() - began
    assert clean.returncode == 0, clean.stderr[-3000:]
    clean_counts, start_up = _stats(clean_env)
    assert clean_counts["chunks"] >= 5000, clean_counts
    def complete(env: dict[str, str], kills_here: list[float]) -> None:
        """The store after its kills: what a clean ingestion makes, Chroma and FTS5 alike."""
        counts, _ = _stats(env)
        if counts["chunks"] != clean_counts["chunks"] or counts["lexical_chunks"] != counts["chunks"]:
            attack.escaped(f"after the kills {kills_here} the store holds {counts['chunks']} chunks, a clean "
                           f"ingestion {clean_counts['chunks']} (lexical index: {counts['lexical_chunks']})")

    # Kills are aimed by time, and the work left after a kill is only estimated: an ingestion that ends before
    # its kill is checked complete, and the next kills go to a fresh store, until ten have landed.
    kills, here, written, stores = [], [], 0, 1
    for _ in range(30):
        if len(kills) == 10:
            break
        left = 1 - written / clean_counts["chunks"]
        moment = start_up + rng.uniform(0.05, 0.8) * left * max(whole - start_up, 1.0)
        if not _killed_after(ingest, moment, env):
            complete(env, here)
            stores += 1
            env = {**os.environ, "READFIRST_HOME": str(tmp_path / f"home-{stores}")}
            here, written = [], 0
            continue
        kills.append(round(moment, 1))
        here.append(kills[-1])
        answered = subprocess.run(query, capture_output=True, text=True, env=env, timeout=300)
        assert answered.returncode == 0, (kills, answered.stderr[-2000:])  # the store opens and answers
        json.loads(answered.stdout)
        written = _stats(env)[0]["chunks"]
    assert len(kills) == 10, kills
    last = subprocess.run(ingest, capture_output=True, text=True, env=env, timeout=900)
    assert last.returncode == 0, (kills, last.stderr[-3000:])
    complete(env, here)
    summary = json.loads(last.stdout)
    (result,) = summary if isinstance(summary, list) else [summary]
    # what the kills left written was not embedded again
    assert result["chunks_embedded"] <= clean_counts["chunks"] - written, (result, written, here)
