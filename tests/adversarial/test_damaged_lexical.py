"""Issue 28 item 9: a damaged lexical index (SQLite FTS5 beside Chroma) is said in one sentence that names it and
`readfirst kb rebuild`, by `kb stats` and `kb query` through the real CLI; and `kb rebuild` does re-create it.

Damage of three kinds: the file overwritten with garbage, the file cut in half (a disk that filled, a copy that
stopped), and the FTS5 table's own data blocks overwritten in an otherwise sound SQLite file."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from .helpers import cut_in_half, readfirst_cli

pytestmark = pytest.mark.chroma


def _garbage(db: Path) -> None:
    db.write_bytes(b"this was a lexical index\n" * 4000)


def _fts_blocks(db: Path) -> None:
    with sqlite3.connect(db) as c:
        c.execute("UPDATE chunks_data SET block = randomblob(length(block)) WHERE id > 1")
        c.execute("UPDATE chunks_data SET block = x'ffffffff' WHERE id = 1")
    c.close()


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> Path:
    """A knowledge base with a few notes in it, made once; each case damages a copy."""
    root = tmp_path_factory.mktemp("kb")
    notes = root / "notes"
    notes.mkdir()
    for i in range(40):
        (notes / f"note{i}.md").write_text(f"# Note {i}\n\nThe tile stride of kernel_{i} is {i * 16} bytes.\n")
    proc = readfirst_cli(root / "home", "kb", "ingest", "path", str(notes), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root / "home"


def _copy(ingested: Path, root: Path) -> tuple[Path, Path]:
    import shutil
    home = root / "home"
    shutil.copytree(ingested, home)
    [db] = list(home.rglob("lexical.sqlite"))
    for side in db.parent.glob("lexical.sqlite-*"):
        side.unlink()  # the damage is to the index itself, not to a journal beside it
    return home, db


@pytest.mark.parametrize("damage", [_garbage, cut_in_half, _fts_blocks], ids=["garbage", "cut", "fts-blocks"])
def test_a_damaged_lexical_index_is_said_with_what_to_do(attack, ingested, damage):
    home, db = _copy(ingested, attack.root)
    damage(db)
    for command in (["kb", "stats"], ["kb", "query", "tile stride of kernel_7"],
                    ["kb", "query", "kernel_7", "--mode", "lexical"]):
        proc = readfirst_cli(home, *command)
        if "Traceback" in proc.stderr:
            attack.escaped(f"`readfirst {' '.join(command)}` printed a traceback:\n{proc.stderr[-2000:]}")
        said = " ".join(proc.stderr.split())
        if proc.returncode == 0:
            attack.escaped(f"`readfirst {' '.join(command)}` read a damaged lexical index as a sound one:\n"
                           f"{proc.stdout[-1000:]}")
        assert "error:" in said and "lexical index" in said and "kb rebuild" in said, said


def test_kb_rebuild_recreates_a_damaged_lexical_index(attack, ingested):
    home, db = _copy(ingested, attack.root)
    _garbage(db)
    proc = readfirst_cli(home, "kb", "rebuild", "--json")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    hits = json.loads(readfirst_cli(home, "kb", "query", "kernel_7", "--mode", "lexical", "--json").stdout)
    assert hits and hits[0]["path"].endswith("note7.md"), hits
