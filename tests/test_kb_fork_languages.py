"""A fork of a project in any language is read by what the target calls hot, not by file extension.

A small pure-Python package (pkg/hot.py, a readfirst.toml with hot_paths ["pkg/**"], unittest tests, a bench
printing METRIC ms=<n>) and a git fork whose commit makes its hot function about twice as fast: the fork's .py hunk
reaches a real Chroma store with its function's name, and a fork that gives no code says why, counted by reason.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from kb_conftest_helpers import commit, embedder, git, make_repo  # noqa: E402,F401  (embedder: a fixture)

from readfirst.config import Paths  # noqa: E402
from readfirst.graph.deps import fork_hot_paths  # noqa: E402
from readfirst.knowledge_base.chunking import Skipped, Unit  # noqa: E402
from readfirst.knowledge_base.forks import OUTSIDE_HOT_PATHS  # noqa: E402
from readfirst.knowledge_base.ingest import fork_note, fork_recipe, recipe_units, run_recipe  # noqa: E402
from readfirst.targets.config_file import load_config  # noqa: E402

# row_sums's loop body: two passes per row (SLOW); the fork's commit makes it one (FAST).
TWO_PASSES = '''        total = 0
        for x in row:
            total += x
        check = 0
        for x in row:
            check += x
        assert check == total
        out.append(total)'''

SLOW = '''"""Row statistics, the hot part of the package."""


def row_sums(rows):
    """The sum of every row, each computed twice over: the second pass only checks the first."""
    out = []
    for row in rows:
''' + TWO_PASSES + '''
    return out


class Table:
    def __init__(self, rows):
        self.rows = rows

    def total(self):
        return sum(row_sums(self.rows))
'''

FAST = SLOW.replace(TWO_PASSES, "        out.append(sum(row))")

PROJECT = {
    "pkg/__init__.py": "",
    "tests/__init__.py": "",
    "pkg/hot.py": SLOW,
    "tests/test_hot.py": '''import unittest

from pkg.hot import Table, row_sums


class RowSums(unittest.TestCase):
    def test_sums(self):
        self.assertEqual(row_sums([[1, 2], [3]]), [3, 3])
        self.assertEqual(Table([[1, 2], [3]]).total(), 6)


if __name__ == "__main__":
    unittest.main()
''',
    "bench.py": '''import time

from pkg.hot import row_sums

rows = [list(range(2000)) for _ in range(200)]
start = time.perf_counter()
for _ in range(5):
    row_sums(rows)
print(f"METRIC ms={(time.perf_counter() - start) * 1000 / 5:.3f}")
''',
    "readfirst.toml": '''[target]
name = "rowstats"
hot_paths = ["pkg/**"]
protected = ["tests/**", "bench.py"]

[build]
command = "python3 -m compileall -q pkg"

[test]
command = "python3 -m unittest discover -s tests -t ."

[bench]
command = "python3 bench.py"

[objective]
metric = "ms"
direction = "lower"
unit = "ms"
''',
    "README.md": "# rowstats\nRow sums for the tests of readfirst's fork reading.\n",
}


@pytest.fixture
def local_paths(tmp_path) -> Paths:
    return Paths.resolve(home=tmp_path / "home", cache=tmp_path / "cache")


def python_fork(tmp_path: Path) -> tuple[Path, Path, str]:
    """The project, and its git fork whose one commit makes row_sums about twice as fast (one pass, not two),
    touches the README and the bench (outside the hot paths), and adds a binary table under pkg/."""
    project = make_repo(tmp_path / "rowstats", PROJECT)
    fork = tmp_path / "rowstats-fork"
    git(tmp_path, "clone", "-q", str(project), str(fork))
    sha = commit(fork, {"pkg/hot.py": FAST, "README.md": PROJECT["README.md"] + "\nOne pass per row.\n",
                        "bench.py": PROJECT["bench.py"].replace("range(5)", "range(7)")},
                 "row_sums: one pass per row, twice as fast\n\nThe check pass read every row a second time.")
    (fork / "pkg" / "table.bin").write_bytes(b"\0\1\2\3" * 64)
    git(fork, "add", "-A")
    git(fork, "commit", "-qm", "ship a precomputed table")
    return project, fork, sha


def _items(recipe, paths) -> tuple[list[Unit], list[Skipped]]:
    items = list(recipe_units(recipe, paths))
    return [u for u in items if isinstance(u, Unit)], [s for s in items if isinstance(s, Skipped)]


def hot_paths_of(project: Path) -> tuple[str, ...]:
    return load_config(project / "readfirst.toml").hot_paths


@pytest.mark.chroma
def test_a_python_forks_faster_function_reaches_the_knowledge_base_with_its_name(tmp_path, local_paths, embedder):
    from readfirst.knowledge_base.store import KnowledgeBase
    project, fork, sha = python_fork(tmp_path)
    recipe = fork_recipe(str(fork), str(project), paths=hot_paths_of(project))
    assert recipe["paths"] == ["pkg/**"] and not recipe["as_trees"]
    with KnowledgeBase(local_paths.knowledge_base, embedder, writable=True) as kb:
        source, summary = run_recipe(kb, recipe, local_paths)
        stored = [(m, text) for _, text, m in kb.chunks()]
        hits = kb.query("row_sums one pass per row", k=5)
    hot = [(m, text) for m, text in stored if m.get("path") == "pkg/hot.py"]
    assert hot, [m.get("path") for m, _ in stored]
    meta, text = hot[0]
    assert meta["symbol"] == "row_sums" and meta["kind"] == "fork-diff" and meta["commit"] == sha
    assert "+        out.append(sum(row))" in text and "-        check = 0" in text
    assert any(h.get("path") == "pkg/hot.py" for h in hits)
    reasons = dict((unit.rsplit(":", 1)[-1], reason) for unit, reason in summary.skipped)
    assert reasons == {"bench.py": OUTSIDE_HOT_PATHS, "pkg/table.bin": "binary file"}, summary.skipped
    assert summary.notes == [], "code came: nothing to explain"
    assert "pkg/**" in source


def test_without_the_targets_hot_paths_a_python_fork_gives_no_code_and_says_why(tmp_path, local_paths):
    project, fork, _ = python_fork(tmp_path)
    recipe = fork_recipe(str(fork), str(project))  # as llama.cpp reads its forks: C/C++ and Markdown
    units, _ = _items(recipe, local_paths)
    paths = {c.origin.get("path") for u in units for c in u.chunks}
    assert "pkg/hot.py" not in paths and "README.md" in paths
    note = fork_note(recipe, units)
    assert note and "gave no code" in note and "hot_paths" in note, note


def test_a_fork_changing_only_files_outside_the_hot_paths_counts_them_by_reason(tmp_path, local_paths):
    project = make_repo(tmp_path / "rowstats", PROJECT)
    fork = tmp_path / "fork"
    git(tmp_path, "clone", "-q", str(project), str(fork))
    commit(fork, {"bench.py": PROJECT["bench.py"] + "# more rounds later\n",
                  "tests/test_hot.py": PROJECT["tests/test_hot.py"] + "# a note\n"}, "tune the bench")
    for as_trees in (False, True):
        recipe = fork_recipe(str(fork), str(project), paths=["pkg/**"], as_trees=as_trees)
        items = list(recipe_units(recipe, local_paths))
        note = fork_note(recipe, items)
        assert note == f"{fork} gave no code: its changed files were skipped: 2 {OUTSIDE_HOT_PATHS} (pkg/**)", note


def test_a_fork_with_no_commits_of_its_own_says_so(tmp_path, local_paths):
    project = make_repo(tmp_path / "rowstats", PROJECT)
    fork = tmp_path / "fork"
    git(tmp_path, "clone", "-q", str(project), str(fork))
    recipe = fork_recipe(str(fork), str(project), paths=["pkg/**"])
    note = fork_note(recipe, list(recipe_units(recipe, local_paths)))
    assert note and "no commits of its own" in note, note


def test_a_language_without_a_grammar_is_read_as_line_chunks_never_as_nothing(tmp_path, local_paths):
    project = make_repo(tmp_path / "rowstats", PROJECT)
    fork = tmp_path / "fork"
    git(tmp_path, "clone", "-q", str(project), str(fork))
    kernel = "".join(f"pub fn add{i}(a: u32, b: u32) u32 {{\n    return a + b + {i};\n}}\n\n" for i in range(5))
    commit(fork, {"pkg/kernel.zig": kernel}, "a Zig kernel")
    for as_trees in (False, True):
        recipe = fork_recipe(str(fork), str(project), paths=["pkg/**"], as_trees=as_trees)
        units, skipped = _items(recipe, local_paths)
        zig = [c for u in units for c in u.chunks if c.origin.get("path") == "pkg/kernel.zig"]
        assert zig and not skipped and any("return a + b + 4;" in c.text for c in zig)
        note = fork_note(recipe, units)
        assert note and "1 file(s) in a language without a grammar (.zig)" in note, note


def test_a_vendored_python_fork_is_chunked_by_function(tmp_path, local_paths):
    project = make_repo(tmp_path / "rowstats", PROJECT)
    fork = make_repo(tmp_path / "fork", {**PROJECT, "pkg/hot.py": FAST,
                                         "pkg/fast.py": "def fused(rows):\n    out = []\n    for r in rows:\n"
                                                       "        out.append(sum(r))\n    return out\n"})
    units, _ = _items(fork_recipe(str(fork), str(project), paths=["pkg/**"], as_trees=True), local_paths)
    by_path = {c.origin["path"]: c for u in units for c in u.chunks}
    assert by_path["pkg/hot.py"].origin["symbol"] == "row_sums" and by_path["pkg/hot.py"].kind == "fork-diff"
    assert by_path["pkg/fast.py"].origin["symbol"] == "fused" and by_path["pkg/fast.py"].kind == "fork-code"


def test_a_run_reads_forks_by_its_targets_hot_paths_and_llama_cpp_as_before():
    config = SimpleNamespace(hot_paths=("pkg/**",))
    assert fork_hot_paths(config, {"name": "config"}) == ("pkg/**",)
    assert fork_hot_paths(SimpleNamespace(hot_paths=("ggml/src/ggml-cpu/*",)), {"name": "llama.cpp"}) == ()
    assert "paths" not in fork_recipe("ik_llama.cpp"), "llama.cpp's recipe is recorded as before"


@pytest.mark.chroma
def test_kb_ingest_fork_says_why_a_fork_gave_no_code_and_reads_it_by_hot_path(tmp_path, embedder):
    import json
    import os
    import subprocess
    readfirst = str(Path(sys.executable).parent / "readfirst")
    project, fork, _ = python_fork(tmp_path)

    def kb(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([readfirst, "kb", "ingest", "fork", str(fork), "--upstream", str(project), *args],
                              capture_output=True, text=True, timeout=300, env=os.environ)

    plain = kb()
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert "gave no code" in plain.stdout and "--hot-path" in plain.stdout, plain.stdout
    hot = kb("--hot-path", "pkg/**", "--json")
    assert hot.returncode == 0, hot.stderr[-2000:]
    [result] = json.loads(hot.stdout)
    assert result["notes"] == [] and result["added"] == 2
    assert sorted(s["reason"] for s in result["skipped"]) == ["binary file", OUTSIDE_HOT_PATHS]


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.chroma
def test_an_offline_run_on_a_python_project_takes_candidates_from_its_fork(tmp_path, docker_client, base_image):
    import json
    import os
    import subprocess
    project, fork, _ = python_fork(tmp_path)
    env = {**os.environ, "READFIRST_HOME": str(tmp_path / "home")}
    env.pop("ANTHROPIC_API_KEY", None)
    proc = subprocess.run([sys.executable, "-m", "readfirst.graph", "run", "--offline", "--calibration-pairs", "0",
                           "--max-runs", "12", "--json", "--source", str(project), "--fork", str(fork),
                           "--budget-experiments", "2"], capture_output=True, text=True, timeout=1800, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout)
    assert summary["target"] == "rowstats"
    assert summary["candidates_by_source"].get("fork", 0) >= 1, (summary["candidates_by_source"], proc.stderr[-3000:])
    assert summary["experiments_by_source"].get("fork", 0) >= 1, summary["experiments_by_source"]
