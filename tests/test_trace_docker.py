"""A real offline run of llama.cpp (Docker sandbox, real builds and benchmarks, cached artifacts) is recorded,
then replayed with zero sandbox commands: every build, test, logits check and benchmark comes from the trace."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from readfirst.graph.trace_read import Trace
from readfirst.graph.trace_replay import replay

pytestmark = [pytest.mark.docker, pytest.mark.slow]

FAST = ["--offline", "-p", "16", "-n", "8", "--max-runs", "8", "--calibration-pairs", "0", "--budget-experiments", "1"]


def test_a_recorded_llama_cpp_run_replays_without_one_sandbox_command(tmp_path, docker_client, base_image):
    env = {**os.environ, "READFIRST_HOME": str(tmp_path)}
    env.pop("ANTHROPIC_API_KEY", None)
    proc = subprocess.run([sys.executable, "-m", "readfirst.graph", "run", *FAST, "--json"], capture_output=True,
                          text=True, timeout=3600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = json.loads(proc.stdout)["run_id"]
    directory = tmp_path / "runs" / run_id
    trace = Trace(directory)
    recorded_commands = trace.summary()["sandbox_commands"]
    assert recorded_commands > 0 and trace.ordered()[0].node == "profile"
    assert any(c["kind"] == "sandbox" and c.get("log_path") for s in trace.ordered() for c in s.calls)

    from docker.models.containers import ContainerCollection
    created: list = []
    original = ContainerCollection.create

    def counting_create(self, *args, **kwargs):  # any container started during replay is a sandbox command
        created.append(args)
        return original(self, *args, **kwargs)

    ContainerCollection.create = counting_create
    try:
        report = replay(directory)
    finally:
        ContainerCollection.create = original
    assert created == []
    assert report.identical, report.divergence
    assert report.served["target"] > 0 and [s["step"] for s in report.steps] == sorted(trace.steps)
