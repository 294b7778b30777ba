"""Issue 13 item 8, the host told to stop: SIGTERM or SIGKILL of the host process while its sandbox creates a
container, builds or benchmarks. SIGTERM (the CLI's handler: it stops as Ctrl-C does) must end the host within
seconds and leave no container of it, in any state, also when the signal lands inside the engine's create call;
after SIGKILL nothing in the host can clean up, so the next sandbox that opens must remove the dead owner's
containers before it runs anything. Real containers of the sandbox, a real host process each time."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from readfirst.sandbox.docker_sandbox import LABEL, OWNER_LABEL

from .helpers import small_sandbox

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

# The host: the CLI's SIGTERM handler, one sandbox, one command of the phase asked for.
HOST = """
import signal, sys, docker
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from readfirst.graph.cli import _terminate
from readfirst.records import Mount
from adversarial.helpers import small_sandbox
signal.signal(signal.SIGTERM, _terminate)
root = Path(sys.argv[2])
sb = small_sandbox(docker.from_env(), sys.argv[1], root)
phase = sys.argv[3]
print("STARTING", flush=True)
if phase == "create":
    sb.run("sleep 600", timeout_s=60)
elif phase == "build":
    (root / "build").mkdir(exist_ok=True)
    sb.run("cd /build && while :; do printf 'int main(void){return 0;}' > a.c && cc a.c -o a; done",
           mounts=[Mount(root / "build", "/build", False)], timeout_s=60)
else:
    sb.run("sleep 600", cpuset="0", timeout_s=60)
"""


def _of(client, pid: int) -> list:
    return [c for c in client.containers.list(all=True, filters={"label": LABEL}, ignore_removed=True)
            if f":{pid}:" in c.labels.get(OWNER_LABEL, "")]


@pytest.mark.parametrize("phase", ["create", "build", "bench"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_host_stopped_during_create_build_or_bench_leaves_no_container(attack, docker_client, base_image, phase,
                                                                         sig):
    tests_dir = str(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([sys.executable, "-c", HOST, base_image, str(attack.root), phase, tests_dir],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "STARTING", proc.stderr.read()[-2000:]
        if phase == "create":  # anywhere from before the engine's create call to just after the start
            time.sleep(random.Random(f"{sig}").uniform(0.0, 0.4))
        else:  # while it runs
            deadline = time.monotonic() + 60
            while not [c for c in _of(docker_client, proc.pid) if c.status == "running"]:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
                time.sleep(0.2)
            time.sleep(1.0)
        os.kill(proc.pid, sig)
        began = time.monotonic()
        proc.wait(timeout=30)  # not the command's 60 s timeout
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if sig == signal.SIGTERM:
        assert took < 20, took
        left = _of(docker_client, proc.pid)
        if left:
            attack.left_behind(f"{len(left)} container(s) of a host stopped by SIGTERM during {phase}: "
                               f"{[c.status for c in left]}")
        return
    # SIGKILL: whatever was left goes when the next sandbox opens, before it runs anything (graph.deps.open_sandbox
    # and every Ray node's experiment call the same housekeeping)
    small_sandbox(docker_client, base_image, attack.root).gc()
    left = _of(docker_client, proc.pid)
    if left:
        attack.left_behind(f"{len(left)} container(s) of a killed host after the next sandbox opened")


def test_a_signal_inside_the_engines_create_call_leaves_no_container(attack, docker_client, base_image, monkeypatch):
    """The engine makes the container, and the answer never reaches the host (the signal lands in between): the
    sandbox has no handle to remove it by, only its command's label, and must still leave nothing."""
    import docker.models.containers

    real_create = docker.models.containers.ContainerCollection.create
    made: list[str] = []

    def create_then_interrupt(self, *args, **kwargs):
        made.append(real_create(self, *args, **kwargs).id)
        raise KeyboardInterrupt  # as the CLI's SIGTERM handler raises it, after the engine answered

    monkeypatch.setattr(docker.models.containers.ContainerCollection, "create", create_then_interrupt)
    sandbox = small_sandbox(docker_client, base_image, attack.root)
    with pytest.raises(KeyboardInterrupt):
        sandbox.run("sleep 600", timeout_s=60)
    assert len(made) == 1  # the engine did make it
    left = _of(docker_client, os.getpid())
    if left:
        attack.left_behind(f"{len(left)} container(s) made by a create call the host never heard back from")
