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
import signal
import socket
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
from .image import ENV_PATH, SANDBOX_UID
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
    per-mount quota (--storage-opt size needs xfs with pquota, bind mounts have none, and a tmpfs /out would
    vanish before its results are read), so the sandbox measures each writable mount's growth on its own clock
    and kills the container at the limit. What passes the limit is what the disk takes in between one look and
    the kill, so the watch looks every 20 ms while its walk is cheap (5x the walk's own time for a big tree, so it
    never loads the machine) and kills the container's init itself when it can, without the engine's round trip.
    A 0.25 s look through the engine let a 1 MiB-block dd put 451 MiB past a 32 MiB limit on a fast disk."""

    MIN_INTERVAL = 0.02

    def __init__(self, mounts: Sequence[tuple[Path, str, int]], kill: Callable[[], None]):
        self._mounts = [(host, target, limit, allocated_bytes(host)) for host, target, limit in mounts]
        self._kill = kill
        self._stop = threading.Event()
        self.exceeded = ""
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def check(self) -> str:
        for host, target, limit, before in self._mounts:
            grown = allocated_bytes(host) - before
            if grown > limit:
                return f"{target} (wrote {grown >> 20} MiB, the limit is {limit >> 20} MiB)"
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
        if self._mounts:
            self.thread.start()

    def stop(self) -> str:
        """Stops watching; the reason the limit was passed (looked at once more: a last burst counts), or ""."""
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=30)
        return self.exceeded or (self.check() if self._mounts else "")


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


class _OutputCollector:
    """Reads a container's output stream: keeps the tail in memory and at most log_max_bytes on disk."""

    def __init__(self, stream, limits: Limits, log_path: Path | None):
        self._stream = stream
        self._limits = limits
        self._log = open(log_path, "wb") if log_path else None
        self.tail = bytearray()
        self.total = 0
        self.thread = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        try:
            for chunk in self._stream:
                if self._log is not None and self.total < self._limits.log_max_bytes:
                    self._log.write(chunk[: self._limits.log_max_bytes - self.total])
                self.total += len(chunk)
                self.tail += chunk
                if len(self.tail) > 2 * self._limits.output_tail_bytes:
                    del self.tail[: len(self.tail) - self._limits.output_tail_bytes]
        except (requests.exceptions.RequestException, OSError, ValueError):
            pass  # the stream ends when the container is killed and removed
        finally:
            if self._log is not None:
                self._log.close()

    def text(self) -> str:
        data = bytes(self.tail[-self._limits.output_tail_bytes:])
        return data.decode("utf-8", errors="replace")


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
            cpuset: str | None = None) -> CommandResult:
        """Run `command` in a fresh container; `cpuset` ("2,3") pins it to those CPUs (benchmarks)."""
        volumes = {self._check_mount(m): {"bind": m.target, "mode": "ro" if m.read_only else "rw"} for m in mounts}
        environment = {"PATH": ENV_PATH, "HOME": "/tmp", "LC_ALL": "C.UTF-8", **(env or {})}
        # The inner timeout is the backstop when this process dies; our own clock normally fires first.
        inner = int(timeout_s) + 30
        argv = ["timeout", "-s", "KILL", str(inner), "/bin/sh", "-c", command]
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
        container = None
        command_id = uuid.uuid4().hex
        start = time.monotonic()
        try:
            container = self.client.containers.create(
                self.image, argv, user=self.user, working_dir=workdir, environment=environment,
                network_mode="none", network_disabled=True, cap_drop=["ALL"],
                security_opt=["no-new-privileges:true"], read_only=True, privileged=False,
                tmpfs={"/tmp": f"rw,exec,nosuid,size={self.limits.tmpfs_size}"},
                mem_limit=self.limits.memory, memswap_limit=self.limits.memory,
                nano_cpus=int(self.limits.cpus * 1e9), pids_limit=self.limits.pids, init=True,
                **({"cpuset_cpus": cpuset} if cpuset else {}),
                volumes=volumes, labels={LABEL: "1", OWNER_LABEL: self.owner, COMMAND_LABEL: command_id},
                # Output is streamed through attach; the engine's own copy is kept small so a flood cannot fill
                # its disk ("none" is not registered on every engine, so json-file with a tight cap).
                log_config=docker.types.LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
                ulimits=[docker.types.Ulimit(name="core", soft=0, hard=0)],
            )
            stream = container.attach(stdout=True, stderr=True, stream=True, logs=True)
            collector = _OutputCollector(stream, self.limits, log_path)
            collector.thread.start()
            start = time.monotonic()
            init: list = [None]
            watch = _DiskWatch([(Path(h), v["bind"], self.limits.disk_limit(v["bind"]))
                                for h, v in volumes.items() if v["mode"] == "rw"], lambda: _kill(container, init[0]))
            container.start()
            watch.start()
            init[0] = _init_process(container)  # reloads the container: its attrs are current for the audit
            if self.audit is not None:
                if init[0] is None:
                    container.reload()
                self.audit(container.attrs)
            exit_code, timed_out = self._wait(container, start + timeout_s)
            duration = time.monotonic() - start
            disk_exceeded = watch.stop()
            collector.thread.join(timeout=10)
            tail = collector.text()
            if disk_exceeded:
                tail += f"\n[readfirst: killed: it wrote past the disk limit of {disk_exceeded}]\n"
            return CommandResult(command=command, exit_code=exit_code, duration_s=round(duration, 3),
                                 output_tail=tail, output_bytes=collector.total,
                                 truncated=collector.total > self.limits.output_tail_bytes, timed_out=timed_out,
                                 log_path=str(log_path) if log_path else None,
                                 oom_killed=not timed_out and _oom_killed(container), disk_exceeded=disk_exceeded)
        except docker.errors.ImageNotFound as e:
            raise SandboxError(f"the sandbox image {self.image} is missing: run `readfirst sandbox image`") from e
        except docker.errors.APIError as e:
            raise SandboxError(f"the Docker engine refused to run the sandbox: {e.explanation or e}") from e
        finally:
            if container is not None:
                _remove(container)
            else:  # interrupted (a signal, an engine error) before create answered: the label finds it
                self._remove_labelled(command_id)

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


def _init_process(container) -> tuple[int, str] | None:
    """The container's init process as this host sees it (pid and start time), when this process can signal it:
    the engine's own pid namespace and root. None otherwise (a remote engine, a rootless one)."""
    if os.geteuid() != 0:
        return None
    try:
        container.reload()
        pid = int(container.attrs.get("State", {}).get("Pid") or 0)
    except (docker.errors.APIError, ValueError):
        return None
    start = _process_start(pid) if pid > 0 else None
    return (pid, start) if start else None


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
