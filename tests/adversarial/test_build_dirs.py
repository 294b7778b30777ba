"""Issue 13 item 5, the build directory: a candidate that plants an object in its worker's build directory (as
its build could: ggml's CMake files and everything they run are the candidate's) changes neither the baseline's
build nor a later candidate's. A stand-in tree with llama.cpp's build targets, built by the real target code in
real containers."""

from __future__ import annotations

import subprocess

import pytest

from readfirst.records import Mount
from readfirst.sources import SourceRepo, git
from readfirst.targets.llama_cpp.target import FAST_TESTS, TOOLS, LlamaCppTarget, config_key, native_config

from .helpers import case_paths, small_sandbox

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

CMAKE = ("cmake_minimum_required(VERSION 3.13)\nproject(standin C)\n"
         "set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)\n"
         "add_library(kern STATIC kern.c)\n"
         f"foreach(t {' '.join(TOOLS + FAST_TESTS)})\n"
         "  add_executable(${t} main.c)\n  target_link_libraries(${t} kern)\nendforeach()\n")
MAIN = "int answer(void);\nint main(void) {{ return answer(); }} /* {tag} */\n"


def _commit(repo, message: str, main_tag: str) -> str:
    (repo / "main.c").write_text(MAIN.format(tag=main_tag))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD").stdout.strip()


def _answer(target, commit, config=None) -> str:
    art = target.artifact_dir(commit, config or native_config())
    r = target.sandbox.run("/art/bin/llama-bench; echo answer=$?", mounts=[Mount(art, "/art", True)], timeout_s=60)
    return r.output_tail.strip().splitlines()[-1]


def test_a_planted_object_reaches_neither_the_baseline_nor_a_later_candidate(attack, docker_client, base_image):
    repo = attack.root / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "CMakeLists.txt").write_text(CMAKE)
    (repo / "kern.c").write_text("int answer(void) { return 42; }\n")
    baseline = _commit(repo, "baseline", "baseline")
    first = _commit(repo, "candidate 1", "first")
    git(repo, "checkout", "-q", baseline)
    second = _commit(repo, "candidate 2", "second")
    target = LlamaCppTarget(case_paths(attack.root), small_sandbox(docker_client, base_image, attack.root,
                                                                   memory="1g"),
                            SourceRepo(repo, baseline, "test"), config=native_config())
    # GGML_NATIVE and the rest are unknown to the stand-in: cmake warns and goes on.
    assert target.build_config(baseline).ok
    assert target.build_config(first).ok and _answer(target, first) == "answer=42"

    # What the first candidate's build could have done: kern.c compiled to answer 7, dated in the future.
    w = target._worker(0)
    shared = w.build_dir(config_key(native_config()))
    plant = ("cd /tmp && printf 'int answer(void) { return 7; }\\n' > k.c && gcc -c k.c -o k.o && "
             "for o in $(find /build -name 'kern.c.o'); do cp k.o $o && touch -d '+1 day' $o; done && "
             "for a in $(find /build -name 'libkern.a'); do rm $a; ar rcs $a /tmp/k.o && touch -d '+1 day' $a; done; "
             "echo planted")
    r = target.sandbox.run(plant, mounts=[Mount(shared, "/build", False)], timeout_s=60)
    assert "planted" in r.output_tail, r.output_tail

    assert target.build_config(second).ok
    if _answer(target, second) != "answer=42":
        attack.escaped("a later candidate linked the object the first one planted")
    again = target.build_config(second)  # its tests build it again: nothing to compile
    assert again.ok and "Building C object" not in open(again.log_path).read()
    assert target.build_config(baseline).ok
    if _answer(target, baseline) != "answer=42":
        attack.escaped("the baseline linked the object a candidate planted")


def test_candidates_with_an_added_cmake_flag_do_not_share_what_one_of_them_planted(attack, docker_client,
                                                                                    base_image):
    """The configuration the target does not trust (an added CMake flag: a build variant, or a patch stacked on a
    kept one) starts every candidate from the baseline commit's build in that configuration, as the trusted ones
    do: a candidate's planted object reaches no later candidate of the same flags."""
    from readfirst.records import BuildConfig
    repo = attack.root / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "CMakeLists.txt").write_text(CMAKE)
    (repo / "kern.c").write_text("int answer(void) { return 42; }\n")
    baseline = _commit(repo, "baseline", "baseline")
    first = _commit(repo, "candidate 1", "first")
    git(repo, "checkout", "-q", baseline)
    second = _commit(repo, "candidate 2", "second")
    flagged = BuildConfig([*native_config().cmake_flags, "-DREADFIRST_EXTRA=ON"], "", "native + an added flag")
    target = LlamaCppTarget(case_paths(attack.root), small_sandbox(docker_client, base_image, attack.root,
                                                                   memory="1g"),
                            SourceRepo(repo, baseline, "test"), config=native_config())
    assert not target.trusted(baseline, flagged)
    assert target.build_config(first, config=flagged).ok
    assert _answer(target, first, flagged) == "answer=42"
    w = target._worker(0)
    shared = w.build_dir(config_key(flagged))
    plant = ("cd /tmp && printf 'int answer(void) { return 7; }\\n' > k.c && gcc -c k.c -o k.o && "
             "for o in $(find /build -name 'kern.c.o'); do cp k.o $o && touch -d '+1 day' $o; done && "
             "for a in $(find /build -name 'libkern.a'); do rm $a; ar rcs $a /tmp/k.o && touch -d '+1 day' $a; done; "
             "echo planted")
    r = target.sandbox.run(plant, mounts=[Mount(shared, "/build", False)], timeout_s=60)
    assert "planted" in r.output_tail, r.output_tail
    assert target.build_config(second, config=flagged).ok
    if _answer(target, second, flagged) != "answer=42":
        attack.escaped("a later candidate with the same added flag linked the object the first one planted")
    assert target.build_config(baseline, config=flagged).ok
    if _answer(target, baseline, flagged) != "answer=42":
        attack.escaped("the baseline in the added flag's configuration linked a candidate's planted object")

