"""llama.cpp's own `llama-server` as the agents' model: it speaks the Anthropic Messages API (`POST /v1/messages`),
so a local GGUF can stand where the API would, through the same client (ANTHROPIC_BASE_URL).

It is built from the pinned source like every other build, in the sandbox (the host needs no compiler), with
OpenMP off so that the binary needs nothing beyond the C++ runtime, and kept in the artifact cache. It runs on
this host, on loopback only: a sandbox has no network by design, and the server is built from the trusted
baseline, never from a candidate.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ...errors import ReadfirstError
from ...records import BuildConfig

SERVER_FLAGS = ("-DLLAMA_BUILD_SERVER=ON", "-DGGML_OPENMP=OFF", "-DLLAMA_BUILD_TESTS=OFF")


def server_config(config: BuildConfig) -> BuildConfig:
    """`config` (the baseline's: native, or the fallback that runs here) with the server on and OpenMP off."""
    replaced = {f.split("=")[0] for f in SERVER_FLAGS}
    flags = [f for f in config.cmake_flags if f.split("=")[0] not in replaced] + list(SERVER_FLAGS)
    return dataclasses.replace(config, cmake_flags=flags, note=f"{config.note}, llama-server", clean=False)


def build_server(target, config: BuildConfig, *, say=lambda _: None) -> Path:
    """The directory holding `llama-server` (and its shared libraries), built once per source and configuration."""
    config = server_config(config)
    commit = target.source.baseline
    bin_dir = target.artifact_dir(commit, config) / "bin"
    if (bin_dir / "llama-server").is_file():
        return bin_dir
    say(f"building llama-server from {commit[:10]} ({config.note}); minutes on a small machine, once")
    built = target.build_config(commit, config=config, targets=("llama-server",))
    if not built.ok or not (bin_dir / "llama-server").is_file():
        raise ReadfirstError(f"llama-server did not build ({built.stage}): {built.log_tail[-1500:]}")
    return bin_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class RunningServer:
    url: str            # what ANTHROPIC_BASE_URL takes
    process: subprocess.Popen
    log: Path


@contextmanager
def serve(bin_dir: Path, model: Path, *, port: int | None = None, context: int = 32768, threads: int = 2,
          log: Path | None = None, ready_timeout_s: float = 300.0,
          say=lambda _: None) -> Iterator[RunningServer]:
    """llama-server on 127.0.0.1 with `model`, ready (its /health answers) when this yields; stopped after.

    One slot with the whole `context`: the agents' prompts are long and come one at a time. (A request's
    max_tokens overrides the server's -n, so replies are capped on the client's side: --llm-max-reply.)"""
    model = Path(model)
    if not model.is_file():
        raise ReadfirstError(f"no model file at {model}")
    port = port or free_port()
    log = log or model.with_suffix(f".server-{port}.log")
    command = [str(bin_dir / "llama-server"), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
               "-c", str(context), "-np", "1", "-t", str(threads), "--jinja", "--no-webui"]
    env = {**os.environ, "LD_LIBRARY_PATH": str(bin_dir) + (":" + os.environ["LD_LIBRARY_PATH"]
                                                              if os.environ.get("LD_LIBRARY_PATH") else "")}
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log, ready_timeout_s)
        say(f"llama-server ({model.name}) answers at {url}")
        yield RunningServer(url, process, log)
    finally:
        _stop(process)


def _wait_ready(url: str, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ReadfirstError(f"llama-server exited ({process.returncode}) before it answered; the end of its "
                                 f"log ({log}):\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass  # not listening yet, or 503 while the model loads
        time.sleep(0.5)
    raise ReadfirstError(f"llama-server did not answer /health within {timeout_s:g} s; its log: {log}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"
