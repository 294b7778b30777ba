"""Issue 13 item 6: a container cannot fill the host's disk through a writable mount; the sandbox kills it at
the mount's limit and says which mount it was."""

from __future__ import annotations

import pytest

from readfirst.records import Mount
from readfirst.sandbox.docker_sandbox import allocated_bytes

from .helpers import small_sandbox

pytestmark = pytest.mark.docker

LIMIT = 32 << 20
# 1 GiB in 1 MiB writes, flushed as it goes: far past the limit if nothing stops it.
FILL = "dd if=/dev/zero of={path}/fill bs=1M count=1024 conv=fsync 2>&1; echo wrote=$?"


@pytest.mark.parametrize("target", ["/out", "/build", "/ccache", "/artifact"])
def test_filling_a_writable_mount_is_stopped_at_its_limit(attack, docker_client, base_image, target):
    sandbox = small_sandbox(docker_client, base_image, attack.root, disk_bytes=LIMIT, disk_bytes_at=())
    host = attack.root / target.strip("/")
    host.mkdir()
    r = sandbox.run(FILL.format(path=target), mounts=[Mount(host, target, False)], timeout_s=120)
    written = allocated_bytes(host)
    if written > 8 * LIMIT:
        attack.escaped(f"{target}: {written >> 20} MiB reached the host disk (limit {LIMIT >> 20} MiB)")
    assert r.disk_exceeded.startswith(target) and not r.ok, (r.exit_code, r.output_tail[-300:])
    assert "disk limit" in r.output_tail
    print(f"{target}: killed after {written >> 20} MiB on disk (limit {LIMIT >> 20} MiB)")


def test_a_command_within_the_limit_is_untouched(attack, docker_client, base_image):
    sandbox = small_sandbox(docker_client, base_image, attack.root, disk_bytes=LIMIT, disk_bytes_at=())
    out = attack.root / "out"
    out.mkdir()
    r = sandbox.run("dd if=/dev/zero of=/out/f bs=1M count=4 2>/dev/null; echo done", timeout_s=60,
                    mounts=[Mount(out, "/out", False)])
    assert r.ok and r.disk_exceeded == "" and "done" in r.output_tail


PROJECT = """[target]
name = "filler"

[build]
command = "dd if=/dev/zero of=/work/fill bs=1M count=1024 conv=fsync"
timeout_s = 120

[test]
command = "true"

[bench]
command = "echo 'speed: 1'"

[objective]
metric = "speed"
direction = "higher"
"""


def test_a_project_build_that_fills_its_tree_fails_at_the_disk_limit_stage(attack, docker_client, base_image):
    """The config target (any project a readfirst.toml describes) names the stage as llama.cpp's does."""
    import subprocess

    from readfirst.sources import SourceRepo
    from readfirst.targets.config_file import load_config
    from readfirst.targets.config_target import ConfigTarget

    from .helpers import case_paths
    repo = attack.root / "project"
    repo.mkdir()
    (repo / "readfirst.toml").write_text(PROJECT)
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m",
                                                  "baseline"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)
    baseline = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    sandbox = small_sandbox(docker_client, base_image, attack.root, disk_bytes=LIMIT, disk_bytes_at=())
    target = ConfigTarget(case_paths(attack.root), sandbox, SourceRepo(repo, baseline, "project"),
                          load_config(repo / "readfirst.toml"))
    built = target.build(baseline, {"build_env": {}, "run_env": {}})
    assert not built.ok and built.stage == "disk limit", (built.stage, built.log_tail[-300:])
    assert "/work" in built.log_tail and "disk limit" in built.log_tail  # which mount, in the log a user reads


# Issue 29 item 3: a file opened, unlinked and written on is in no directory: a watch of the tree never sees it
# (400 MB reached the host past a 32 MiB limit). 1 MiB at a time, counted aloud, up to 400 MiB.
UNLINKED = ("exec 3>{path}/hidden && rm {path}/hidden && i=0 && while [ $i -lt 400 ]; do "
            "head -c 1048576 /dev/zero >&3 || break; i=$((i+1)); echo mib=$i; done; echo end=$i")


@pytest.mark.parametrize("target, fixed", [("/out", True), ("/out", False), ("/build", False)],
                         ids=["out-fixed-size", "out-watched", "build-watched"])
def test_an_unlinked_file_written_on_is_stopped_at_the_limit(attack, docker_client, base_image, target, fixed):
    """/out on a file system of its limit's size (the kernel refuses the write), or, where none can be mounted
    (`fixed_size_at=()` stands for a host that refuses the mount), watched with the files the container's
    processes hold open after unlinking them; a build mount is always watched that way."""
    import re
    sandbox = small_sandbox(docker_client, base_image, attack.root, disk_bytes=LIMIT, disk_bytes_at=(),
                            **({} if fixed or target != "/out" else {"fixed_size_at": ()}))
    host = attack.root / target.strip("/")
    host.mkdir()
    r = sandbox.run(UNLINKED.format(path=target), mounts=[Mount(host, target, False)], timeout_s=120)
    written = max(map(int, re.findall(r"mib=(\d+)", r.output_tail)), default=0) << 20
    if written > 8 * LIMIT:
        attack.escaped(f"{target}: {written >> 20} MiB written to an unlinked file (limit {LIMIT >> 20} MiB)")
    # Killed at the limit; or, on a fixed-size /out, refused by the kernel (the command may go on without it, and
    # may end before the watch sees the mount full: the file goes with it)
    stopped = r.disk_exceeded.startswith(target) and not r.ok
    assert stopped or (fixed and "No space left" in r.output_tail), (r.exit_code, r.disk_exceeded,
                                                                        r.output_tail[-300:])
    assert not any(host.iterdir())  # nothing of it is left on the host
    print(f"{target} ({'fixed size' if fixed else 'watched'}): stopped after {written >> 20} MiB "
          f"(limit {LIMIT >> 20} MiB)")


def test_a_fixed_size_mount_left_by_a_dead_run_is_unmounted_by_the_next(attack):
    """A run killed between mounting its /out and unmounting it leaves the tmpfs: the next sandbox's housekeeping
    (collect_garbage) unmounts it, and leaves a live owner's alone."""
    import os
    import subprocess

    from readfirst.sandbox.docker_sandbox import SCRATCH_SOURCE, owner_id, unmount_stale_scratch
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    dead, live = attack.root / "dead", attack.root / "live"
    mine = owner_id().split(":", 1)[1].replace(":", "-")
    for where, owner in ((dead, "999999999-1"), (live, mine)):
        where.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", f"{SCRATCH_SOURCE}-{owner}", str(where)], check=True)
    try:
        unmount_stale_scratch()
        mounted = open("/proc/self/mountinfo").read()
        if f" {dead} " in mounted:
            attack.left_behind(f"a dead run's fixed-size mount at {dead}")
        assert f" {live} " in mounted
    finally:
        for where in (dead, live):
            subprocess.run(["umount", str(where)], capture_output=True)
