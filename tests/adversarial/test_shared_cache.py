"""Issue 13 item 5: a candidate's build cannot change what another build compiles to through the compiler cache
or the baseline's build directory."""

from __future__ import annotations

import subprocess

import pytest

from readfirst.records import BuildConfig, Mount
from readfirst.sources import SourceRepo
from readfirst.targets.llama_cpp.target import LlamaCppTarget, fallback_configs, native_config

from .helpers import case_paths, small_sandbox

SOURCE = "int answer(void) { return 42; }\nint main(void) { return answer(); }\n"
# What a hostile candidate does: overwrite every entry of the cache it can reach, and add its own.
POISON = ("find /ccache -type f -exec sh -c 'printf poisoned > \"$1\"' _ {} \\; ; "
          "mkdir -p /ccache/p && printf poisoned > /ccache/p/planted; "
          "cd /tmp && printf 'int answer(void) { return 7; }\\nint main(void) { return answer(); }\\n' > a.c && "
          "ccache gcc -c a.c -o a.o; echo compiled=$?")
TRUSTED = ("mkdir -p /tmp/w && cd /tmp/w && cp /src/a.c . && ccache gcc -c a.c -o a.o && gcc a.o -o a && "
           "./a; echo answer=$?; ccache -s | grep -i 'hits:' | head -1")


def _target(root, docker_client, base_image):
    repo = root / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    source = SourceRepo(repo, "b" * 40, "test")
    return LlamaCppTarget(case_paths(root), small_sandbox(docker_client, base_image, root), source)


def test_only_the_baseline_in_its_own_configurations_is_trusted(tmp_path):
    target = LlamaCppTarget(case_paths(tmp_path), None, SourceRepo(tmp_path, "b" * 40, "test"))
    assert target.trusted("b" * 40, native_config())
    assert all(target.trusted("b" * 40, c) for c in fallback_configs())
    assert not target.trusted("c" * 40, native_config())
    flagged = BuildConfig([*native_config().cmake_flags, "-DGGML_LLAMAFILE=OFF"], "", "native + flag")
    assert not target.trusted("b" * 40, flagged)


@pytest.mark.docker
def test_a_candidate_cannot_poison_the_cache_a_trusted_build_reads(attack, docker_client, base_image):
    target = _target(attack.root, docker_client, base_image)
    src = attack.root / "src"
    src.mkdir()
    (src / "a.c").write_text(SOURCE)
    first, _ = target._run(TRUSTED, timeout_s=120, log_name="trusted", mounts=[Mount(src, "/src", True)],
                           ccache="write")
    assert "answer=42" in first.output_tail, first.output_tail
    shared = next((target.paths.ccache / "trusted").iterdir())
    before = {p: p.read_bytes() for p in shared.rglob("*") if p.is_file()}
    assert before, "the trusted build stored nothing to poison"

    candidate, _ = target._run(POISON, timeout_s=120, log_name="candidate", mounts=[], ccache="read")
    assert "compiled=0" in candidate.output_tail, candidate.output_tail  # it still compiles, uncached
    after = {p: p.read_bytes() for p in shared.rglob("*") if p.is_file()}
    if after != before:
        attack.escaped(f"a candidate changed the shared cache: {sorted(set(after) ^ set(before))[:5]}")

    second, _ = target._run(TRUSTED, timeout_s=120, log_name="trusted", mounts=[Mount(src, "/src", True)],
                            ccache="write")
    if "answer=42" not in second.output_tail:
        attack.escaped(f"the trusted build linked a poisoned object: {second.output_tail[-400:]}")


def test_the_baseline_builds_apart_from_candidates(tmp_path):
    from readfirst.sandbox.workers import Worker
    target = LlamaCppTarget(case_paths(tmp_path), None, SourceRepo(tmp_path, "b" * 40, "test"))
    w = Worker(tmp_path / "w", target.source, 0)
    base = target._worker_mounts(w, native_config(), "b" * 40)
    cand = target._worker_mounts(w, native_config(), "c" * 40)
    assert base[1].host != cand[1].host
