"""What every adversarial case shares: a locked-down sandbox over a throw-away data directory, and the audit
of what a case left behind (this process's containers, files outside the case's own directory)."""

from __future__ import annotations

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
