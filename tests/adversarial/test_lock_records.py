"""The machine lock's holder records are files anyone sharing the cache can write: a wait's sentence reads
them without following a link, waiting on a FIFO, reading past a size cap or printing a control character, and
a dead process's record is ignored (and removed), never said as the holder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from readfirst.sandbox import machine_lock as ml

pytestmark = pytest.mark.timeout(60)


def _record(pid: int, what: str) -> str:
    return json.dumps({"pid": pid, "run": "run-x", "what": what, "exclusive": True, "since": 0})


def test_hostile_holder_records_are_not_said(attack):
    cache = attack.root / "cache"
    folder = cache / ml.HOLDERS_DIR
    folder.mkdir(parents=True)
    outside = attack.root / "outside.json"
    outside.write_text(_record(os.getpid(), "CANARY-through-a-link"))
    (folder / "link.json").symlink_to(outside)
    os.mkfifo(folder / "fifo.json")
    (folder / "huge.json").write_text(_record(os.getpid(), "CANARY-huge" + " " * 10_000))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (folder / "dead.json").write_text(_record(int(dead.stdout), "CANARY-dead"))
    (folder / "garbage.json").write_text('{"pid": "1; rm -rf /", "since": []}')
    (folder / "escape.json").write_text(_record(os.getpid(), "bench\x1b]0;owned\x07\x1b[2J"))
    said = ml.wait_sentence(cache, True, "bench", 3.0)
    if "CANARY" in said:
        attack.escaped(f"a record that is no live holder's was said: {said}")
    if "\x1b" in said or "\x07" in said:
        attack.escaped("a record's control characters reached the terminal")
    assert "step bench]0;owned" in said  # the live record, its text made printable
    assert not (folder / "dead.json").exists() and outside.exists()
