"""LLM mode against a real model: llama.cpp's llama-server (built from the pinned source in the sandbox) serving
Gemma 3 270M through the Anthropic Messages API, and the real `anthropic` client talking to it.

A model this small answers badly (no tool call, JSON that does not parse, patches that do not build): the point
is that a real model's answers, whatever they are, make a run that finishes, records what it spent, and
replays."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from local_model import gemma_gguf  # noqa: E402

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def local_server(tmp_path_factory, shared_cache):
    from readfirst.config import Paths
    from readfirst.graph.deps import compose_target
    from readfirst.targets import make_spec
    from readfirst.targets.llama_cpp.baseline import establish_baseline
    from readfirst.targets.llama_cpp.server import build_server, serve
    model = gemma_gguf(shared_cache)
    paths = Paths.resolve(str(tmp_path_factory.mktemp("server-home")), str(shared_cache))
    _, target = compose_target(paths, make_spec("llama.cpp", source="llama.cpp"), say=print)
    verified, _ = establish_baseline(target, model=model, say=print)
    bin_dir = build_server(target, verified.config, say=print)
    with serve(bin_dir, model, context=16384, log=paths.home / "server.log") as server:
        yield server


def readfirst(*args: str, home: Path, env: dict[str, str], timeout: float = 2400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "readfirst.graph", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "READFIRST_HOME": str(home), **env})


def test_the_server_answers_a_messages_request_through_the_real_client(local_server):
    import anthropic
    client = anthropic.Anthropic(api_key="local", base_url=local_server.url, max_retries=0)
    reply = client.messages.create(model="gemma-3-270m", max_tokens=32,
                                   messages=[{"role": "user", "content": "Say hello."}])
    assert reply.content and reply.usage.input_tokens > 0 and reply.usage.output_tokens > 0


def test_a_run_on_a_real_small_model_finishes_records_its_spend_and_replays(local_server, tmp_path, shared_cache,
                                                                             docker_client, base_image):
    from config_project import make_fork, make_project
    from readfirst.graph.ledger import Ledger
    source = make_project(tmp_path / "lz4", shared_cache / "sdists", bench="./bench/lz4bench 5")
    fork = make_fork(source, tmp_path / "lz4-fork")  # something to read: findings the planner can cite
    env = {"ANTHROPIC_BASE_URL": local_server.url, "ANTHROPIC_API_KEY": "local"}
    proc = readfirst("run", "--source", str(source), "--fork", str(fork),
                     "--llm-model", "gemma-3-270m", "--budget-experiments", "2",
                     "--budget-usd", "3", "--max-runs", "8", "--calibration-pairs", "0", "--llm-max-reply", "384",
                     "--json", home=tmp_path, env=env)
    assert proc.returncode == 0, (proc.stderr[-4000:], local_server.log.read_text()[-2000:])
    summary = json.loads(proc.stdout)
    run = tmp_path / "runs" / summary["run_id"]
    ledger = Ledger(run / "ledger.sqlite")
    rows = ledger.rows()
    ledger.close()
    assert summary["stop_reason"] and summary["experiments"] == len(rows) <= 2
    for r in rows:  # whatever the model wrote: each experiment has a decision and the reason for it
        assert r["decision"] in ("keep", "discard") and r["reason"], r
        assert r["decision"] == "discard" or (r["build"]["ok"] and r["checks"])
    # what the budget counted is what the trace recorded, call by call: real tokens from the real server
    meta = json.loads((run / "meta.json").read_text())
    total = meta["llm_budget"]["total"]
    calls = [json.loads(line) for line in (run / "trace.jsonl").read_text().splitlines()]
    calls = [c for c in calls if c.get("event") == "call" and c.get("kind") == "llm" and not c.get("error")]
    assert total["calls"] == len(calls) >= 1
    assert total["input_tokens"] == sum(c["input_tokens"] + (c.get("cache_read_tokens") or 0)
                                        + (c.get("cache_write_tokens") or 0) for c in calls) > 0
    assert total["output_tokens"] == sum(c["output_tokens"] for c in calls) > 0
    assert all(c["output_tokens"] <= 384 for c in calls)  # the reply cap reached the real server
    assert abs(total["cost_usd"] - sum(c["cost_usd"] for c in calls)) < 1e-6 and total["cost_usd"] > 0
    replayed = readfirst("trace", "replay", summary["run_id"], "--json", home=tmp_path, env=env)
    assert replayed.returncode == 0 and json.loads(replayed.stdout)["identical"], replayed.stdout[-3000:]
