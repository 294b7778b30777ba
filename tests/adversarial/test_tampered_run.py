"""Issue 28 item 2: a run folder is data someone may send; viewing it must never run anything.

A real run of the stand-in target is recorded once; each case copies it, rewrites its checkpoints.sqlite the way
an attacker would (a msgpack extension naming a function to call with a command that writes a canary file, a
legacy JSON constructor, a pickle, or bytes that decode as nothing), and runs `trace show`, `report --html`,
`trace export --html` and `trace replay` through the real CLI in a fresh process. The canary must not appear and
each command must say, in one sentence, that the run folder was refused; an untouched copy still replays."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import ormsgpack
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_trace_standin import record_run  # noqa: E402

COMMANDS = {
    "trace show": lambda out: ["trace", "show", "run-a"],
    "report --html": lambda out: ["report", "run-a", "--html", str(out / "page.html")],
    "trace export --html": lambda out: ["trace", "export", "run-a", "--html", str(out / "trace.html")],
    "trace replay": lambda out: ["trace", "replay", "run-a"],
}

# Extension codes of LangGraph's encoder: 1 calls module.name(*args), 2 module.name(**kwargs).
CALLS = {
    "os.system": lambda canary: (1, ("os", "system", (f"touch {canary}",))),
    "builtins.exec": lambda canary: (1, ("builtins", "exec", (f"open({str(canary)!r}, 'w').close()",))),
    "subprocess.run": lambda canary: (2, ("subprocess", "run", {"args": ["touch", str(canary)]})),
}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("recorded")
    directory, _, _ = record_run(home)
    return directory


def _copy(recorded: Path, root: Path) -> Path:
    home = root / "home"
    shutil.copytree(recorded, home / "runs" / "run-a")
    return home


def _keep_ext(code: int, data: bytes) -> ormsgpack.Ext:
    return ormsgpack.Ext(code, data)


def _with_call(blob: bytes, code: int, call: tuple) -> bytes:
    """A real checkpoint with one channel value replaced by an extension that names a callable."""
    checkpoint = ormsgpack.unpackb(blob, ext_hook=_keep_ext, option=ormsgpack.OPT_NON_STR_KEYS)
    checkpoint["channel_values"]["run_id"] = ormsgpack.Ext(code, ormsgpack.packb(call))
    return ormsgpack.packb(checkpoint, option=ormsgpack.OPT_NON_STR_KEYS)


def _rewrite(home: Path, rewrite) -> None:
    db = home / "runs" / "run-a" / "checkpoints.sqlite"
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT rowid, type, checkpoint FROM checkpoints").fetchall()
        for rowid, type_, blob in rows:
            c.execute("UPDATE checkpoints SET type = ?, checkpoint = ? WHERE rowid = ?", (*rewrite(type_, blob), rowid))
    c.close()


def _readfirst(home: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "READFIRST_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "readfirst.graph", *args], capture_output=True, text=True,
                          env=env, timeout=300, cwd=home)


def _refused_in_one_sentence(attack, proc: subprocess.CompletedProcess) -> None:
    if "Traceback" in proc.stderr:
        attack.escaped(f"a traceback instead of a refusal:\n{proc.stderr[-2000:]}")
    if proc.returncode == 0:
        attack.escaped(f"the tampered run was opened as a good one:\n{proc.stdout[-1500:]}")
    said = " ".join(proc.stderr.split())
    assert "error:" in said and "refused" in said and "checkpoints.sqlite" in said, proc.stderr


@pytest.mark.parametrize("callable_name", sorted(CALLS))
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_checkpoint_naming_a_callable_runs_nothing(attack, recorded, command, callable_name):
    home = _copy(recorded, attack.root)
    canary = attack.root / "canary"
    code, call = CALLS[callable_name](canary)
    _rewrite(home, lambda type_, blob: (type_, _with_call(blob, code, call)))
    proc = _readfirst(home, COMMANDS[command](attack.root))
    if canary.exists():
        attack.escaped(f"`readfirst {command}` ran {callable_name} named in checkpoints.sqlite")
    _refused_in_one_sentence(attack, proc)
    assert callable_name in proc.stderr, proc.stderr


def _legacy_json(canary: Path) -> bytes:
    return json.dumps({"lc": 2, "type": "constructor", "id": ["os", "system"], "args": [f"touch {canary}"]}).encode()


class _Touch:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("kind", ["json", "pickle", "garbage"])
def test_other_encodings_of_a_checkpoint_are_refused(attack, recorded, kind):
    home = _copy(recorded, attack.root)
    canary = attack.root / "canary"
    blob = {"json": lambda: _legacy_json(canary), "pickle": lambda: pickle.dumps(_Touch(canary)),
            "garbage": lambda: b"\xc1\xff not msgpack"}[kind]()
    _rewrite(home, lambda type_, _: ("msgpack" if kind == "garbage" else kind, blob))
    proc = _readfirst(home, COMMANDS["trace show"](attack.root))
    if canary.exists():
        attack.escaped(f"`readfirst trace show` ran a {kind} checkpoint")
    _refused_in_one_sentence(attack, proc)


def test_a_tampered_pending_write_runs_nothing(attack, recorded):
    home = _copy(recorded, attack.root)
    canary = attack.root / "canary"
    code, call = CALLS["os.system"](canary)
    value = ormsgpack.packb({"run_id": ormsgpack.Ext(code, ormsgpack.packb(call))})
    with sqlite3.connect(home / "runs" / "run-a" / "checkpoints.sqlite") as c:
        c.execute("UPDATE writes SET type = 'msgpack', value = ?", (value,))
    c.close()
    proc = _readfirst(home, COMMANDS["trace replay"](attack.root))
    if canary.exists():
        attack.escaped("`readfirst trace replay` ran os.system named in a pending write")
    _refused_in_one_sentence(attack, proc)


def test_an_untouched_copy_still_shows_and_replays(attack, recorded):
    home = _copy(recorded, attack.root)
    for command in ("trace show", "trace replay", "report --html"):
        proc = _readfirst(home, COMMANDS[command](attack.root))
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (command, proc.stderr[-2000:])
    assert (attack.root / "page.html").stat().st_size > 0


def test_a_checkpoint_file_that_is_no_database_is_one_sentence_on_replay(attack, recorded):
    home = _copy(recorded, attack.root)
    (home / "runs" / "run-a" / "checkpoints.sqlite").write_bytes(b"not a database\n" * 1000)
    proc = _readfirst(home, COMMANDS["trace replay"](attack.root))
    if "Traceback" in proc.stderr:
        attack.escaped(f"a traceback instead of a sentence:\n{proc.stderr[-2000:]}")
    said = " ".join(proc.stderr.split())
    assert proc.returncode != 0 and "error:" in said and "cannot be replayed" in said, proc.stderr
