"""The sandbox's promises, checked for real from inside a container: no way out over the network, no
privileges, and result files that cannot trick the host that reads them back. Each case also checks that the
container wrote nothing beside the directories it was given, and (conftest) that no container is left."""

from __future__ import annotations

import os
import stat

import pytest

from readfirst.records import Mount
from readfirst.sandbox.readback import read_text_inside

from .helpers import small_sandbox

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]

# Loopback, link-local metadata, a public resolver, the Docker daemon's TCP ports on the host and its bridge.
TARGETS = ["127.0.0.1:22", "127.0.0.1:2375", "169.254.169.254:80", "1.1.1.1:53", "172.17.0.1:2375",
           "172.17.0.1:2376"]
CONNECT = ("import socket, sys\n"
           "for t in sys.argv[1:]:\n"
           "    host, port = t.split(':')\n"
           "    try:\n"
           "        socket.create_connection((host, int(port)), timeout=2).close(); print('CONNECTED', t)\n"
           "    except OSError as e:\n"
           "        print('refused', t, type(e).__name__)\n")


@pytest.fixture
def box(attack, docker_client, base_image):
    """A sandbox, its /out and a canary directory beside it that nothing may touch."""
    out = attack.root / "out"
    out.mkdir()
    canary = attack.root / "beside"
    canary.mkdir()
    (canary / "secret").write_text("canary")
    sandbox = small_sandbox(docker_client, base_image, attack.root)
    yield sandbox, out
    if sorted(p.name for p in canary.iterdir()) != ["secret"] or (canary / "secret").read_text() != "canary":
        attack.left_behind("the container changed a directory it was not given")


def test_no_egress_anywhere(attack, box):
    sandbox, out = box
    r = sandbox.run(f"python3 -c \"{CONNECT}\" {' '.join(TARGETS)}", mounts=[Mount(out, "/out", False)],
                    timeout_s=60)
    if "CONNECTED" in r.output_tail:
        attack.escaped(f"a connection left the sandbox: {r.output_tail}")
    assert r.output_tail.count("refused") == len(TARGETS), r.output_tail


def test_no_privileges_and_a_seccomp_filter(attack, box):
    sandbox, _ = box
    r = sandbox.run("grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status", timeout_s=60)
    status = dict(line.split(":\t") for line in r.output_tail.strip().splitlines())
    if int(status["CapEff"], 16) or int(status["CapPrm"], 16) or int(status["CapBnd"], 16):
        attack.escaped(f"the container holds capabilities: {status}")
    if status["NoNewPrivs"].strip() != "1" or status["Seccomp"].strip() != "2":
        attack.escaped(f"no-new-privileges or the seccomp filter is off: {status}")


@pytest.mark.parametrize("attempt", [
    "mount -t tmpfs none /tmp/m",
    "unshare -r true",
    "unshare -m true",
    "echo 1 > /proc/sys/kernel/sysrq",
    "echo x > /usr/bin/planted",
    "mknod /tmp/dev c 1 3",
])
def test_privileged_operations_fail(attack, box, attempt):
    sandbox, _ = box
    r = sandbox.run(f"mkdir -p /tmp/m; {attempt} 2>&1; echo rc=$?", timeout_s=60)
    if "rc=0" in r.output_tail:
        attack.escaped(f"{attempt!r} succeeded in the sandbox: {r.output_tail}")


@pytest.mark.parametrize("make, refusal", [
    ("ln -s {secret} /out/bench.json", "Too many levels|symbolic link|ELOOP|not a regular"),
    ("mkfifo /out/bench.json", "not a regular file"),
    # a sparse file past /out's size: refused by the reader, or left out by the fixed-size /out's copy-back
    ("truncate -s 10G /out/bench.json", "larger than|No such file"),
    ("mkdir /out/bench.json", "Is a directory|not a regular"),
])
def test_odd_result_files_are_refused_at_once(attack, box, make, refusal):
    sandbox, out = box
    secret = attack.root / "beside" / "secret"
    r = sandbox.run(make.format(secret=secret) + "; echo made=$?", mounts=[Mount(out, "/out", False)],
                    timeout_s=60)
    assert "made=0" in r.output_tail, r.output_tail
    with pytest.raises(OSError, match=refusal):
        text = read_text_inside(out, "bench.json")
        attack.escaped(f"an odd result file was read: {text[:80]!r}")


def test_a_device_node_result_is_refused(attack, box):
    _, out = box
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root on the host (the container cannot make one: see above)")
    os.mknod(out / "bench.json", 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
    with pytest.raises(OSError, match="not a regular file"):
        read_text_inside(out, "bench.json")
