"""Run commands in throw-away Docker containers, safely.

Every container: no network, an unprivileged user, all capabilities dropped, no-new-privileges, memory / CPU /
pids limits, a bound on what it writes to each writable mount, a read-only root with scratch on tmpfs, only the
mounts it is given (each checked to lie under an allowed root), no host environment. A timeout kills the
container on the sandbox's own clock (docker-py's `wait(timeout=)` only bounds an HTTP read, docker-py #2964), and
inside the container `timeout -s KILL` bounds the command again, so the work stops even when the host process
dies. Containers are labelled with their owner; a new sandbox removes those whose owner is gone.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from ..errors import SandboxError
from .host_load import Sampler, container_cpu_counter
from .image import ENV_PATH, SANDBOX_UID
from .readback import open_inside
from ..records import CommandResult, Mount

LABEL = "io.readfirst.sandbox"
OWNER_LABEL = "io.readfirst.owner"
# One value per command: a signal that interrupts the create call itself (the engine made the container, the
# answer never came back) leaves no handle to remove it by, only this label.
COMMAND_LABEL = "io.readfirst.command"

# Host paths never mounted, nor anything under them (the Docker socket, system trees).
_SYSTEM = tuple(map(Path, ("/var/run/docker.sock", "/run/docker.sock", "/var/lib/docker", "/etc", "/proc", "/sys",
                           "/dev", "/boot", "/usr", "/bin", "/sbin", "/lib")))
# Never mounted themselves, nor anything that contains them (a host's home); a data directory below is fine.
_HOMES = tuple(map(Path, ("/root", "/home", os.path.expanduser("~"))))


@dataclass(frozen=True)
class Limits:
    memory: str = "8g"
    cpus: float = 2.0
    pids: int = 1024
    tmpfs_size: str = "4g"
    output_tail_bytes: int = 64 * 1024    # what the result carries: the end of the log is what matters
    log_max_bytes: int = 64 * 1024 * 1024  # what the log file on disk keeps at most
    # What a command may add to each writable mount (bytes allocated on the host); /out holds only results.
    disk_bytes: int = 16 * 1024 ** 3
    disk_bytes_at: tuple[tuple[str, int], ...] = (("/out", 1024 ** 3),)
    # Writable mounts that, when their host directory is empty, get a file system of their limit's size (a tmpfs
    # the kernel bounds), copied back to the host directory after the command: /out holds only results.
    fixed_size_at: tuple[str, ...] = ("/out",)
    # What the whole stream may give back as collected lines (run's `collect`): past this, the result says so.
    collect_max_lines: int = 2000
    collect_max_line_bytes: int = 4096

    def disk_limit(self, target: str) -> int:
        return dict(self.disk_bytes_at).get(target, self.disk_bytes)


def allocated_bytes(root: Path) -> int:
    """The disk a directory tree takes on the host (blocks, so sparse files count what they use), links not
    followed; files that vanish while it is walked are skipped."""
    total = 0
    stack = [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except OSError:
            continue
    return total


class _DiskWatch:
    """Bounds what a container writes to its writable mounts. This engine (Docker 20.10, overlay2 on ext4) has no
    per-mount quota (--storage-opt size needs xfs with pquota, bind mounts have none), so a mount that could not be
    given a file system of its own size (ScratchMounts) has its growth measured on the sandbox's own clock, and the
    container killed at the limit. Growth is what the tree takes on the disk plus what the container's processes
    hold open in files already unlinked from it: a file opened, deleted and written on is in no directory any
    more (400 MB reached the host past a 32 MiB limit that way). What passes the limit is what the disk takes in
    between one look and the kill, so the watch looks every 20 ms while its walk is cheap (5x the walk's own time
    for a big tree, so it never loads the machine) and kills the container's init itself when it can, without the
    engine's round trip. A fixed-size mount is only watched for being full (the kernel stops it there)."""

    MIN_INTERVAL = 0.02

    def __init__(self, mounts: Sequence[tuple[Path, str, int]], kill: Callable[[], None],
                 fixed: Mapping[str, int] = {}):
        self._mounts = [(host, target, limit, allocated_bytes(host)) for host, target, limit in mounts
                        if target not in fixed]
        self._fixed = [(host, target, limit) for host, target, limit in mounts if target in fixed]
        self._kill = kill
        self._stop = threading.Event()
        self.init_pid: int | None = None  # set once the container runs: its processes hold the unlinked files
        self.exceeded = ""
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def check(self) -> str:
        unlinked = _unlinked_open_bytes(self.init_pid, [(target, host) for host, target, _, _ in self._mounts]) \
            if self.init_pid and self._mounts else {}
        for host, target, limit, before in self._mounts:
            grown = allocated_bytes(host) - before + unlinked.get(target, 0)
            if grown > limit:
                return f"{target} (wrote {grown >> 20} MiB, the limit is {limit >> 20} MiB)"
        for host, target, limit in self._fixed:
            if _is_full(host):
                return f"{target} (filled its {limit >> 20} MiB)"
        return ""

    def _watch(self) -> None:
        interval = self.MIN_INTERVAL
        while not self._stop.wait(interval):
            t0 = time.monotonic()
            exceeded = self.check()
            if exceeded:
                self.exceeded = exceeded
                self._kill()
                return
            interval = max(self.MIN_INTERVAL, 5 * (time.monotonic() - t0))  # a big tree's walk: not a load

    def start(self) -> None:
        if self._mounts or self._fixed:
            self.thread.start()

    def stop(self) -> str:
        """Stops watching; the reason the limit was passed (looked at once more: a last burst counts), or ""."""
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=30)
        return self.exceeded or (self.check() if self._mounts or self._fixed else "")


def _is_full(path: Path) -> bool:
    try:
        return os.statvfs(path).f_bavail == 0
    except OSError:
        return False


def _namespace_pids(init_pid: int) -> list[int]:
    """The processes in the pid namespace of `init_pid` (a container's), as this host numbers them."""
    try:
        ns = os.readlink(f"/proc/{init_pid}/ns/pid")
    except OSError:
        return []
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.readlink(f"/proc/{name}/ns/pid") == ns:
                    pids.append(int(name))
            except OSError:
                continue
    return pids


def _unlinked_open_bytes(init_pid: int, mounts: Sequence[tuple[str, Path]]) -> dict[str, int]:
    """Per mount target: the disk taken by files the container's processes hold open (or mapped) after unlinking
    them from under that mount, each file counted once. The kernel names such a file by the path it had in the
    container, with " (deleted)" after it."""
    seen: set[tuple[int, int]] = set()
    held: dict[str, int] = {}
    for pid in _namespace_pids(init_pid):
        for folder in ("fd", "map_files"):  # map_files: a mapping outlives its descriptor (readable by root)
            try:
                names = os.listdir(f"/proc/{pid}/{folder}")
            except OSError:
                continue
            for name in names:
                link = f"/proc/{pid}/{folder}/{name}"
                try:
                    where = os.readlink(link)
                    if not where.endswith(" (deleted)"):
                        continue
                    st = os.stat(link)
                except OSError:
                    continue
                if st.st_nlink or not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                path = where[: -len(" (deleted)")]
                for target, host in mounts:
                    if any(path == root or path.startswith(root.rstrip("/") + "/") for root in (target, str(host))):
                        held[target] = held.get(target, 0) + st.st_blocks * 512
                        break
    return held


def _process_start(pid: int) -> str | None:
    try:
        # Field 22 of /proc/PID/stat is the start time: with the pid it identifies a process across pid reuse.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner_id(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_process_start(pid)}"


def owner_alive(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid, _, start = rest.partition(":")
    if host != socket.gethostname():
        return True  # another machine's container: not ours to judge
    return pid.isdigit() and _process_start(int(pid)) == start


class _LineCollector:
    """The lines of a whole output stream that hold `marker` (the bench's METRIC lines), in bounded memory, as the
    stream goes: the tail alone can be pushed past by anything printed after a line. Lines are split at newlines;
    a reader may split them further (str.splitlines), so a line is kept whole wherever the marker falls in it.
    `capped`: more such lines than `max_lines`, or one longer than `max_line`: what they say cannot be told."""

    def __init__(self, markers: str | tuple[str, ...], max_lines: int, max_line: int):
        self.markers = tuple(m.encode() for m in ((markers,) if isinstance(markers, str) else markers))
        self._keep = max(len(m) for m in self.markers) - 1
        self.max_lines, self.max_line = max_lines, max_line
        self.lines: list[str] = []
        self.capped = False
        self._partial = bytearray()
        self._overlong = False

    def feed(self, chunk: bytes) -> None:
        pieces = chunk.split(b"\n")
        for i, piece in enumerate(pieces):
            self._add(piece)
            if i + 1 < len(pieces):
                self.end_line()

    def _add(self, piece: bytes) -> None:
        self._partial += piece
        if len(self._partial) > self.max_line:
            if self._marked():  # seen before the trim below drops it, on every overflow of the line
                self.capped = True
            self._overlong = True
            # what is kept of a line too long to read: enough to see a marker that starts in it and ends later
            del self._partial[: len(self._partial) - self._keep]

    def _marked(self) -> bool:
        return any(m in self._partial for m in self.markers)

    def end_line(self) -> None:
        if self._marked():
            if self._overlong or len(self.lines) >= self.max_lines:
                self.capped = True
            else:
                self.lines.append(bytes(self._partial).decode("utf-8", errors="replace"))
        self._partial.clear()
        self._overlong = False


class _OutputCollector:
    """Reads a container's output stream: keeps the tail in memory, at most log_max_bytes on disk, and the lines
    a caller asked to collect from the whole of it."""

    def __init__(self, stream, limits: Limits, log_path: Path | None, lines: _LineCollector | None = None):
        self._stream = stream
        self._limits = limits
        self._log = open(log_path, "wb") if log_path else None
        self.lines = lines
        self.tail = bytearray()
        self.total = 0
        self.thread = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        try:
            for chunk in self._stream:
                if self._log is not None and self.total < self._limits.log_max_bytes:
                    self._log.write(chunk[: self._limits.log_max_bytes - self.total])
                self.total += len(chunk)
                if self.lines is not None:
                    self.lines.feed(chunk)
                self.tail += chunk
                if len(self.tail) > 2 * self._limits.output_tail_bytes:
                    del self.tail[: len(self.tail) - self._limits.output_tail_bytes]
        except (requests.exceptions.RequestException, OSError, ValueError):
            pass  # the stream ends when the container is killed and removed
        finally:
            if self.lines is not None:
                self.lines.end_line()
            if self._log is not None:
                self._log.close()

    def text(self) -> str:
        data = bytes(self.tail[-self._limits.output_tail_bytes:])
        return data.decode("utf-8", errors="replace")


SCRATCH_SOURCE = "readfirst-scratch"  # the device name of a fixed-size mount: `<this>-<owner pid>-<its start>`


class _FixedSizeMounts:
    """Writable mounts on file systems of their limit's size: a tmpfs mounted on the (empty) host directory before
    the container starts, so the kernel refuses writes past the limit (ENOSPC), however they are made (an unlinked
    file written on, a sparse one, a flood). After the container, what it left is copied to the host directory
    (regular files, directories, symlinks and FIFOs as what they are, never followed; at most the mount's size in
    all) and the tmpfs unmounted. Needs root with CAP_SYS_ADMIN in the engine's mount namespace; where mounting
    is refused, the mount stays a plain directory and the disk watch bounds it. A process that dies between
    mount and unmount leaves a mount that collect_garbage unmounts (its device names its owner)."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.mounted: dict[str, tuple[Path, int]] = {}  # target -> (host directory, size)

    def mount(self, host: Path, target: str) -> None:
        if target not in self.limits.fixed_size_at or os.geteuid() != 0 or any(host.iterdir()):
            return
        size = self.limits.disk_limit(target)
        owner = owner_id().split(":", 1)[1].replace(":", "-")
        opts = f"size={size},nr_inodes=16384,mode=0700,uid={SANDBOX_UID},gid={SANDBOX_UID},nosuid,nodev"
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, f"{SCRATCH_SOURCE}-{owner}", str(host)],
                              capture_output=True)
        if done.returncode == 0:
            self.mounted[target] = (host, size)

    def sizes(self) -> dict[str, int]:
        return {target: size for target, (_, size) in self.mounted.items()}

    def release(self) -> None:
        """Copy each mount's files to its host directory and unmount it; also on error paths (a finally). What
        cannot be copied is left out: a reader finds it missing, never something else."""
        for target, (host, size) in list(self.mounted.items()):
            del self.mounted[target]
            kept = host.parent / f".{host.name}.{uuid.uuid4().hex[:8]}"
            kept.mkdir()
            try:
                _copy_tree(host, kept, size)
            except (OSError, ValueError):
                pass
            finally:
                _unmount(host)
            try:
                os.rmdir(host)
                os.rename(kept, host)
            except OSError:
                shutil.rmtree(kept, ignore_errors=True)


def _copy_tree(src: Path, dest: Path, budget: int) -> None:
    """`src`'s entries into `dest`, links and FIFOs made again, never followed; regular files while `budget` (bytes
    of apparent size: a sparse file counts its whole length) lasts, the rest left out. Files are read as results
    are (readback.open_inside: no link followed at any step from `src`)."""
    stack = [("", dest)]
    while stack:
        rel, there = stack.pop()
        with os.scandir(src / rel) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                name, to = f"{rel}/{entry.name}" if rel else entry.name, there / entry.name
                if stat.S_ISDIR(st.st_mode):
                    to.mkdir(mode=0o755)
                    stack.append((name, to))
                elif stat.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(entry.path), to)
                elif stat.S_ISFIFO(st.st_mode):
                    os.mkfifo(to)
                elif stat.S_ISREG(st.st_mode) and st.st_size <= budget:
                    budget -= st.st_size
                    _copy_file(src, name, to, st)


def _copy_file(src: Path, relative: str, to: Path, st: os.stat_result) -> None:
    with open_inside(src, relative) as f, open(to, "xb") as g:
        left = st.st_size
        while left > 0:
            block = f.read(min(left, 1 << 20))
            if not block:
                break
            g.write(block)
            left -= len(block)
    os.chmod(to, stat.S_IMODE(st.st_mode) & 0o755)


def _unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)  # still busy: detached now, freed later


def unmount_stale_scratch(*, everything: bool = False, keep_owner: str | None = None) -> int:
    """Unmount the fixed-size mounts of this machine whose owner process is gone (all but keep_owner's with
    everything=True): what a crash between mount and unmount left."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return 0
    keep = keep_owner.split(":", 1)[1].replace(":", "-") if keep_owner else None
    removed = 0
    for line in lines:
        fields = line.split(" - ", 1)
        if len(fields) != 2 or len(fields[1].split()) < 2:
            continue
        fstype, source = fields[1].split()[:2]
        if fstype != "tmpfs" or not source.startswith(SCRATCH_SOURCE + "-"):
            continue
        owner = source[len(SCRATCH_SOURCE) + 1:]
        pid, _, start = owner.partition("-")
        alive = pid.isdigit() and _process_start(int(pid)) == start
        if owner == keep or (alive and not everything):
            continue
        where = fields[0].split()[4].encode().decode("unicode_escape")  # mountinfo escapes spaces as \040
        _unmount(Path(where))
        removed += 1
    return removed


class DockerSandbox:
    """The local implementation of the Sandbox seam."""

    def __init__(self, client: docker.DockerClient, image: str, *, allowed_roots: Sequence[Path],
                 limits: Limits = Limits(), audit: Callable[[dict[str, Any]], None] | None = None):
        self.client = client
        self.image = image
        self.allowed_roots = [Path(r).resolve() for r in allowed_roots]
        self.limits = limits
        self.audit = audit
        self.owner = owner_id()
        self.user = f"{SANDBOX_UID}:{SANDBOX_UID}" if os.geteuid() == 0 else f"{os.getuid()}:{os.getgid()}"

    # -- mounts -------------------------------------------------------------------------------------------
    def _check_mount(self, mount: Mount) -> str:
        host = Path(mount.host).resolve()  # resolve: a symlinked mount source must not lead elsewhere
        for bad in _SYSTEM:
            if host == bad or bad in host.parents or host in bad.parents:
                raise SandboxError(f"refusing to mount {host}: host system paths are never mounted")
        for home in _HOMES:
            if host == home or host in home.parents:
                raise SandboxError(f"refusing to mount {host}: a home directory is never mounted")
        if not self._under_allowed(host):
            raise SandboxError(f"refusing to mount {host}: not under the sandbox's data directories")
        if not host.exists():
            raise SandboxError(f"mount source {host} does not exist")
        if not mount.read_only and os.geteuid() == 0 and host.stat().st_uid != SANDBOX_UID:
            # The sandbox user must be able to write its workspace; files it creates are its own already.
            for p in [host, *host.rglob("*")]:
                os.lchown(p, SANDBOX_UID, SANDBOX_UID)
        return str(host)

    def _under_allowed(self, host: Path) -> bool:
        return any(host == r or r in host.parents for r in self.allowed_roots)

    # -- running ------------------------------------------------------------------------------------------
    def run(self, command: str, *, mounts: Sequence[Mount] = (), workdir: str = "/tmp", timeout_s: float = 600,
            env: Mapping[str, str] | None = None, log_path: Path | None = None,
            cpuset: str | None = None, collect: str | tuple[str, ...] | None = None) -> CommandResult:
        """Run `command` in a fresh container; `cpuset` ("2,3") pins it to those CPUs (benchmarks), with no CPU
        quota beside (the cpuset bounds it; a quota on top throttled llama-bench by 15%). `collect`: the lines
        of the whole output that hold this string come back in the result's `lines` (METRIC lines: the tail
        alone can be pushed past)."""
        volumes = {self._check_mount(m): {"bind": m.target, "mode": "ro" if m.read_only else "rw"} for m in mounts}
        environment = {"PATH": ENV_PATH, "HOME": "/tmp", "LC_ALL": "C.UTF-8", **(env or {})}
        # The inner timeout is the backstop when this process dies; our own clock normally fires first.
        inner = int(timeout_s) + 30
        argv = ["timeout", "-s", "KILL", str(inner), "/bin/sh", "-c", command]
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
        container = None
        command_id = uuid.uuid4().hex
        fixed = _FixedSizeMounts(self.limits)
        try:
            for host, v in volumes.items():
                if v["mode"] == "rw":
                    fixed.mount(Path(host), v["bind"])
            cpu = {"cpuset_cpus": cpuset} if cpuset else {"nano_cpus": int(self.limits.cpus * 1e9)}
            container = self.client.containers.create(
                self.image, argv, user=self.user, working_dir=workdir, environment=environment,
                network_mode="none", network_disabled=True, cap_drop=["ALL"],
                security_opt=["no-new-privileges:true"], read_only=True, privileged=False,
                tmpfs={"/tmp": f"rw,exec,nosuid,size={self.limits.tmpfs_size}"},
                mem_limit=self.limits.memory, memswap_limit=self.limits.memory,
                pids_limit=self.limits.pids, init=True, **cpu,
                volumes=volumes, labels={LABEL: "1", OWNER_LABEL: self.owner, COMMAND_LABEL: command_id},
                # Output is streamed through attach; the engine's own copy is kept small so a flood cannot fill
                # its disk ("none" is not registered on every engine, so json-file with a tight cap).
                log_config=docker.types.LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
                ulimits=[docker.types.Ulimit(name="core", soft=0, hard=0)],
            )
            return self._attend(container, command, timeout_s, log_path, volumes, fixed, collect)
        except docker.errors.ImageNotFound as e:
            raise SandboxError(f"the sandbox image {self.image} is missing: run `readfirst sandbox image`") from e
        except docker.errors.APIError as e:
            raise SandboxError(f"the Docker engine refused to run the sandbox: {e.explanation or e}") from e
        finally:
            if container is not None:
                _remove(container)
            else:  # interrupted (a signal, an engine error) before create answered: the label finds it
                self._remove_labelled(command_id)
            fixed.release()  # after the container is gone: nothing writes while its files are copied

    def _attend(self, container, command: str, timeout_s: float, log_path: Path | None, volumes: Mapping[str, Any],
                fixed: _FixedSizeMounts, collect: str | tuple[str, ...] | None) -> CommandResult:
        """Start the created container, watch its disk and clock, and gather its result."""
        stream = container.attach(stdout=True, stderr=True, stream=True, logs=True)
        lines = _LineCollector(collect, self.limits.collect_max_lines, self.limits.collect_max_line_bytes) \
            if collect else None
        collector = _OutputCollector(stream, self.limits, log_path, lines)
        collector.thread.start()
        init: list = [None]
        watch = _DiskWatch([(Path(h), v["bind"], self.limits.disk_limit(v["bind"]))
                            for h, v in volumes.items() if v["mode"] == "rw"], lambda: _kill(container, init[0]),
                           fixed.sizes())
        start = time.monotonic()
        container.start()
        watch.init_pid = _container_pid(container)  # reloads the container: its attrs are current for the audit
        load = _load_sampler(container, watch.init_pid)
        watch.start()
        init[0] = _init_process(container, watch.init_pid)
        if self.audit is not None:
            self.audit(container.attrs)
        exit_code, timed_out = self._wait(container, start + timeout_s)
        duration = time.monotonic() - start
        host_load = load.end() if load is not None else None
        disk_exceeded = watch.stop()
        collector.thread.join(timeout=10)
        tail = collector.text()
        if disk_exceeded:
            tail += f"\n[readfirst: killed: it wrote past the disk limit of {disk_exceeded}]\n"
        return CommandResult(command=command, exit_code=exit_code, duration_s=round(duration, 3),
                             output_tail=tail, output_bytes=collector.total,
                             truncated=collector.total > self.limits.output_tail_bytes, timed_out=timed_out,
                             log_path=str(log_path) if log_path else None,
                             oom_killed=not timed_out and _oom_killed(container), disk_exceeded=disk_exceeded,
                             lines=list(lines.lines) if lines else [],
                             lines_capped=bool(lines and (lines.capped or collector.thread.is_alive())),
                             foreign_share=host_load.foreign_share if host_load is not None else None)

    def _remove_labelled(self, command_id: str, *, looks: int = 3, apart_s: float = 0.3) -> None:
        """Remove the container a create call made when its answer never came back. The engine may still be making
        it when the call is interrupted, so it is looked for a few times; nothing found is the common case (the
        call never reached the engine)."""
        for look in range(looks):
            try:
                made = self.client.containers.list(all=True, ignore_removed=True,
                                                   filters={"label": f"{COMMAND_LABEL}={command_id}"})
            except (docker.errors.DockerException, requests.exceptions.RequestException):
                return  # no engine to ask: the next sandbox's housekeeping removes what a dead owner left
            for container in made:
                _remove(container)
            if made:
                return
            if look + 1 < looks:
                time.sleep(apart_s)

    def _wait(self, container, deadline: float) -> tuple[int, bool]:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                try:
                    container.kill()  # SIGKILL to the init process: the whole pid namespace goes with it
                except docker.errors.APIError:
                    pass
                try:
                    container.wait(timeout=30)
                except (requests.exceptions.RequestException, docker.errors.APIError):
                    pass
                return 137, True
            try:
                status = container.wait(timeout=min(remaining, 5.0) + 0.01)
                return int(status.get("StatusCode", -1)), False
            except requests.exceptions.ConnectionError:
                continue  # the HTTP read timed out; the container is still running
            except requests.exceptions.ReadTimeout:
                continue

    # -- housekeeping ---------------------------------------------------------------------------------------
    def gc(self, *, everything: bool = False) -> int:
        """Remove sandbox containers whose owner process is gone (all of them with everything=True)."""
        return collect_garbage(self.client, everything=everything, keep_owner=self.owner)


# What a death by signal usually means, for the signals a crashing build or benchmark dies of.
_SIGNAL_MEANING = {"SIGILL": "an instruction this CPU does not execute", "SIGSEGV": "a bad memory access",
                   "SIGBUS": "a bad memory access", "SIGFPE": "an arithmetic fault", "SIGABRT": "it aborted itself",
                   "SIGKILL": "killed from outside"}


def describe_exit(code: int) -> str:
    """`exit 132 (SIGILL: an instruction this CPU does not execute)`: a shell reports a death by signal N as
    128 + N, which alone reads as just a number."""
    if 128 < code < 128 + 65:
        try:
            name = signal.Signals(code - 128).name
        except ValueError:
            return f"exit {code}"
        meaning = _SIGNAL_MEANING.get(name)
        return f"exit {code} ({name}{': ' + meaning if meaning else ''})"
    return f"exit {code}"


def _container_pid(container) -> int | None:
    """The container's init pid as this host numbers it (the engine's inspect), or None."""
    try:
        container.reload()
        pid = int(container.attrs.get("State", {}).get("Pid") or 0)
    except (docker.errors.APIError, ValueError):
        return None
    return pid if pid > 0 else None


def _init_process(container, pid: int | None) -> tuple[int, str] | None:
    """The container's init process (pid and start time), when this process can signal it: the engine's own pid
    namespace and root. None otherwise (a remote engine, a rootless one)."""
    if os.geteuid() != 0 or pid is None:
        return None
    start = _process_start(pid)
    return (pid, start) if start else None


def _load_sampler(container, pid: int | None) -> Sampler | None:
    """Other processes' CPU time on the container's CPUs from here to its end (host_load), when its cgroup is on
    this host. Its attrs are current (just reloaded): they say which CPUs it is pinned to."""
    own = container_cpu_counter(container.id, pid)
    cpuset = (container.attrs.get("HostConfig") or {}).get("CpusetCpus") or None
    return Sampler(cpuset, own) if own is not None else None


def _kill(container, init: tuple[int, str] | None = None) -> None:
    """SIGKILL to the container's init: directly when its pid is known and still the same process (no round trip
    through the engine; the pid namespace dies with its init), through the engine's API as well either way."""
    if init is not None and _process_start(init[0]) == init[1]:
        try:
            os.kill(init[0], signal.SIGKILL)
        except OSError:
            pass
    try:
        container.kill()
    except docker.errors.APIError:
        pass  # it ended on its own


def _oom_killed(container) -> bool:
    """Whether the engine killed the container for its memory limit (an exit 137 alone could be anything)."""
    try:
        container.reload()
        return bool(container.attrs.get("State", {}).get("OOMKilled"))
    except docker.errors.APIError:
        return False


def collect_garbage(client: docker.DockerClient, *, everything: bool = False, keep_owner: str | None = None) -> int:
    # ignore_removed: the list inspects each container it names, and another process's housekeeping (every Ray
    # node's actor runs this before its experiment) may remove one in between: a 404 there is not an error.
    removed = 0
    unmount_stale_scratch(everything=everything, keep_owner=keep_owner)
    for c in client.containers.list(all=True, filters={"label": LABEL}, ignore_removed=True):
        owner = c.labels.get(OWNER_LABEL, "")
        if owner == keep_owner and not everything:
            continue
        if everything or not owner_alive(owner):
            _remove(c)
            removed += 1
    return removed


def _remove(container) -> None:
    try:
        container.remove(force=True, v=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as e:
        if "already in progress" not in str(e):
            raise
