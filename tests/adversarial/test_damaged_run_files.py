"""Issue 28 (left over): a run folder is data someone may send, so its files may be damaged or may not be files.

A real run of the stand-in target is recorded once (test_tampered_run.py's fixture) and copied twice, as run-a
and run-b; each case damages run-a's ledger.sqlite or meta.json (garbage, cut in half, rows that are no JSON, a
symlink out of the folder, a FIFO) and runs the listings and the commands about run-a through the real CLI in a
fresh process. A listing still lists run-b whole and shows run-a as damaged or unknown; a command about run-a
says in one sentence which file it could not read; nothing hangs, nothing is read or written through a symlink."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from .test_tampered_run import _copy, recorded  # noqa: F401 - the module-scoped recorded run

LISTINGS = {"runs": ["runs", "--json"], "trace list": ["trace", "list", "--json"]}
ABOUT_RUN_A = {
    "report": lambda out: ["report", "run-a"],
    "report --html": lambda out: ["report", "run-a", "--html", str(out / "page.html")],
    "trace export --html": lambda out: ["trace", "export", "run-a", "--html", str(out / "trace.html")],
}


def _readfirst(attack, home: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "READFIRST_HOME": str(home), "COLUMNS": "200"}
    try:
        return subprocess.run([sys.executable, "-m", "readfirst.graph", *args], capture_output=True, text=True,
                              env=env, timeout=90, cwd=home)
    except subprocess.TimeoutExpired:
        attack.escaped(f"`readfirst {' '.join(args)}` hangs on a run folder's file")


def _two_runs(recorded: Path, root: Path) -> Path:  # noqa: F811
    home = _copy(recorded, root)
    import shutil
    shutil.copytree(recorded, home / "runs" / "run-b")
    return home


def _cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _rows_not_json(path: Path) -> None:
    with sqlite3.connect(path) as c:
        c.execute("UPDATE experiments SET row = 'not json {'")
    c.close()


def _rows_not_objects(path: Path) -> None:
    with sqlite3.connect(path) as c:
        c.execute("UPDATE experiments SET row = '[1, 2]'")
    c.close()


def _no_table(path: Path) -> None:
    path.unlink()
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE other (x)")
    c.close()


DAMAGE = {
    "garbage": lambda p: p.write_bytes(b"not a database\n" * 1000),
    "cut in half": _cut_in_half,
    "rows not json": _rows_not_json,
    "rows not objects": _rows_not_objects,
    "no experiments table": _no_table,
    "a FIFO": lambda p: (p.unlink(), os.mkfifo(p)),
}


def _listed(attack, home: Path, listing: str) -> dict[str, dict]:
    proc = _readfirst(attack, home, LISTINGS[listing])
    if "Traceback" in proc.stderr or proc.returncode != 0:
        attack.escaped(f"one damaged run broke `readfirst {listing}`:\n{proc.stderr[-2000:]}")
    return {item["run_id"]: item for item in json.loads(proc.stdout)}


def _experiments(item: dict) -> int:
    return item["figures"]["experiments"] if "figures" in item else item["experiments"]


@pytest.mark.parametrize("listing", sorted(LISTINGS))
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_ledger_is_one_damaged_run_in_a_listing(attack, recorded, damage, listing):  # noqa: F811
    home = _two_runs(recorded, attack.root)
    DAMAGE[damage](home / "runs" / "run-a" / "ledger.sqlite")
    runs = _listed(attack, home, listing)
    assert _experiments(runs["run-b"]) > 0, runs["run-b"]
    assert runs["run-a"]["status"] == "damaged", runs["run-a"]
    assert "ledger.sqlite" in runs["run-a"]["damaged"], runs["run-a"]


@pytest.mark.parametrize("command", sorted(ABOUT_RUN_A))
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_ledger_is_one_sentence_about_its_run(attack, recorded, damage, command):  # noqa: F811
    home = _two_runs(recorded, attack.root)
    DAMAGE[damage](home / "runs" / "run-a" / "ledger.sqlite")
    proc = _readfirst(attack, home, ABOUT_RUN_A[command](attack.root))
    if "Traceback" in proc.stderr:
        attack.escaped(f"`readfirst {command}` of a damaged ledger is a traceback:\n{proc.stderr[-2000:]}")
    said = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "error:" in said and "ledger.sqlite" in said, proc.stderr
    assert said.count("error:") == 1 and len(said) < 600, said


def test_the_damaged_run_is_said_in_the_table_too(attack, recorded):  # noqa: F811
    home = _two_runs(recorded, attack.root)
    (home / "runs" / "run-a" / "ledger.sqlite").write_bytes(b"\0" * 4096)
    for args in (["runs"], ["trace", "list"]):
        proc = _readfirst(attack, home, args)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        line_a = next(line for line in proc.stdout.splitlines() if "run-a" in line)
        line_b = next(line for line in proc.stdout.splitlines() if "run-b" in line)
        assert "damaged" in line_a and "damaged" not in line_b, proc.stdout


@pytest.mark.parametrize("sibling", ["ledger.sqlite", "ledger.sqlite-wal"])
def test_a_ledger_symlink_out_of_the_folder_is_neither_read_nor_written(attack, recorded, sibling):  # noqa: F811
    home = _two_runs(recorded, attack.root)
    outside = attack.root / "outside.sqlite"
    outside.write_bytes(b"")  # an empty file: opening it as a ledger would create the table in it
    link = home / "runs" / "run-a" / sibling
    link.unlink(missing_ok=True)
    link.symlink_to(outside)
    runs = _listed(attack, home, "runs")
    _readfirst(attack, home, ABOUT_RUN_A["report"](attack.root))
    if outside.stat().st_size:
        attack.escaped(f"a listing wrote through run-a's {sibling} symlink to a file outside the run folder")
    assert runs["run-a"]["status"] == "damaged" and sibling in runs["run-a"]["damaged"], runs["run-a"]


SECRET = "a-secret-outside-the-run-folder"


def _meta_symlink(path: Path, root: Path) -> None:
    outside = root / "secret.json"
    outside.write_text(json.dumps({"run_id": "run-a", "status": "finished", "source": SECRET}))
    path.unlink()
    path.symlink_to(outside)


META_DAMAGE = {
    "garbage": lambda p, root: p.write_bytes(b"\xff\xfe{{{ not json"),
    "a JSON list": lambda p, root: p.write_text("[1, 2, 3]"),
    "a symlink out of the folder": _meta_symlink,
    "a FIFO": lambda p, root: (p.unlink(), os.mkfifo(p)),
    "a sparse 4 GB file": lambda p, root: os.truncate(p, 4 << 30),
}


@pytest.mark.parametrize("listing", sorted(LISTINGS))
@pytest.mark.parametrize("damage", sorted(META_DAMAGE))
def test_a_damaged_meta_is_one_unknown_run_in_a_listing(attack, recorded, damage, listing):  # noqa: F811
    home = _two_runs(recorded, attack.root)
    META_DAMAGE[damage](home / "runs" / "run-a" / "meta.json", attack.root)
    runs = _listed(attack, home, listing)
    if SECRET in json.dumps(runs):
        attack.escaped("a listing read run-a's meta.json through a symlink out of the run folder")
    assert runs["run-a"]["status"] == "unknown", runs["run-a"]
    assert _experiments(runs["run-b"]) > 0 and runs["run-b"]["status"] == "finished", runs["run-b"]


@pytest.mark.parametrize("damage", sorted(META_DAMAGE))
def test_a_damaged_meta_still_reports_the_ledger(attack, recorded, damage):  # noqa: F811
    home = _two_runs(recorded, attack.root)
    META_DAMAGE[damage](home / "runs" / "run-a" / "meta.json", attack.root)
    proc = _readfirst(attack, home, ["report", "run-a", "--json"])
    if SECRET in proc.stdout:
        attack.escaped("`readfirst report` read run-a's meta.json through a symlink out of the run folder")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["experiments"], proc.stdout[:2000]


@pytest.mark.parametrize("claimed", ["../../elsewhere", None, 42])
def test_a_meta_naming_another_run_is_listed_under_its_folder(attack, recorded, claimed):  # noqa: F811
    home = _two_runs(recorded, attack.root)
    meta = home / "runs" / "run-a" / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "run_id": claimed}))
    for listing in sorted(LISTINGS):
        runs = _listed(attack, home, listing)
        assert sorted(runs) == ["run-a", "run-b"], (listing, sorted(runs, key=str))
        assert _experiments(runs["run-a"]) > 0 and _experiments(runs["run-b"]) > 0, runs



@pytest.mark.parametrize("pid", ["x", 2**70, -1, 0, True])
def test_a_running_meta_naming_no_process_is_listed_as_crashed(attack, recorded, pid):  # noqa: F811
    home = _two_runs(recorded, attack.root)
    meta = home / "runs" / "run-a" / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "status": "running", "pid": pid}))
    for listing in sorted(LISTINGS):
        runs = _listed(attack, home, listing)
        assert runs["run-a"]["status"] == "crashed" and runs["run-b"]["status"] == "finished", (listing, runs)


def _trace_symlink(path: Path, root: Path) -> None:
    outside = root / "secret.jsonl"
    outside.write_text(json.dumps({"event": "step_start", "step": 1, "node": SECRET}) + "\n")
    path.unlink()
    path.symlink_to(outside)


def _blobs_naming(how: str):
    """Every blob reference of the trace rewritten to name a file outside the run folder that holds the secret."""
    def damage(path: Path, root: Path) -> None:
        secret = root / "secret.json"
        secret.write_text(json.dumps({"prompt": SECRET}))
        name = str(secret) if how == "absolute" else os.path.relpath(secret, path.parent)
        text, n = re.subn(r'"\$blob": "[^"]*"', json.dumps({"$blob": name})[1:-1], path.read_text())
        assert n, "the recorded trace has no blob reference to tamper with"
        path.write_text(text)
    return damage


TRACE_DAMAGE = {
    "a FIFO": lambda p, root: (p.unlink(), os.mkfifo(p)),
    "a symlink out of the folder": _trace_symlink,
    "blobs naming ../": _blobs_naming("relative"),
    "blobs naming an absolute path": _blobs_naming("absolute"),
}


@pytest.mark.parametrize("damage", sorted(TRACE_DAMAGE))
def test_a_tampered_trace_neither_hangs_nor_reads_outside_the_run_folder(attack, recorded, damage):  # noqa: F811
    home = _two_runs(recorded, attack.root)
    TRACE_DAMAGE[damage](home / "runs" / "run-a" / "trace.jsonl", attack.root)
    for args in (["trace", "show", "run-a", "--json"], ["trace", "show", "run-a", "--step", "1", "--json"],
                 ["trace", "list", "--json"]):
        proc = _readfirst(attack, home, args)
        if SECRET in proc.stdout or SECRET in proc.stderr:
            attack.escaped(f"`readfirst {' '.join(args)}` read a file outside the run folder through its trace")
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_a_replayed_run_opens_no_repository_outside_its_data_directory(attack, tmp_path):
    # A run folder names the fork trees it read; one sent from elsewhere may name any repository of this host.
    import subprocess as sp
    from readfirst.graph.trace_replay import fork_trees_of
    outside = tmp_path / "elsewhere"
    sp.run(["git", "init", "-q", str(outside)], check=True)
    home = tmp_path / "home"
    inside = home / "cache" / "sources" / "fork"
    sp.run(["git", "init", "-q", str(inside)], check=True)
    run_dir = home / "runs" / "run-a"
    run_dir.mkdir(parents=True)
    info = {"fork_trees": {"evil": {"repo": str(outside), "revision": "HEAD"},
                           "dotdot": {"repo": str(run_dir / ".." / ".." / ".." / "elsewhere"), "revision": "HEAD"},
                           "ours": {"repo": str(inside), "revision": "HEAD"}}}
    trees = fork_trees_of(info, run_dir)
    if set(trees) - {"ours"}:
        attack.escaped(f"replay opened a repository outside the data directory: {sorted(trees)}")
    assert sorted(trees) == ["ours"]
    # the cache the command uses (READFIRST_CACHE, elsewhere) is passed in, and is the only other place opened
    cache = tmp_path / "shared-cache"
    sp.run(["git", "init", "-q", str(cache / "sources" / "fork")], check=True)
    info["fork_trees"]["cached"] = {"repo": str(cache / "sources" / "fork"), "revision": "HEAD"}
    assert sorted(fork_trees_of(info, run_dir, (cache,))) == ["cached", "ours"]
    assert sorted(fork_trees_of(info, run_dir)) == ["ours"]


# SQLite follows a symlink (reading, and with WAL writing, a file elsewhere) and waits for ever, deaf to SIGTERM,
# on opening a FIFO: a run folder's databases are refused unless each is a plain file.
REPLAYS = {
    "trace replay": lambda out: ["trace", "replay", "run-a"],
    "trace fork": lambda out: ["trace", "fork", "run-a", "--from", "3", "--prepare-only"],
}
OPENS_CHECKPOINTS = {**REPLAYS, "trace show": lambda out: ["trace", "show", "run-a"],
                     "report --html": ABOUT_RUN_A["report --html"]}


def _database_symlink(path: Path, root: Path) -> None:
    """The run's own database, moved out of the folder and linked back: every read of it would succeed."""
    outside = root / "outside" / path.name
    outside.parent.mkdir()
    path.rename(outside)
    path.symlink_to(outside)


DATABASE_DAMAGE = {
    "a FIFO": lambda p, root: (p.unlink(), os.mkfifo(p)),
    "a symlink out of the folder": _database_symlink,
}


@pytest.mark.parametrize("damage", sorted(DATABASE_DAMAGE))
@pytest.mark.parametrize(("database", "command"), [("checkpoints.sqlite", c) for c in sorted(OPENS_CHECKPOINTS)]
                         + [("ledger.sqlite", c) for c in sorted(REPLAYS)])  # its listings: tested above
def test_a_run_database_that_is_no_plain_file_is_refused_not_opened(attack, recorded, database, command,
                                                                    damage):  # noqa: F811
    home = _two_runs(recorded, attack.root)
    DATABASE_DAMAGE[damage](home / "runs" / "run-a" / database, attack.root)
    outside = attack.root / "outside"
    before = {p.name: p.read_bytes() for p in outside.iterdir()} if outside.exists() else {}
    proc = _readfirst(attack, home, OPENS_CHECKPOINTS[command](attack.root))
    after = {p.name: p.read_bytes() for p in outside.iterdir()} if outside.exists() else {}
    if after != before:
        attack.escaped(f"`readfirst {command}` wrote through run-a's {database} symlink: "
                       f"{sorted(set(after) ^ set(before)) or 'changed bytes'}")
    if "Traceback" in proc.stderr:
        attack.escaped(f"`readfirst {command}` of a damaged {database} is a traceback:\n{proc.stderr[-2000:]}")
    said = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and said.count("error:") == 1 and f"run-a/{database} is not a plain file" in said, \
        proc.stderr[-2000:]
