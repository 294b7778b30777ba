"""A real Ray cluster on this machine, for the tests and bench/ray_scaling.py: a head and worker nodes, each its
own `ray start` process on the loopback address, in one temp dir; stopped by the pids whose command line names
that dir, or that hold a file open in it (Ray's agents rename themselves), never by `ray stop` (which kills every
Ray process of the user, another cluster's too).

Started as deploy/ starts a cluster: token authentication on (a token of its own, in a 0600 file under its dir),
and here every port on the loopback address. Ray 2.60's `ray start --node-ip-address 127.0.0.1` swaps 127.0.0.1
for the machine's external address (services.resolve_ip_for_localhost), and its GCS and raylets then listen on
every interface; given 127.0.0.1 as it is, they listen on loopback only. The environment switch that keeps it
(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) also forbids a second node, so the nodes start through RAY_START, which
leaves the address as given. This process's Ray client reads the token file READFIRST_RAY_TOKEN_FILE names (set
by start_head, restored by stop); sandbox/ray_auth.py keeps its loopback address as loopback.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# A Ray that no longer has the function fails to start here, rather than start listening beyond loopback.
RAY_START = ("import sys, ray._private.services as services; from ray.scripts.scripts import main; "
             "assert callable(getattr(services, 'resolve_ip_for_localhost', None)), "
             "'Ray moved services.resolve_ip_for_localhost: tests/ray_local.py cannot keep 127.0.0.1'; "
             "services.resolve_ip_for_localhost = lambda host: host; sys.argv[0] = 'ray'; main()")
TOKEN_ENV = "READFIRST_RAY_TOKEN_FILE"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _holds_open(entry: Path, text: str) -> bool:
    try:
        return any(text in os.readlink(fd) for fd in (entry / "fd").iterdir())
    except OSError:
        return False


def pids_naming(text: str) -> list[int]:
    """The processes (other than this one) whose command line contains `text` or that hold a file open whose
    path does (a Ray agent renames its process and names no dir, but writes its log there)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline or _holds_open(entry, text):
            out.append(int(entry.name))
    return out


def kill_naming(text: str) -> None:
    """SIGKILL every process naming `text`, looking again a few times: a dying raylet's workers outlive it."""
    for _ in range(5):
        pids = pids_naming(text)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


class LocalCluster:
    """`root` should be short (e.g. a mkdtemp under /tmp): Ray's Unix sockets live under it, and a socket's path
    must stay under 108 bytes."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # the caller's home is not the nodes' business: a node is told its data directories by the executor
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("READFIRST_", "RAY_AUTH"))}
        self.token_file = root / "token"
        self.env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_file))
        self._client_token_before = os.environ.get(TOKEN_ENV)

    def _start(self, *args: str) -> None:
        proc = subprocess.run(["nice", "-n", "19", sys.executable, "-c", RAY_START, "start",
                               "--node-ip-address", "127.0.0.1",
                               "--disable-usage-stats", "--object-store-memory", str(80 * 2**20),
                               "--dashboard-host", "127.0.0.1", *args],
                              capture_output=True, text=True, env=self.env, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start {' '.join(args[:2])} failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")

    def start_head(self, system_config: dict | None = None) -> None:
        """A head with no CPUs: it runs nothing. Its token is made here, and this process's client is given it."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        os.environ[TOKEN_ENV] = str(self.token_file)
        extra = ("--system-config", json.dumps(system_config)) if system_config else ()
        self._start("--head", "--port", str(self.port), "--num-cpus", "0", "--include-dashboard", "false",
                    "--ray-client-server-port", str(free_port()), "--temp-dir", str(self.root / "head"), *extra)

    def start_worker(self, name: str) -> None:
        """A node with 1 CPU and the custom resource `name`, its temp dir named after it."""
        self._start("--address", self.address, "--num-cpus", "1", "--resources", json.dumps({name: 1}),
                    "--temp-dir", str(self.root / name))

    def raylet_pid(self, name: str) -> int:
        node_dir = self.root / name
        pids = [p for p in pids_naming(str(node_dir) + "/") if "raylet/raylet" in
                Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")]
        assert len(pids) == 1, pids
        return pids[0]

    def kill_raylet(self, name: str) -> int:
        """The node dies as a machine does: its raylet and every process it started (its workers, an actor in
        the middle of a call) at once. A worker whose raylet alone is killed lives on for a few seconds, long
        enough to finish a short experiment and hand its result back as if nothing had happened."""
        pid = self.raylet_pid(name)
        os.kill(pid, signal.SIGSTOP)  # stopped, it starts no worker between the listing and the kill
        children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(int(p.name)) == pid]
        for victim in (*children, pid):
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pid

    def stop(self) -> None:
        """Every process of this cluster, by pid (its temp dir in their command lines), then the dir."""
        kill_naming(str(self.root))
        shutil.rmtree(self.root, ignore_errors=True)
        if self._client_token_before is None:
            os.environ.pop(TOKEN_ENV, None)
        else:
            os.environ[TOKEN_ENV] = self._client_token_before
