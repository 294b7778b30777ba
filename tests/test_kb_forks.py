"""Forks against their upstream, with small real git repositories: by commits, and as vendored trees."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from kb_conftest_helpers import commit, git, make_repo, write_files  # noqa: E402

from readfirst.config import Paths  # noqa: E402
from readfirst.errors import KnowledgeBaseError  # noqa: E402
from readfirst.knowledge_base.chunking import Skipped, Unit  # noqa: E402
from readfirst.knowledge_base.ingest import fork_recipe, recipe_units  # noqa: E402

UPSTREAM = {
    "ggml/src/ops.c": """#include "ops.h"

void ggml_compute_forward_rms_norm(const float * x, float * y, int n) {
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += x[i] * x[i];
    for (int i = 0; i < n; i++) y[i] = x[i] / sqrtf(sum / n);
}

void ggml_compute_forward_mul(const float * a, const float * b, float * y, int n) {
    for (int i = 0; i < n; i++) y[i] = a[i] * b[i];
}
""",
    "ggml/src/ops.h": "void ggml_compute_forward_rms_norm(const float * x, float * y, int n);\n",
    "README.md": "# upstream\nA tensor library used by the tests of readfirst's fork ingestion.\n",
}

FUSED = """#include "ops.h"

// One pass: normalise and multiply by the weight without writing the normalised row back to memory.
void ggml_compute_forward_rms_norm_mul_fused(const float * x, const float * w, float * y, int n) {
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += x[i] * x[i];
    const float scale = 1.0f / sqrtf(sum / n);
    for (int i = 0; i < n; i++) y[i] = x[i] * scale * w[i];
}
"""


@pytest.fixture
def local_paths(tmp_path) -> Paths:
    # Sources prepared from throw-away repositories stay out of the shared cache.
    return Paths.resolve(home=tmp_path / "home", cache=tmp_path / "cache")


def _units(recipe, paths) -> tuple[list[Unit], list[Skipped]]:
    items = list(recipe_units(recipe, paths))
    return [u for u in items if isinstance(u, Unit)], [s for s in items if isinstance(s, Skipped)]


def test_a_git_fork_is_read_commit_by_commit_since_the_merge_base(tmp_path, local_paths):
    upstream = make_repo(tmp_path / "upstream", UPSTREAM)
    fork = tmp_path / "fork"
    git(tmp_path, "clone", "-q", str(upstream), str(fork))
    fused_sha = commit(fork, {"ggml/src/fused.c": FUSED}, "Fuse RMS_NORM and MUL on the CPU\n\nSaves a pass.")
    edited = UPSTREAM["ggml/src/ops.c"].replace("y[i] = a[i] * b[i];", "y[i] = b[i] * a[i]; // commutes")
    edit_sha = commit(fork, {"ggml/src/ops.c": edited}, "Reorder the multiply")
    commit(upstream, {"ggml/src/later.c": "int upstream_only_after_the_fork(void) { return 1; }\n"}, "later")

    units, skipped = _units(fork_recipe(str(fork), str(upstream)), local_paths)
    assert not skipped
    assert {u.key.split("::commit:")[1] for u in units} == {fused_sha, edit_sha}
    chunks = [c for u in units for c in u.chunks]
    assert all(c.kind == "fork-diff" for c in chunks)
    assert not any("upstream_only_after_the_fork" in c.text for c in chunks), "upstream's own commits are not the fork's"

    new_file = [c for c in chunks if c.origin.get("path") == "ggml/src/fused.c"]
    assert [c.origin["symbol"] for c in new_file] == ["", "ggml_compute_forward_rms_norm_mul_fused"], \
        "a new file's hunk is cut along its functions"
    fused = new_file[1]
    assert fused.origin["start_line"] == 4 and "+    for (int i = 0; i < n; i++) y[i] = x[i] * scale * w[i];" in fused.text
    assert fused.origin["revision"] == fused_sha and fused.origin["repo"] == "fork"
    assert "Fuse RMS_NORM and MUL on the CPU" in fused.text
    reorder = next(c for c in chunks if c.origin.get("path") == "ggml/src/ops.c")
    assert reorder.origin["symbol"] == "ggml_compute_forward_mul"
    assert "+    for (int i = 0; i < n; i++) y[i] = b[i] * a[i]; // commutes" in reorder.text
    messages = [c for c in chunks if c.origin.get("section") == "commit message"]
    assert any("Saves a pass." in c.text for c in messages)


def test_unrelated_histories_are_refused_unless_compared_as_trees(tmp_path, local_paths):
    upstream = make_repo(tmp_path / "upstream", UPSTREAM)
    fork = make_repo(tmp_path / "fork", {**UPSTREAM, "ggml/src/fused.c": FUSED})
    with pytest.raises(KnowledgeBaseError, match="share no git history.*--as-trees"):
        _units(fork_recipe(str(fork), str(upstream)), local_paths)
    units, _ = _units(fork_recipe(str(fork), str(upstream), as_trees=True), local_paths)
    assert [u.key.split("::")[-1] for u in units] == ["file:ggml/src/fused.c"]


def test_a_vendored_fork_is_compared_as_a_tree_and_by_commits_it_is_a_clear_error(tmp_path, local_paths):
    upstream = make_repo(tmp_path / "upstream", UPSTREAM)
    plain = tmp_path / "plain"
    write_files(plain, UPSTREAM)
    assert fork_recipe(str(plain), str(upstream))["as_trees"]  # a plain directory has no history to follow
    assert not fork_recipe(str(upstream), str(upstream))["as_trees"]
    with pytest.raises(KnowledgeBaseError, match="plain is not a git repository"):
        _units(fork_recipe(str(plain), str(upstream), as_trees=False), local_paths)
    with pytest.raises(KnowledgeBaseError, match="cannot prepare"):
        _units(fork_recipe(str(tmp_path / "missing"), str(upstream)), local_paths)


def test_vendored_trees_give_diffs_of_shared_files_and_fork_only_code(tmp_path, local_paths):
    upstream = tmp_path / "up-tree"
    write_files(upstream, {**UPSTREAM, "ggml/src/upstream_only.c": "int gone(void) { return 0; }\n"})
    fork = tmp_path / "fork-tree"
    edited = UPSTREAM["ggml/src/ops.c"].replace("sqrtf(sum / n)", "sqrtf(sum / n + 1e-6f)")
    write_files(fork, {**UPSTREAM, "ggml/src/ops.c": edited, "ggml/src/fused.c": FUSED})
    (fork / "ggml/src/table.c").write_bytes(b"int t[] = {0};\0\0\0")

    units, skipped = _units(fork_recipe(str(fork), str(upstream), as_trees=True), local_paths)
    by_key = {u.key.split("::")[-1]: u for u in units}
    assert set(by_key) == {"diff:ggml/src/ops.c", "file:ggml/src/fused.c"}, "identical files say nothing"
    assert [s.reason for s in skipped] == ["binary file"]
    diff = by_key["diff:ggml/src/ops.c"].chunks
    assert len(diff) == 1 and diff[0].kind == "fork-diff"
    assert diff[0].origin["symbol"] == "ggml_compute_forward_rms_norm"
    assert diff[0].origin["upstream"] == "up-tree" and diff[0].origin["repo"] == "fork-tree"
    assert "+    for (int i = 0; i < n; i++) y[i] = x[i] / sqrtf(sum / n + 1e-6f);" in diff[0].text
    assert diff[0].origin["start_line"] <= 6 <= diff[0].origin["end_line"]
    code = by_key["file:ggml/src/fused.c"].chunks
    assert [c.origin["symbol"] for c in code if c.origin["symbol"]] == ["ggml_compute_forward_rms_norm_mul_fused"]
    assert all(c.kind == "fork-code" for c in code)

    scoped, _ = _units(fork_recipe(str(fork), str(upstream), subdirs=["ggml/src/fused.c"], as_trees=True),
                       local_paths)
    assert [u.key.split("::")[-1] for u in scoped] == ["file:ggml/src/fused.c"]


def test_a_fork_given_as_a_git_url(tmp_path, local_paths):
    upstream = make_repo(tmp_path / "upstream", UPSTREAM)
    fork = tmp_path / "remote-fork"
    git(tmp_path, "clone", "-q", str(upstream), str(fork))
    sha = commit(fork, {"ggml/src/fused.c": FUSED}, "Fuse on the CPU")
    units, _ = _units(fork_recipe(f"file://{fork}", str(upstream)), local_paths)
    assert [u.key.split("::commit:")[1] for u in units] == [sha]
    assert units[0].chunks[0].origin["repo"] == "remote-fork"


def test_each_blob_is_size_checked_once_and_read_only_where_it_names_functions(tmp_path, local_paths, monkeypatch):
    """By commits, a file whose language has no grammar (the README) gives its hunks without its blob being read
    (the blob only names the hunks' functions); as trees, a changed file's size is asked once per side."""
    from readfirst.knowledge_base.forks import ScratchRepo
    read, sized = [], []
    blob, too_large = ScratchRepo.blob, ScratchRepo.too_large
    monkeypatch.setattr(ScratchRepo, "blob", lambda self, rev, path: read.append(path) or blob(self, rev, path))
    monkeypatch.setattr(ScratchRepo, "too_large",
                        lambda self, rev, path: sized.append((rev, path)) or too_large(self, rev, path))
    upstream = make_repo(tmp_path / "upstream", UPSTREAM)
    fork = tmp_path / "fork"
    git(tmp_path, "clone", "-q", str(upstream), str(fork))
    edited = UPSTREAM["ggml/src/ops.c"].replace("sqrtf(sum / n)", "sqrtf(sum / n + 1e-6f)")
    commit(fork, {"ggml/src/ops.c": edited, "README.md": UPSTREAM["README.md"] + "Now with an epsilon.\n"},
           "Add an epsilon")

    units, _ = _units(fork_recipe(str(fork), str(upstream)), local_paths)
    assert {c.origin.get("path") for u in units for c in u.chunks} - {None} == {"ggml/src/ops.c", "README.md"}
    assert read == ["ggml/src/ops.c"], read

    read.clear()
    sized.clear()
    units, _ = _units(fork_recipe(str(fork), str(upstream), as_trees=True), local_paths)
    assert {c.origin.get("path") for u in units for c in u.chunks} - {None} == {"ggml/src/ops.c", "README.md"}
    assert len(sized) == len(set(sized)) == 4, sized  # each of the two paths, once on each side


def test_a_local_repository_is_copied_once_per_preparation_and_the_copy_removed(tmp_path, local_paths, monkeypatch):
    """prepare_source reads a folder's repository (its commit for the cache key, then its clone) through one
    ForeignRepo, whose scratch copy is gone afterwards."""
    import readfirst.sources as sources
    made = []

    class Counted(sources.ForeignRepo):
        def __init__(self, top):
            super().__init__(top)
            made.append(self._scratch)

    monkeypatch.setattr(sources, "ForeignRepo", Counted)
    upstream = make_repo(tmp_path / "upstream", UPSTREAM)
    first = sources.prepare_source(str(upstream), local_paths.sources, local_paths.sdists)
    again = sources.prepare_source(str(upstream), local_paths.sources, local_paths.sdists)
    assert first == again and (first.path / "ggml/src/ops.c").read_text() == UPSTREAM["ggml/src/ops.c"]
    assert len(made) == 2, made  # one per call: a new source is cloned from the copy that named its state
    assert not any(p.exists() for p in made), made
