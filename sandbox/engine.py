"""Find the Docker engine, and on a bare machine install and start it.

The engine here runs without a bridge network (sandboxes have no network at all, and nothing may send traffic to
private-range addresses), so it is started with --bridge=none --iptables=false --ip-forward=false.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors
import requests

from ..errors import EngineUnavailable

DOCKERD_FLAGS = ("--bridge=none", "--iptables=false", "--ip-forward=false")
APT_PACKAGES = ("docker.io", "debootstrap")

Say = Callable[[str], None]


def connect() -> docker.DockerClient | None:
    """A client for an engine that answers, or None."""
    try:
        client = docker.from_env(timeout=120)
        client.ping()
        return client
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        return None


def require_engine() -> docker.DockerClient:
    client = connect()
    if client is None:
        raise EngineUnavailable("no Docker engine answers: run the set-up (`readfirst setup`) or start dockerd")
    return client


def ensure_engine(log_dir: Path, *, say: Say = lambda _: None, wait_s: float = 60) -> docker.DockerClient:
    """Return a client, installing (apt) and starting dockerd first when no engine answers."""
    client = connect()
    if client is not None:
        return client
    if os.geteuid() != 0:
        raise EngineUnavailable("no Docker engine answers and starting one needs root: start dockerd "
                                f"({' '.join(DOCKERD_FLAGS)}) or run the set-up as root")
    missing = [p for p, exe in zip(APT_PACKAGES, ("dockerd", "debootstrap")) if shutil.which(exe) is None]
    if missing:
        say(f"installing {', '.join(missing)} with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise EngineUnavailable(f"`{' '.join(cmd)}` failed: {(proc.stdout + proc.stderr)[-1000:]}")
    log_dir.mkdir(parents=True, exist_ok=True)
    say("starting dockerd " + " ".join(DOCKERD_FLAGS))
    with open(log_dir / "dockerd.log", "ab") as log:
        # A session of its own, so that the engine outlives this command (and a Ctrl-C of it).
        subprocess.Popen(["dockerd", *DOCKERD_FLAGS], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        client = connect()
        if client is not None:
            return client
        time.sleep(1)
    raise EngineUnavailable(f"dockerd did not answer within {wait_s:.0f}s; see {log_dir / 'dockerd.log'}")
