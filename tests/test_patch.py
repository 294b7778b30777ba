"""Patch vetting and application against a small real git repository."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from readfirst.errors import PatchDoesNotApply, PatchRejected
from readfirst.sandbox.patch import check_patch, commit_patch, parse_patch
from readfirst.sources import git, prepare_source


@pytest.fixture
def repo(tmp_path) -> Path:
    src = tmp_path / "src"
    (src / "ggml").mkdir(parents=True)
    (src / "ggml" / "ops.c").write_text("".join(f"line {i}\n" for i in range(1, 41)))
    (src / "tests").mkdir()
    (src / "tests" / "t.c").write_text("int main(){return 0;}\n")
    prepared = prepare_source(str(src), tmp_path / "sources", tmp_path / "sdists")
    return prepared.path


def _hunk(line: int, old: str, new: str) -> str:
    """A hunk with one line of context each side, as `git diff -U1` writes it for 'line N' files."""
    return (f"@@ -{line - 1},3 +{line - 1},3 @@\n line {line - 1}\n-{old}\n+{new}\n line {line + 1}\n")


def _diff(path: str, old: str, new: str, line: int) -> str:
    return f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n" + _hunk(line, old, new)


@pytest.mark.parametrize("bad", [
    "diff --git a//etc/passwd b//etc/passwd\n--- a//etc/passwd\n+++ b//etc/passwd\n@@ -1 +1 @@\n-x\n+y\n",
    "--- /etc/passwd\n+++ /etc/passwd\n@@ -1 +1 @@\n-x\n+y\n",
    "diff --git a/../x b/../x\n--- a/../x\n+++ b/../x\n@@ -1 +1 @@\n-x\n+y\n",
    "--- a/ggml/../../x\n+++ b/ggml/../../x\n@@ -1 +1 @@\n-x\n+y\n",
    "diff --git a/.git/config b/.git/config\n--- a/.git/config\n+++ b/.git/config\n@@ -1 +1 @@\n-x\n+y\n",
    "diff --git a/evil b/evil\nnew file mode 120000\n--- /dev/null\n+++ b/evil\n@@ -0,0 +1 @@\n+/etc/shadow\n",
    "diff --git a/d/evil b/d/evil\nnew file mode 120000\n--- /dev/null\n+++ b/d/evil\n@@ -0,0 +1 @@\n+../../x\n",
    "diff --git a/a b/a\nrename from a\nrename to ../a\n",
    "not a patch at all\n",
])
def test_unsafe_patches_are_refused_before_anything_applies(bad):
    with pytest.raises(PatchRejected):
        check_patch(bad)


def test_symlink_inside_the_tree_is_accepted():
    ok = "diff --git a/d/link b/d/link\nnew file mode 120000\n--- /dev/null\n+++ b/d/link\n@@ -0,0 +1 @@\n+../ggml/ops.c\n"
    assert parse_patch(ok)[0].symlink_target == "../ggml/ops.c"


def test_protected_paths_are_refused():
    with pytest.raises(PatchRejected, match="protected"):
        check_patch(_diff("tests/t.c", "a", "b", 1), protected=["tests/*"])
    check_patch(_diff("ggml/ops.c", "a", "b", 1), protected=["tests/*"])


def test_commit_patch_makes_an_exact_commit_on_the_base(repo):
    base = git(repo, "rev-parse", "baseline").stdout.strip()
    commit = commit_patch(repo, _diff("ggml/ops.c", "line 7", "line seven", 7), base=base, message="exp")
    assert git(repo, "rev-parse", f"{commit}^").stdout.strip() == base
    assert "line seven" in git(repo, "show", f"{commit}:ggml/ops.c").stdout
    # The checkout was not touched: the patch lives only in the commit.
    assert git(repo, "status", "--porcelain").stdout == ""
    assert git(repo, "diff", "--stat", base, commit).stdout.count("1 file changed") == 1


def test_the_same_patch_on_the_same_base_is_the_same_commit(repo):
    # Builds are keyed by commit: a second run (or a resume, or a replay with real builds) must find its build.
    base = git(repo, "rev-parse", "baseline").stdout.strip()
    patch = _diff("ggml/ops.c", "line 7", "line seven", 7)
    first = commit_patch(repo, patch, base=base, message="exp")
    time.sleep(1.1)  # commit dates have one-second resolution: a clock-dated commit would differ now
    assert commit_patch(repo, patch, base=base, message="exp") == first
    assert commit_patch(repo, patch, base=base, message="another message") != first


def test_a_patch_that_does_not_apply_names_file_and_hunk(repo):
    base = git(repo, "rev-parse", "baseline").stdout.strip()
    patch = _diff("ggml/ops.c", "line 3", "line three", 3) + _hunk(30, "no such line", "x")
    with pytest.raises(PatchDoesNotApply, match=r"ggml/ops\.c, hunk 2 of 2 \(at line 29\)"):
        commit_patch(repo, patch, base=base, message="exp")


def test_a_patch_to_a_missing_file_is_a_clear_error(repo):
    base = git(repo, "rev-parse", "baseline").stdout.strip()
    with pytest.raises(PatchDoesNotApply, match="nope.c"):
        commit_patch(repo, _diff("nope.c", "a", "b", 1), base=base, message="exp")


def test_writing_through_an_existing_symlink_that_leaves_the_tree_is_refused(tmp_path):
    src = tmp_path / "s"
    src.mkdir()
    (src / "f").write_text("x\n")
    (src / "out").symlink_to("/etc/hostname")
    prepared = prepare_source(str(src), tmp_path / "sources", tmp_path / "sdists")
    with pytest.raises(PatchRejected, match="leaves the tree"):
        commit_patch(prepared.path, _diff("out", "x", "y", 1), base=prepared.baseline, message="exp")


def test_prepare_source_is_idempotent_and_tags_the_baseline(tmp_path):
    src = tmp_path / "s"
    src.mkdir()
    (src / "a.c").write_text("int a;\n")
    (src / ".gitignore").write_text("*.c\n")  # the tree's own ignores must not drop files from the copy
    first = prepare_source(str(src), tmp_path / "sources", tmp_path / "sdists")
    second = prepare_source(str(src), tmp_path / "sources", tmp_path / "sdists")
    assert first == second
    files = subprocess.run(["git", "-C", str(first.path), "ls-files"], capture_output=True, text=True).stdout.split()
    assert "a.c" in files


T_C = "int main(){return 0;}"


@pytest.mark.parametrize("name, patch", [
    ("a prefix other than a/ b/", f"diff --git x/tests/t.c y/tests/t.c\n--- x/tests/t.c\n+++ y/tests/t.c\n"
                                  f"@@ -1 +1 @@\n-{T_C}\n+int main(){{return 1;}}\n"),
    ("a rename out of the protected tree", "diff --git a/tests/t.c b/ggml/t.c\nsimilarity index 100%\n"
                                           "rename from tests/t.c\nrename to ggml/t.c\n"),
    ("a symlink out of the tree behind a space in the header",
     "diff --git a/my dir/evil b/my dir/evil\nnew file mode 120000\n--- /dev/null\n+++ b/my dir/evil\n"
     "@@ -0,0 +1 @@\n+/etc/shadow\n\\ No newline at end of file\n"),
    ("a form feed between the --- and +++ lines", f"diff --git a/tests/t.c b/tests/t.c\n--- a/ggml/ops.c\x0c\n"
                                                  f"+++ b/tests/t.c\n@@ -1 +1 @@\n-{T_C}\n+int main(){{return 1;}}\n"),
])
def test_what_git_applies_is_vetted_not_what_the_text_seems_to_say(repo, name, patch):
    base = git(repo, "rev-parse", "HEAD").stdout.strip()
    with pytest.raises((PatchRejected, PatchDoesNotApply)) as e:
        commit_patch(repo, patch, base=base, message=name, protected=["tests/*"])
    if isinstance(e.value, PatchDoesNotApply):
        return  # git would not apply it either: nothing reaches the tree
    assert "protected" in str(e.value) or "leaves the tree" in str(e.value), str(e.value)
    assert git(repo, "ls-tree", "-r", "--name-only", base).stdout == git(repo, "ls-tree", "-r", "--name-only",
                                                                       "HEAD").stdout


def test_a_path_with_a_nul_or_control_character_is_refused_not_a_traceback(repo):
    base = git(repo, "rev-parse", "HEAD").stdout.strip()
    for bad in ("ggml/o\0ps.c", "ggml/o\x1bps.c"):
        with pytest.raises(PatchRejected, match="control characters"):
            commit_patch(repo, _diff(bad, "line 2", "line two", 2), base=base, message="nul")
