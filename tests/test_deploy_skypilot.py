"""deploy/skypilot-ray.yaml: SkyPilot's own parser accepts it (no cloud needed), its scripts are valid bash, and
its run script, played here as node rank 0 and rank 1 of a two-node cluster, starts a real Ray head and a worker
that joins it, each carrying its machine class as a Ray resource.

SkyPilot is not one of readfirst's dependencies (it pins older click, bcrypt and uvicorn than the project's venv
has): the parser test runs it in the interpreter READFIRST_SKY_PYTHON names (a venv of its own with
`pip install 'skypilot==0.14.*'`), else in this one, and skips when neither has it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
ROOT = Path(__file__).resolve().parents[1]
TASK = ROOT / "deploy" / "skypilot-ray.yaml"


def _sky_python() -> str:
    python = os.environ.get("READFIRST_SKY_PYTHON") or sys.executable
    if subprocess.run([python, "-c", "import sky"], capture_output=True).returncode != 0:
        pytest.skip(f"SkyPilot is not importable by {python} (set READFIRST_SKY_PYTHON to a venv that has it)")
    return python


LOAD = """
import json, sys
import sky, yaml
task = sky.Task.from_yaml(sys.argv[1])
(resources,) = task.resources
# the token as `sky launch --secret READFIRST_RAY_TOKEN=...` gives it
with open(sys.argv[1]) as f:
    launched = sky.Task.from_yaml_config(yaml.safe_load(f), secrets_overrides=[("READFIRST_RAY_TOKEN", "t0ken")])
print(json.dumps({"name": task.name, "num_nodes": task.num_nodes, "workdir": task.workdir, "envs": task.envs,
                  "cpus": resources.cpus, "memory": resources.memory, "setup": task.setup, "run": task.run,
                  "secrets": sorted(launched.secrets)}))
"""


def test_skypilots_own_parser_loads_the_task_and_refuses_a_misspelled_copy(tmp_path):
    python = _sky_python()
    proc = subprocess.run([python, "-c", LOAD, str(TASK)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    task = json.loads(proc.stdout.strip().splitlines()[-1])
    assert task["name"] == "readfirst-ray" and task["num_nodes"] == 4 and task["workdir"] == "."
    assert task["envs"]["RAY_PORT"] == "6379"  # not SkyPilot's own Ray port (6380)
    assert task["cpus"] == "4+" and task["memory"] == "8+"
    assert "docker.io" in task["setup"] and "./setup.sh --no-run" in task["setup"] and "ray==2.60.0" in task["setup"]
    assert "ray start --head" in task["run"] and "--address" in task["run"]
    assert task["secrets"] == ["READFIRST_RAY_TOKEN"]  # the cluster's token, given at launch, not in the file
    broken = tmp_path / "broken.yaml"
    broken.write_text(TASK.read_text().replace("num_nodes: 4", "num_node: 4"))
    proc = subprocess.run([python, "-c", LOAD, str(broken)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode != 0 and "num_node" in proc.stderr


def test_its_scripts_are_valid_bash():
    task = yaml.safe_load(TASK.read_text())
    for section in ("setup", "run"):
        proc = subprocess.run(["bash", "-n"], input=task[section], capture_output=True, text=True)
        assert proc.returncode == 0, (section, proc.stderr)


def test_the_cluster_needs_its_token_opens_no_port_and_leaves_the_docker_socket_alone():
    task = yaml.safe_load(TASK.read_text())
    script = task["setup"] + task["run"]
    assert "docker.sock" not in script and "chmod" not in task["setup"], "the Docker socket must stay 0660"
    assert "usermod -aG docker" in task["setup"] and 'sudo --preserve-env -u "$USER"' in task["run"]
    assert "ports" not in task and "ports" not in task.get("resources", {}), "Ray's ports are never opened"
    assert task["secrets"] == {"READFIRST_RAY_TOKEN": None}  # required at launch, never a value in the file
    assert "export RAY_AUTH_MODE=token" in task["run"] and "umask 077" in task["run"]
    assert "--include-dashboard false" in task["run"] and "--dashboard-host 127.0.0.1" in task["run"]
    assert '--node-ip-address "$MY_IP"' in task["run"]  # the node's private address, from SKYPILOT_NODE_IPS
    for start in [line for line in task["run"].splitlines() if "ray start" in line]:
        assert start.lstrip().startswith('if "${AS_USER[@]}"') or start.lstrip().startswith('"${AS_USER[@]}"'), start


def test_the_run_script_refuses_to_start_ray_without_a_token(tmp_path):
    run = yaml.safe_load(TASK.read_text())["run"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("READFIRST_", "RAY_"))}
    env.update(READFIRST_DIR=str(tmp_path), SKYPILOT_NODE_IPS="127.0.0.1", SKYPILOT_NODE_RANK="0",
               SKYPILOT_NUM_NODES="1", RAY_PORT="1", RAY_TEMP_DIR=str(tmp_path / "ray"))
    proc = subprocess.run(["bash", "-c", run], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "READFIRST_RAY_TOKEN" in proc.stderr, proc.stderr
    assert not list(tmp_path.iterdir()), "nothing is started or written before the token is there"


@pytest.mark.slow
def test_the_run_script_starts_a_head_and_a_worker_joins_it_with_its_machine_class(tmp_path):
    pytest.importorskip("ray")
    from ray_local import free_port, kill_naming, pids_naming
    run = yaml.safe_load(TASK.read_text())["run"]
    root = Path(tempfile.mkdtemp(prefix="rfsky-", dir="/tmp"))  # short: Ray's socket paths live under it
    port = free_port()
    address_file = tmp_path / "address"
    token_file = tmp_path / "token"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("READFIRST_", "RAY_"))}
    base.update(RAY_PORT=str(port), READFIRST_DIR=str(ROOT), READFIRST_RAY_ADDRESS_FILE=str(address_file),
                SKYPILOT_NODE_IPS="127.0.0.1\n127.0.0.1", SKYPILOT_NUM_NODES="2", RAY_USAGE_STATS_ENABLED="0",
                READFIRST_RAY_TOKEN="a1" * 32, READFIRST_RAY_TOKEN_FILE=str(token_file))
    try:
        for rank in (0, 1):  # one machine plays both nodes: each its own Ray temp dir
            env = {**base, "SKYPILOT_NODE_RANK": str(rank), "RAY_TEMP_DIR": str(root / f"node{rank}")}
            proc = subprocess.run(["nice", "-n", "19", "bash", "-c", run], env=env, capture_output=True, text=True,
                                  timeout=300)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
            if rank == 0:
                assert f"READFIRST_RAY_ADDRESS=127.0.0.1:{port}" in proc.stdout
                assert address_file.read_text().strip() == f"127.0.0.1:{port}"
            else:
                assert "node 1" in proc.stdout and "joined" in proc.stdout
        assert token_file.read_text() == "a1" * 32 and token_file.stat().st_mode & 0o077 == 0
        probe = ("import json, ray; ray.init(address=%r, logging_level='ERROR'); "
                 "print(json.dumps([n['Resources'] for n in ray.nodes() if n['Alive']]))" % f"127.0.0.1:{port}")
        stranger = {k: v for k, v in base.items() if not k.startswith("READFIRST_RAY_TOKEN")}
        proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=180,
                              env={**stranger, "HOME": str(tmp_path)})
        assert proc.returncode != 0, "a client without the token joined the cluster"
        proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                              env={**stranger, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)})
        assert proc.returncode == 0, proc.stderr[-2000:]
        nodes = json.loads(proc.stdout.strip().splitlines()[-1])
        classes = [{k for k in n if k in ("x86-avx512", "x86-avx2", "arm64")} for n in nodes]
        assert len(nodes) == 2 and all(len(c) == 1 for c in classes), nodes
    finally:
        kill_naming(str(root))
        assert not pids_naming(str(root)), "the script's cluster left processes behind"
        shutil.rmtree(root, ignore_errors=True)
