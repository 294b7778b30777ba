"""What every adversarial case shares: a locked-down sandbox over a throw-away data directory, and the audit
of what a case left behind (this process's containers, files outside the case's own directory)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from readfirst.config import Paths
from readfirst.sandbox.docker_sandbox import OWNER_LABEL, DockerSandbox, Limits, owner_id

# Filled by the cases, printed by conftest.py at the end of the session.
TALLY = {"cases": 0, "escapes": 0, "left_behind": 0}


def small_sandbox(client, image: str, root: Path, **limits) -> DockerSandbox:
    defaults = dict(memory="512m", cpus=1.0, pids=128, output_tail_bytes=4096, log_max_bytes=1 << 20)
    return DockerSandbox(client, image, allowed_roots=[root], limits=Limits(**{**defaults, **limits}))


def case_paths(root: Path) -> Paths:
    return Paths(home=root / "home", cache=root / "cache")


def leftover_containers(client) -> list:
    return client.containers.list(all=True, filters={"label": f"{OWNER_LABEL}={owner_id()}"})


def readfirst_cli(home: Path, *args: str, timeout: float = 600, cwd: Path | None = None,
                  env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real CLI (`python -m readfirst.graph ARGS`) in a fresh process over the data directory `home`."""
    return subprocess.run([sys.executable, "-m", "readfirst.graph", *args], capture_output=True, text=True,
                          env={**os.environ, "READFIRST_HOME": str(home), **(env or {})}, timeout=timeout, cwd=cwd)


def cut_in_half(path: Path) -> None:
    """Damage a file as a full disk or an interrupted copy does: its second half is gone."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
