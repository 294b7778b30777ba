"""The sandbox's limits, attacked: each run ends as the limit says, is reported as what it was, and leaves no
container or process behind (conftest)."""

from __future__ import annotations

import pytest

from readfirst.records import Mount

from .helpers import small_sandbox

pytestmark = [pytest.mark.docker, pytest.mark.timeout(240)]


def test_a_fork_bomb_ends_at_the_pids_limit(attack, docker_client, base_image):
    sandbox = small_sandbox(docker_client, base_image, attack.root, pids=64)
    r = sandbox.run("b() { b | b & }; b; sleep 3; echo alive", timeout_s=30)
    if r.timed_out:
        attack.escaped("a fork bomb outlived its limit until the timeout")


def test_twice_the_memory_is_reported_as_out_of_memory(attack, docker_client, base_image):
    sandbox = small_sandbox(docker_client, base_image, attack.root, memory="256m")
    r = sandbox.run("python3 -c \"b = bytearray(512 << 20); b[::4096] = b'x' * len(b[::4096]); print('got it')\"",
                    timeout_s=60)
    if "got it" in r.output_tail:
        attack.escaped("a container held twice its memory limit")
    assert r.oom_killed and not r.ok, (r.exit_code, r.output_tail[-200:])


def test_a_child_that_ignores_sigterm_is_gone_at_the_timeout(attack, docker_client, base_image):
    sandbox = small_sandbox(docker_client, base_image, attack.root)
    out = attack.root / "out"
    out.mkdir()
    r = sandbox.run("sh -c 'trap \"\" TERM; while :; do echo tick >> /out/ticks; sleep 0.2; done' & "
                    "trap '' TERM; while :; do :; done", mounts=[Mount(out, "/out", False)], timeout_s=3)
    assert r.timed_out and not r.ok
    ticks = (out / "ticks").stat().st_size
    import time
    time.sleep(1.5)
    if (out / "ticks").stat().st_size != ticks:
        attack.escaped("a SIGTERM-ignoring child kept writing after the timeout")


def test_200_mb_of_output_is_cut_and_the_log_capped(attack, docker_client, base_image):
    sandbox = small_sandbox(docker_client, base_image, attack.root)
    log = attack.root / "logs" / "flood.log"
    r = sandbox.run("head -c 200000000 /dev/zero | tr '\\0' 'y'; echo; echo end", timeout_s=120, log_path=log)
    assert r.truncated and r.output_bytes >= 200_000_000
    assert len(r.output_tail) <= 8192 and r.output_tail.rstrip().endswith("end")
    if log.stat().st_size > 1 << 20:
        attack.escaped(f"the log on disk grew to {log.stat().st_size >> 20} MiB past its cap")
