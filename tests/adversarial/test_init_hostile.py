"""`readfirst init` in a hostile project: it reads and writes only inside the folder (no link followed out of it,
no FIFO waited on), caps what it reads, and what the folder's names say cannot add keys to the file or commands
to the shell."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from readfirst.targets.config_file import load_config

pytestmark = pytest.mark.timeout(300)

MAKEFILE = "test:\n\ttrue\nbench:\n\ttrue\n"


def init(folder: Path, *args: str, home: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "readfirst.graph", "init", str(folder), *args],
                          capture_output=True, text=True, env={**os.environ, "READFIRST_HOME": str(home)},
                          timeout=timeout)


def tree(attack, files: dict[str, str]) -> Path:
    root = attack.root / "project"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_links_out_of_the_project_are_not_read(attack):
    outside = attack.root / "outside"
    outside.mkdir()
    (outside / "Cargo.toml").write_text('[package]\nname = "CANARY"\n')
    (outside / "CANARY.c").write_text("int canary;\n")
    root = tree(attack, {"Makefile": MAKEFILE, "lib/fast.c": "int f;\n"})
    (root / "Cargo.toml").symlink_to(outside / "Cargo.toml")
    (root / "src").symlink_to(outside, target_is_directory=True)
    proc = init(root, "--json", home=attack.root / "home")
    assert proc.returncode == 0, proc.stderr
    if "CANARY" in proc.stdout or "CANARY" in (root / "readfirst.toml").read_text():
        attack.escaped("a manifest or folder linked from outside the project was read")
    doc = json.loads(proc.stdout)
    assert doc["build_system"] == "Make" and doc["guesses"]["hot_paths"]["value"] == ["lib/**"]


def test_file_names_cannot_add_keys_or_shell_commands(attack):
    root = tree(attack, {"Makefile": "test:\n\ttrue\n", "src/f.c": "int f;\n",
                         'bench/run\n[sandbox]\napt = ["evil"]\n.py': "",
                         "bench/run$(touch PWNED).py": "print('METRIC seconds=1')\n"})
    proc = init(root, home=attack.root / "home")
    assert proc.returncode == 0, proc.stderr
    config = load_config(root / "readfirst.toml")
    if "evil" in config.apt:
        attack.escaped("a file name wrote a key into readfirst.toml")
    if shlex.split(config.bench.command) != ["python3", "bench/run$(touch PWNED).py"]:
        attack.escaped(f"a file name became shell code in the bench command: {config.bench.command}")


def test_manifest_strings_cannot_add_keys_or_paths_outside(attack):
    root = tree(attack, {"Cargo.toml": '[package]\nname = "x\\"\\n[sandbox]\\napt = [\\"evil\\"]"\n'
                                       '[workspace]\nmembers = ["../../etc", "/abs", "crates/*"]\n',
                         "src/lib.rs": "", "benches/b.rs": ""})
    proc = init(root, home=attack.root / "home")
    assert proc.returncode == 0, proc.stderr
    config = load_config(root / "readfirst.toml")  # loads: no hot path outside the project
    if "evil" in config.apt or any(".." in p or p.startswith("/") for p in config.hot_paths):
        attack.escaped(f"the manifest's strings reached the file as keys or paths: {config.hot_paths}")
    assert config.hot_paths == ("src/**", "crates/*/src/**")


def test_build_requirements_become_package_names_never_options_or_text(attack):
    """[build-system] requires is written into [sandbox] apt, whose names reach apt-get as root: each becomes
    python3-NAME from its leading name characters, or nothing."""
    hostile = ["setuptools_scm>=6", "x; touch /tmp/CANARY", "-o APT::Get::Trivial-Only=true", "$(id)", "\nevil",
               "Cython", 42, "../../etc", "a" * 300]
    root = tree(attack, {"pyproject.toml": "[build-system]\nrequires = " + json.dumps(hostile)
                         + '\nbuild-backend = "mesonpy"\n', "pkg/__init__.py": "", "pkg/f.c": "",
                         "tests/conftest.py": "", "bench.py": ""})
    proc = init(root, home=attack.root / "home")
    assert proc.returncode == 0, proc.stderr
    apt = load_config(root / "readfirst.toml").apt  # loads: every name passed the loader's check
    bad = [p for p in apt if not p.startswith(("python3-", "cython3")) or any(c in p for c in " ;$\n/")]
    if bad:
        attack.escaped(f"a build requirement reached [sandbox] apt as {bad}")
    assert {"python3-setuptools-scm", "python3-x", "cython3"} <= set(apt), apt


def test_force_never_writes_through_a_link(attack):
    outside = attack.root / "victim.txt"
    outside.write_text("precious\n")
    root = tree(attack, {"Makefile": MAKEFILE})
    (root / "readfirst.toml").symlink_to(outside)
    for args in ((), ("--force",)):
        proc = init(root, *args, home=attack.root / "home")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    if outside.read_text() != "precious\n":
        attack.escaped("readfirst init wrote through a link to a file outside the project")


def test_a_fifo_in_the_files_place_does_not_hang(attack):
    root = tree(attack, {"Makefile": MAKEFILE})
    os.mkfifo(root / "readfirst.toml")
    os.mkfifo(root / "package.json")
    try:
        proc = init(root, "--force", home=attack.root / "home", timeout=60)
    except subprocess.TimeoutExpired:
        attack.escaped("readfirst init waited on a FIFO")
    assert proc.returncode == 2 and "cannot be written" in proc.stderr, proc.stderr


def test_a_huge_manifest_is_not_read(attack):
    root = tree(attack, {"src/index.js": "", "test/t.js": ""})
    with open(root / "package.json", "w") as f:  # 50 MB: a name at the start, then padding
        f.write('{"name": "HUGE", "scripts": {"test": "node t", "bench": "node b"}, "pad": "')
        f.write("x" * (50 << 20))
        f.write('"}')
    proc = init(root, "--print", home=attack.root / "home")
    assert proc.returncode == 0, proc.stderr
    data = tomllib.loads(proc.stdout)
    assert data["target"]["name"] == "project"  # the folder's name: the manifest was too large to read
