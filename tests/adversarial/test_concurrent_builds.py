"""Issue 28 item 10: two runs sharing one cache build the same commit of a readfirst.toml project at once. The
build deleted and rebuilt the artifact folder with no lock, so one run removed the other's while it linked
(`ld: cannot open output file`). Builds now go to a staging folder of their own, renamed into place whole."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from config_project import commit_all, make_project  # noqa: E402

from readfirst.records import BuildResult  # noqa: E402
from readfirst.targets import make_spec  # noqa: E402

pytestmark = pytest.mark.docker

# The build looks at its outputs again after a pause: a build folder deleted under it fails there.
CHECKED_BUILD = 'command = "make -j2 && sleep 2 && test -x bench/lz4bench && test -x tests/roundtrip"'


def test_two_runs_building_one_commit_against_one_cache_both_succeed(attack, paths, shared_cache, tmp_path,
                                                                      docker_client, base_image):
    from readfirst.graph.deps import compose_target
    project = make_project(tmp_path / "lz4", shared_cache / "sdists")
    toml = project / "readfirst.toml"
    toml.write_text(toml.read_text().replace('command = "make -j2"', CHECKED_BUILD))
    commit_all(project, "a build that checks its outputs")
    runs = [compose_target(paths, make_spec(None, source=str(project)), say=lambda _: None)[1] for _ in range(2)]
    commit, variant = runs[0].source.baseline, {"build_env": {}, "run_env": {}}
    artifacts = runs[0]._artifact(commit, {}).parent
    built: list = [None, None]

    def build(i: int) -> None:
        try:
            built[i] = runs[i].build(commit, variant)
        except Exception as e:  # what a run would die of
            built[i] = e

    first = threading.Thread(target=build, args=(0,))
    first.start()
    # the second run starts its build of the same commit while the first one's is linked and checking its outputs
    while first.is_alive() and not (artifacts.is_dir() and any(artifacts.rglob("lz4bench"))):
        time.sleep(0.05)
    second = threading.Thread(target=build, args=(1,))
    second.start()
    first.join()
    second.join()
    failed = [b if isinstance(b, Exception) else b.log_tail[-300:] for b in built
              if not isinstance(b, BuildResult) or not b.ok]
    if failed:
        attack.escaped(f"two runs building {commit[:10]} at once broke each other: {failed}")
    art = runs[0]._artifact(commit, {})
    assert json.loads((art / "build.json").read_text())["ok"] is True
    assert not [p for p in art.parent.iterdir() if p.name.startswith(".")]  # no staging folder left behind
    checks = runs[1].checks(commit, variant, baseline=None)
    assert checks.first_failure() is None, checks
