"""`kb ingest path` on a hostile tree: links out of it (to a file, to a directory), invalid UTF-8, NUL bytes
and a 50 MB file. Nothing outside the tree is read, nothing raises, and every unit is chunked or skipped with
a reason."""

from __future__ import annotations

import time

import pytest

from readfirst.config import Paths
from readfirst.knowledge_base.chunking import Skipped, Unit
from readfirst.knowledge_base.ingest import recipe_units

pytestmark = pytest.mark.timeout(300)

FUNCTION = "static int add{i}(int a, int b)\n{{\n    int s = a + b;\n    return s * {i};\n}}\n\n"


def test_a_hostile_tree_reads_nothing_outside_and_raises_nothing(attack):
    outside = attack.root / "outside"
    outside.mkdir()
    (outside / "id_rsa").write_text("CANARY-91c2 -----BEGIN OPENSSH PRIVATE KEY-----\n")
    (outside / "more.c").write_text("int CANARY_in_a_linked_dir(void) { return 1; }\n")
    tree = attack.root / "tree"
    tree.mkdir()
    (tree / "kernel.c").write_text("".join(FUNCTION.format(i=i) for i in range(12)))
    (tree / "notes.md").symlink_to(outside / "id_rsa")
    (tree / "linked").symlink_to(outside, target_is_directory=True)
    (tree / "latin1.c").write_bytes(b"/* caf\xe9 */\n" + "".join(FUNCTION.format(i=i) for i in range(3)).encode())
    (tree / "nul.c").write_bytes(b"int a;\0\0\0int b;\n" * 100)
    (tree / "huge.c").write_bytes(("".join(FUNCTION.format(i=i) for i in range(100)).encode() * 8000)[:50 << 20])
    paths = Paths(attack.root / "home", attack.root / "cache")
    t0 = time.monotonic()
    out = list(recipe_units({"kind": "path", "path": str(tree)}, paths))
    took = time.monotonic() - t0
    text = " ".join(c.text for u in out if isinstance(u, Unit) for c in u.chunks)
    if "CANARY" in text:
        attack.escaped("text from outside the tree was ingested")
    skipped = {s.unit.rsplit(":", 1)[-1]: s.reason for s in out if isinstance(s, Skipped)}
    assert "int s = a + b" in text and "latin1.c" in text  # its own code is read, invalid UTF-8 too
    assert set(skipped) == {"notes.md", "nul.c", "huge.c"}, skipped
    assert took < 60, f"{took:.0f} s for a hostile tree"
