"""`readfirst init` through the real command line: for each build system a small project written here, the file it
writes loads (when a bench is found), holds the expected commands, and the printed list says what to check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from readfirst.targets.config_file import load_config, parse_metrics


def init(folder: Path, *args: str, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "readfirst.graph", "init", str(folder), *args],
                          capture_output=True, text=True, env={**os.environ, "READFIRST_HOME": str(home)},
                          timeout=120)


def project(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def commands(config) -> tuple[str, str, str]:
    return config.build.command, config.test.command, config.bench.command


def written(folder: Path, tmp_path: Path):
    proc = init(folder, home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return load_config(folder / "readfirst.toml"), proc.stdout


C_FILES = {"src/fast.c": "int fast(int x) { return x * 2; }\n", "include/fast.h": "int fast(int x);\n",
           "tests/t.c": "int main(void) { return 0; }\n", "bench/b.c": "int main(void) { return 0; }\n"}


def test_a_makefile_c_project_with_a_bench_target(tmp_path):
    folder = project(tmp_path / "fastc", {**C_FILES, "Makefile": "CFLAGS := -O2\nall: bench/b\n"
                                          "bench/b: bench/b.c src/fast.c\n\t$(CC) $(CFLAGS) -o $@ $^\n"
                                          "test: all\n\t./tests/t\nbench: all\n\t./bench/b\n.PHONY: test bench\n"})
    config, out = written(folder, tmp_path)
    assert commands(config) == ('make -j"$(nproc)"', "make test", "make bench")
    assert config.name == "fastc" and config.hot_paths == ("src/**", "include/**")
    assert {"tests/**", "bench/**", "Makefile"} <= set(config.protected)
    assert "bench: `make bench` (Makefile target `bench`)" in out
    assert "objective: what the bench prints is unknown" in out


def test_a_cmake_project(tmp_path):
    folder = project(tmp_path / "c2", {**C_FILES, "CMakeLists.txt":
                                       "cmake_minimum_required(VERSION 3.10)\nproject(fastlib C)\nenable_testing()\n"
                                       "add_library(fast src/fast.c)\nadd_executable(fastbench bench/b.c)\n"
                                       "add_executable(t tests/t.c)\nadd_test(NAME t COMMAND t)\n"})
    config, out = written(folder, tmp_path)
    assert config.name == "fastlib"
    assert config.build.command.startswith("cmake -B build") and "cmake --build build" in config.build.command
    assert config.test.command.startswith("ctest --test-dir build")
    assert config.bench.command == "./build/fastbench"
    assert "CMakeLists.txt" in config.protected
    assert "bench: `./build/fastbench` (CMakeLists.txt add_executable(fastbench))" in out


def test_a_cargo_crate_with_benches(tmp_path):
    folder = project(tmp_path / "crate", {"Cargo.toml": '[package]\nname = "fastcrate"\nversion = "0.1.0"\n',
                                          "src/lib.rs": "pub fn f() {}\n", "benches/b.rs": "fn main() {}\n",
                                          "tests/t.rs": "#[test] fn t() {}\n"})
    config, out = written(folder, tmp_path)
    assert commands(config) == ("cargo build --release", "cargo test --release", "cargo bench")
    assert config.name == "fastcrate" and config.hot_paths == ("src/**",)
    assert {"tests/**", "benches/**", "Cargo.toml"} <= set(config.protected)
    assert config.apt == ("rustc", "cargo")
    assert "bench: `cargo bench` (the benches/ folder)" in out


def test_a_python_package_with_pytest_and_a_bench_script(tmp_path):
    folder = project(tmp_path / "py", {
        "pyproject.toml": '[project]\nname = "fastpkg"\n[project.optional-dependencies]\ntest = ["pytest"]\n',
        "fastpkg/__init__.py": "def f(x):\n    return x\n", "tests/test_f.py": "def test_f():\n    pass\n",
        "bench/run.py": "print('METRIC seconds=1')\n"})
    config, out = written(folder, tmp_path)
    assert config.name == "fastpkg" and config.hot_paths == ("fastpkg/**",)
    assert commands(config) == ("python3 -m compileall -q fastpkg", "python3 -m pytest -q", "python3 bench/run.py")
    assert config.apt == ("python3-pytest",)
    assert {"tests/**", "bench/**", "pyproject.toml"} <= set(config.protected)
    assert "bench: `python3 bench/run.py` (the script bench/run.py)" in out


def test_a_python_package_with_unittest_tests(tmp_path):
    folder = project(tmp_path / "py2", {"setup.py": "from setuptools import setup\nsetup(name='slowpkg')\n",
                                        "slowpkg/__init__.py": "", "tests/test_s.py": "import unittest\n",
                                        "bench.py": "print('METRIC seconds=1')\n"})
    config, _ = written(folder, tmp_path)
    assert config.name == "slowpkg"
    assert commands(config) == \
        ("python3 -m compileall -q slowpkg", "python3 -m unittest discover -s tests", "python3 bench.py")


def test_a_python_package_with_a_c_extension_builds_it_in_place(tmp_path):
    folder = project(tmp_path / "py3", {"setup.py": "from setuptools import setup, Extension\nsetup(name='cpkg', "
                                        "ext_modules=[Extension('cpkg._fast', ['cpkg/_fast.c'])])\n",
                                        "cpkg/__init__.py": "", "cpkg/_fast.c": "", "tests/test_c.py": "",
                                        "bench.py": ""})
    config, _ = written(folder, tmp_path)
    assert config.build.command == "python3 setup.py build_ext --inplace"
    assert {"python3-dev", "python3-setuptools"} <= set(config.apt)


def test_a_c_extension_with_a_bundled_library_like_lz4s_sdist(tmp_path):
    """The layout of the lz4 sdist: the extension compiles a bundled C library kept beside the package, and its
    setup.py needs build requirements that the sandbox, with no network, cannot fetch."""
    folder = project(tmp_path / "lz", {
        "pyproject.toml": '[build-system]\nrequires = ["setuptools>=45", "wheel", "setuptools_scm[toml]>=6.2", '
                          '"pkgconfig"]\nbuild-backend = "setuptools.build_meta"\n',
        "setup.py": "from setuptools import setup, Extension\nsetup(name='lz', ext_modules=[Extension('lz._b', "
                    "['lz/_b.c', 'lzlibs/lz.c'])])\n",
        "setup.cfg": "[tool:pytest]\naddopts = -x\n", "lz/__init__.py": "", "lz/_b.c": "", "lzlibs/lz.c": "",
        "lzlibs/lz.h": "", "tests/test_b.py": "", "bench.py": ""})
    config, out = written(folder, tmp_path)
    assert config.hot_paths == ("lz/**", "lzlibs/**")
    assert {"python3-setuptools-scm", "python3-pkgconfig", "python3-wheel"} <= set(config.apt)
    assert "test: `python3 -m pytest -q` (pytest named in setup.cfg)" in out  # where it is named, no other file


def test_a_project_whose_root_is_its_package_keeps_the_roots_modules_hot(tmp_path):
    """This repository's layout: the root holds __init__.py and modules beside its subpackages."""
    folder = project(tmp_path / "rootpkg", {
        "pyproject.toml": '[project]\nname = "rootpkg"\n', "__init__.py": "", "core.py": "X = 1\n",
        "sub/__init__.py": "", "tests/conftest.py": "", "bench.py": ""})
    config, out = written(folder, tmp_path)
    assert config.hot_paths == ("sub/**", "__init__.py", "core.py")
    assert config.build.command == "python3 -m compileall -q sub __init__.py core.py"
    assert "(the package folders and the root's modules)" in out
    assert "(pytest named in tests/conftest.py)" in out


def test_a_package_json_with_test_and_bench_scripts(tmp_path):
    folder = project(tmp_path / "js", {"package.json": json.dumps({"name": "fastjs", "scripts": {
        "test": "node test/t.js", "bench": "node bench/b.js"}}), "src/index.js": "module.exports = 1;\n",
        "test/t.js": "", "bench/b.js": ""})
    config, out = written(folder, tmp_path)
    assert config.name == "fastjs" and config.hot_paths == ("src/**",)
    assert commands(config) == ("npm run build --if-present", "npm test", "npm run bench")
    assert config.apt == ("nodejs", "npm")
    assert {"test/**", "bench/**", "package.json"} <= set(config.protected)
    assert "bench: `npm run bench` (package.json scripts.bench)" in out


GO_BENCH_OUTPUT = """goos: linux
BenchmarkSum-8          1000000              1234 ns/op
BenchmarkSum/small-8    2000000               56.5 ns/op            0 B/op          0 allocs/op
PASS
"""


def test_a_go_module_with_benchmarks_prints_them_as_metric_lines(tmp_path):
    folder = project(tmp_path / "go", {
        "go.mod": "module example.com/me/fastgo\n\ngo 1.19\n", "sum.go": "package fastgo\nfunc Sum() int { return 1 }\n",
        "sum_test.go": 'package fastgo\nimport "testing"\nfunc BenchmarkSum(b *testing.B) {\n'
                       "\tfor i := 0; i < b.N; i++ { Sum() }\n}\n"})
    config, out = written(folder, tmp_path)
    assert config.name == "fastgo" and config.hot_paths == ("*.go", "!*_test.go")
    assert (config.build.command, config.test.command) == ("go build ./...", "go test ./...")
    assert config.bench.command.startswith("go test -run '^$' -bench . ")
    assert (config.objective.metric, config.objective.direction) == ("BenchmarkSum_ns_per_op", "lower")
    assert config.apt == ("golang-go",) and "*_test.go" in config.protected
    assert "objective: what the bench prints is unknown" not in out
    if shutil.which("awk"):  # the converter half of the command, on what `go test -bench` prints
        converter = config.bench.command.split(" | ", 1)[1]
        shown = subprocess.run(["sh", "-c", converter], input=GO_BENCH_OUTPUT, capture_output=True, text=True)
        metrics, problems = parse_metrics(shown.stdout)
        assert not problems and metrics == {"BenchmarkSum_ns_per_op": 1234.0, "BenchmarkSum_small_ns_per_op": 56.5}


def test_no_bench_found_writes_a_commented_placeholder_and_says_so(tmp_path):
    folder = project(tmp_path / "nobench", {**C_FILES, "Makefile": "all:\n\ttrue\ntest:\n\ttrue\n"})
    proc = init(folder, home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    text = (folder / "readfirst.toml").read_text()
    assert "\n# [bench]\n" in text and "CHECK: no benchmark found" in text
    assert "bench: none found (no benchmark found)" in proc.stdout
    assert "does not load until you write the missing bench command" in proc.stdout
    with pytest.raises(Exception, match=r"\[bench\] command: missing"):
        load_config(folder / "readfirst.toml")


def test_it_refuses_to_overwrite_and_force_replaces(tmp_path):
    folder = project(tmp_path / "mine", {**C_FILES, "Makefile": "test:\n\ttrue\nbench:\n\ttrue\n",
                                         "readfirst.toml": "# mine\n"})
    proc = init(folder, home=tmp_path / "home")
    assert proc.returncode == 2 and "already exists" in proc.stderr and "--force" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert (folder / "readfirst.toml").read_text() == "# mine\n"
    proc = init(folder, "--force", home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    assert load_config(folder / "readfirst.toml").bench.command == "make bench"


def test_json_prints_the_guesses_as_one_document(tmp_path):
    folder = project(tmp_path / "j", {**C_FILES, "Makefile": "test:\n\ttrue\nbench:\n\ttrue\n"})
    proc = init(folder, "--json", home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["build_system"] == "Make" and doc["written"] and doc["loads"] and doc["missing"] == []
    assert doc["guesses"]["bench"] == {"value": "make bench", "from": "Makefile target `bench`"}
    assert doc["guesses"]["metric"]["value"]["metric"] == "seconds"
    assert doc["toml"] == (folder / "readfirst.toml").read_text()


def test_print_writes_nothing_and_prints_the_file(tmp_path):
    folder = project(tmp_path / "p", {**C_FILES, "Makefile": "test:\n\ttrue\nbench:\n\ttrue\n"})
    proc = init(folder, "--print", home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    assert not (folder / "readfirst.toml").exists()
    assert tomllib.loads(proc.stdout)["bench"]["command"] == "make bench"
    assert "check each guess" in proc.stderr


def test_a_folder_without_a_build_system_is_one_sentence(tmp_path):
    folder = project(tmp_path / "empty", {"notes.txt": "hi\n"})
    proc = init(folder, home=tmp_path / "home")
    assert proc.returncode == 2 and "no build system found" in proc.stderr and "Traceback" not in proc.stderr
    assert not (folder / "readfirst.toml").exists()
