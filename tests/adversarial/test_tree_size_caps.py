"""A fork whose hot file is 200 MB: reading it (by commits, as trees, through a GitTree, as a folder given to
`kb ingest path`) skips the file with its reason, and the reading process's memory does not grow with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(600)

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@localhost"}
FUNCTION = "static int add{i}(int a, int b)\n{{\n    int s = a + b;\n    return s * {i};\n}}\n\n"
BIG = 200 << 20

READER = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    from readfirst.config import Paths
    from readfirst.knowledge_base.chunking import Skipped, Unit
    from readfirst.knowledge_base.ingest import fork_recipe, recipe_units
    from readfirst.sources import GitTree, prepare_source
    import readfirst.knowledge_base.forks, unidiff, tree_sitter_c  # noqa: F401  imports counted before the start
    root = Path(sys.argv[1])
    paths = Paths(root / "home", root / "cache")
    fork, upstream = prepare_source(str(root / "fork"), paths.sources, paths.sdists), \\
        prepare_source(str(root / "upstream"), paths.sources, paths.sdists)
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    skipped = {}
    for name, recipe in (("commits", fork_recipe(str(root / "fork"), str(root / "upstream"))),
                         ("trees", fork_recipe(str(root / "fork"), str(root / "upstream"), as_trees=True)),
                         ("path", {"kind": "path", "path": str(root / "fork")})):
        for item in recipe_units(recipe, paths):
            if isinstance(item, Skipped):
                skipped[f"{name} {item.unit.split('::', 1)[1]}"] = item.reason
    tree = GitTree("fork", fork.path, fork.baseline)
    skipped["gittree read"] = repr(tree.read("ggml/src/hot.c"))
    skipped["gittree small"] = repr(tree.read("ggml/src/ops.c")[:20])
    skipped["gittree reason"] = tree.skipped.get("ggml/src/hot.c", "") if hasattr(tree, "skipped") else ""
    tree.close()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start
    print(json.dumps({"grown_mib": grown / 1024, "skipped": skipped}))
""")


def _git(repo: Path, *args: str) -> None:
    proc = subprocess.run(["git", "-c", "core.compression=1", "-C", str(repo), *args], capture_output=True,
                          text=True, env=GIT_ENV)
    assert proc.returncode == 0, proc.stderr


def test_a_200_mb_hot_file_is_skipped_and_memory_stays_bounded(attack):
    upstream = attack.root / "upstream"
    (upstream / "ggml/src").mkdir(parents=True)
    _git(upstream, "init", "-q", "-b", "main")
    (upstream / "ggml/src/hot.c").write_text(FUNCTION.format(i=0))
    (upstream / "ggml/src/ops.c").write_text("".join(FUNCTION.format(i=i) for i in range(5)))
    _git(upstream, "add", "-A")
    _git(upstream, "commit", "-q", "-m", "initial")
    fork = attack.root / "fork"
    subprocess.run(["git", "clone", "-q", str(upstream), str(fork)], check=True, env=GIT_ENV)
    block = "".join(FUNCTION.format(i=i) for i in range(1000)).encode()
    (fork / "ggml/src/hot.c").write_bytes((block * (BIG // len(block) + 1))[:BIG])
    (fork / "ggml/src/fused.c").write_text(FUNCTION.format(i=7).replace("add", "fused"))
    _git(fork, "add", "-A")
    _git(fork, "commit", "-q", "-m", "A hot file grown to 200 MB")
    proc = subprocess.run([sys.executable, "-c", READER, str(attack.root)], capture_output=True, text=True,
                          cwd=attack.root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    skipped = report["skipped"]
    if report["grown_mib"] > 400:
        attack.escaped(f"reading a fork with a 200 MB file grew the process by {report['grown_mib']:.0f} MiB")
    assert "larger than" in skipped.get("trees diff:ggml/src/hot.c", ""), skipped
    assert "larger than" in skipped.get("path file:ggml/src/hot.c", ""), skipped
    assert skipped["gittree read"] == "None" and "larger than" in skipped["gittree reason"], skipped
    assert skipped["gittree small"].startswith("'static int add0"), skipped
