"""`kb ingest path` on an untrusted tree: nothing outside it is read, and a missing path is refused unrecorded."""

from __future__ import annotations

import pytest

from readfirst.config import Paths
from readfirst.errors import KnowledgeBaseError
from readfirst.knowledge_base.chunking import Skipped, Unit
from readfirst.knowledge_base.ingest import recipe_units, run_recipe


def test_symlinks_out_of_the_tree_are_skipped_and_never_read(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("CANARY-7f3a private key\n")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "kernel.c").write_text("".join(f"static int add{i}(int a, int b)\n{{\n    int s = a + b;\n"
                                           f"    return s * {i};\n}}\n\n" for i in range(12)))
    (tree / "notes.md").symlink_to(secret)
    (tree / "stolen.c").symlink_to(secret)
    (tree / "alias.c").symlink_to(tree / "kernel.c")  # inside the tree: fine
    paths = Paths(tmp_path / "home", tmp_path / "cache")
    out = list(recipe_units({"kind": "path", "path": str(tree)}, paths))
    skipped = {s.unit.rsplit(":", 1)[-1]: s.reason for s in out if isinstance(s, Skipped)}
    assert skipped == {"notes.md": "a symlink out of the tree", "stolen.c": "a symlink out of the tree"}
    text = " ".join(c.text for u in out if isinstance(u, Unit) for c in u.chunks)
    assert "CANARY" not in text and "int s = a + b" in text


def test_a_missing_path_is_an_error_and_is_not_recorded(tmp_path):
    class Store:
        recorded: list = []

        def record_source(self, *args):
            self.recorded.append(args)

    store = Store()
    with pytest.raises(KnowledgeBaseError, match="no such file or directory"):
        run_recipe(store, {"kind": "path", "path": str(tmp_path / "nope")}, Paths(tmp_path, tmp_path / "c"))
    assert store.recorded == []
