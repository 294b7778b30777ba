"""A Ray cluster runs any code a connected client sends, as the user its nodes run as. Started the way readfirst
starts clusters (tests/ray_local.py, as deploy/ does), a client without the cluster's token, or with a wrong one,
tries to run a task that writes a canary, through the GCS port and through the Ray client port: it must not run.
No process of the cluster listens on an address other than loopback. readfirst's own client, given the token
file, joins (and without any token it refuses in one sentence)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ray_local import LocalCluster, pids_naming  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

STRANGER = """
import os, sys
canary, address = sys.argv[1], sys.argv[2]
if address.startswith("ray://"):
    from ray.util.client import ray
    ray.connect(address[len("ray://"):], connection_retries=0, ignore_version=True)
else:
    import ray
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)

@ray.remote
def write():
    with open(canary, "w") as f:
        f.write(str(os.getuid()))

ray.get(write.remote(), timeout=60)
print("RAN")
"""


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray")
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="rfopen-", dir="/tmp")))
    try:
        cluster.start_head()
        cluster.start_worker("node_a")
        yield cluster
    finally:
        cluster.stop()
        assert not pids_naming(str(cluster.root)), "the test cluster left processes behind"


def _stranger(canary: Path, address: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "READFIRST_RAY"))}
    # what a stranger on this machine or the network could do: Ray's own client, no token but what is given here;
    # loopback kept as loopback, so that only the missing token stands in the way
    clean.update(HOME=str(canary.parent), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", **env)
    return subprocess.run([sys.executable, "-c", STRANGER, str(canary), address], capture_output=True, text=True,
                          timeout=180, env=clean, cwd=canary.parent)


def _client_port(cluster) -> int:
    cmd = next(Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0") for p in pids_naming(str(cluster.root))
               if b"ray.util.client.server" in Path(f"/proc/{p}/cmdline").read_bytes())
    return int(next(a for a in cmd if a.startswith(b"--port=")).split(b"=")[1])


@pytest.mark.parametrize("how", ["no token", "a wrong token", "the client port, no token"])
def test_a_client_without_the_token_runs_nothing_on_the_cluster(attack, cluster, how):
    canary = attack.root / "CANARY"
    address = f"ray://127.0.0.1:{_client_port(cluster)}" if "client port" in how else cluster.address
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64} if how == "a wrong token" else {}
    proc = _stranger(canary, address, **env)
    if canary.exists() or "RAN" in proc.stdout:
        attack.escaped(f"a client with {how} ran code on the cluster as uid {canary.read_text()!r}")
    assert proc.returncode != 0


READFIRST_CLIENT = """
import sys
from readfirst.sandbox.ray_executor import RayExecutor
ex = RayExecutor(sys.argv[1], {"name": "none"}, token_file=sys.argv[2] or None)
print("NODES", len(ex.nodes()))
ex.close()
"""


def test_readfirsts_client_joins_with_the_token_file_and_refuses_without_one(attack, cluster, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "READFIRST_RAY"))}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
    run = [sys.executable, "-c", READFIRST_CLIENT, cluster.address]
    joined = subprocess.run([*run, str(cluster.token_file)], capture_output=True, text=True, timeout=180, env=env)
    assert joined.returncode == 0 and "NODES 1" in joined.stdout, joined.stderr[-2000:]
    refused = subprocess.run([*run, ""], capture_output=True, text=True, timeout=180, env=env)
    assert refused.returncode != 0 and "--ray-token-file" in refused.stderr, refused.stderr[-2000:]


def _listening(pids: set[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every TCP socket the processes listen on, read from /proc (no psutil here)."""
    inodes: dict[str, tuple[str, int]] = {}
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            hex_ip, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_ip)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # each 32-bit word is host order
            inodes[fields[9]] = (socket.inet_ntop(family, raw), int(hex_port, 16))
    out = []
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        out += [(pid, *inodes[link[8:-1]]) for link in links if link.startswith("socket:[") and link[8:-1] in inodes]
    return out


def _loopback(address: str) -> bool:
    return address in ("127.0.0.1", "::1", "::ffff:127.0.0.1") or address.startswith("127.")


def test_no_process_of_the_cluster_listens_beyond_loopback(attack, cluster):
    sockets = _listening(set(pids_naming(str(cluster.root))))  # after the tests above ran tasks and actors
    assert len(sockets) >= 3, sockets  # the GCS, the raylets, the client server: the listing sees them
    exposed = [s for s in sockets if not _loopback(s[1])]
    if exposed:
        attack.escaped(f"the cluster listens beyond loopback: {exposed}")
