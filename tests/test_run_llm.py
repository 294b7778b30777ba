"""The loop in LLM mode, end to end: the real `anthropic` client against a local Messages API server that plays
the model, and the real sandbox and llama.cpp build.

The source is llama.cpp with a planted slowdown in rms_norm (the row sum is recomputed many times). The scripted
model proposes two hypotheses: one removes the slowdown (it must be kept: really faster, logits unchanged), one
breaks the build (it must be discarded after the repair attempts, not crash the run).
"""

from __future__ import annotations

import json
import os
import sqlite3
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from readfirst.agents.llm import message_json, text_block, tool_use_block
from readfirst.sources import prepare_source

sys.path.insert(0, str(Path(__file__).parent))
from fake_anthropic import FakeAnthropic  # noqa: E402

pytestmark = [pytest.mark.docker, pytest.mark.slow]

OPS = "ggml/src/ggml-cpu/ops.cpp"
SUM = ("                for (int64_t i00 = 0; i00 < ne00; i00++) {\n"
       "                    sum += (ggml_float)(x[i00] * x[i00]);\n"
       "                }\n")
# The planted slowdown: the same sum, recomputed; the barrier keeps the compiler from folding the repeats.
SLOW = ("                for (int rep = 0; rep < 300; rep++) {\n"
        "                    sum = 0.0;\n"
        "                    __asm__ volatile(\"\" ::: \"memory\");\n"
        + SUM.replace("                ", "                    ") +
        "                }\n")
FIX_TITLE = "Compute the rms_norm row sum once"
BREAK_TITLE = "Vectorize the rms_norm scale loop"


def slowed_llama_cpp(shared_cache: Path, dest: Path) -> Path:
    upstream = prepare_source("llama.cpp", shared_cache / "sources", shared_cache / "sdists")
    if dest.exists():
        return dest
    tmp = dest.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(upstream.path), "archive", "baseline"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
    ops = tmp / OPS
    text = ops.read_text()
    assert text.count(SUM) >= 1
    ops.write_text(text.replace(SUM, SLOW, 1))
    tmp.rename(dest)
    return dest


def responder(request: dict) -> dict:
    """Plays the model: the planner, then the implementer's tool conversation for each hypothesis."""
    system = json.dumps(request.get("system", ""))
    messages = request["messages"]
    first = json.dumps(messages[0]["content"])
    if "You plan performance experiments" in system:
        fid = re.search(r"- (F[0-9a-f]{10}):", first).group(1)
        plan = [{"title": FIX_TITLE, "rationale": "rms_norm recomputes its row sum; once is enough.",
                 "files": [OPS], "findings": [fid], "expected_gain": "large"},
                {"title": BREAK_TITLE, "rationale": "SIMD for the scale loop.", "files": [OPS], "findings": [fid],
                 "expected_gain": "small"}]
        return message_json(json.dumps(plan))
    if "You are the implementer" in system:
        answered = any(isinstance(m["content"], list) and any(b.get("type") == "tool_result" for b in m["content"])
                       for m in messages)
        if "does not build" in first or answered:
            return message_json("Done.")  # a repair that changes nothing ends the attempts
        task = messages[0]["content"]
        task = task if isinstance(task, str) else " ".join(b.get("text", "") for b in task)
        # the hypothesis's own title: the task's ledger names the other experiments too
        if re.search(r"title: (.*)", task).group(1) == FIX_TITLE:
            return message_json([text_block("Removing the repeats."),
                                 tool_use_block("replace_in_file", {"path": OPS, "old": SLOW, "new": SUM})])
        # Anchored on a line the first (kept) patch leaves alone: this runs on top of the new best.
        anchor = "static void ggml_compute_forward_rms_norm_f32("
        return message_json([tool_use_block("replace_in_file", {"path": OPS, "old": anchor,
                                                                "new": "this is not C++;\n" + anchor})])
    raise AssertionError(f"unexpected request: {system[:200]}")


def test_llm_run_keeps_the_real_win_and_discards_the_broken_build(tmp_path, shared_cache):
    source = slowed_llama_cpp(shared_cache, shared_cache / "test-sources" / "llama.cpp-slow-rms-norm")
    with FakeAnthropic([responder] * 40) as server:
        env = {**os.environ, "READFIRST_HOME": str(tmp_path), "ANTHROPIC_API_KEY": "sk-test",
               "ANTHROPIC_BASE_URL": server.url}
        proc = subprocess.run([sys.executable, "-m", "readfirst.graph", "run", "--source", str(source),
                               "--budget-experiments", "2", "-p", "16", "-n", "16", "--max-runs", "30",
                               "--calibration-pairs", "0", "--no-reading-list", "--no-backend-gaps", "--json"],
                              capture_output=True, text=True, env=env, timeout=5400)
        requests = server.count
        bodies = [r["body"] for r in server.requests]
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout)
    run_dir = tmp_path / "runs" / summary["run_id"]
    rows = [json.loads(r[0]) for r in sqlite3.connect(run_dir / "ledger.sqlite").execute(
        "SELECT row FROM experiments ORDER BY seq")]
    by_title = {r["title"]: r for r in rows}
    fix, broken = by_title[FIX_TITLE], by_title[BREAK_TITLE]
    assert fix["decision"] == "keep", fix["reason"]
    assert fix["ci_low"] > 0.01 and fix["citations"]
    assert broken["decision"] == "discard" and broken["build"]["stage"] == "compile", broken["reason"]
    assert "repair_1" in broken["llm"]  # the implementer was given the build log before the run gave up
    assert broken["llm"]["repair_1"]["failure"] == "build"
    # The implementer of the second experiment was told what the first did, and with which outcome.
    second = next(json.dumps(b["messages"][0]["content"]) for b in bodies
                  if f"title: {BREAK_TITLE}" in json.dumps(b["messages"][0]["content"]))
    assert f"{FIX_TITLE} (llm/" in second and ": keep +" in second and "Keep threshold" in second
    # The final stack was built again from nothing (its own artifact: no compiler cache, a fresh build directory)
    # and measured against the baseline's clean build.
    assert summary["confirmation"]["decision"] == "keep" and summary["confirmation"]["speedup"] > 0.01
    assert "clean builds" in summary["confirmation"]["builds"]
    base_commit = json.loads((run_dir / "best.json").read_text())["baseline"]["commit"]
    cleans = {p.name.split("-")[0] for p in (shared_cache / "artifacts").glob("*/*-clean") if (p / "bin").is_dir()}
    assert fix["candidate"]["commit"][:16] in cleans and base_commit[:16] in cleans, cleans
    assert summary["kept"] == [fix["id"]] and len(summary["best_patches"]) == 1
    assert requests >= 4
    # The kept patch stack applies to the baseline with `git am`, and undoes the slowdown.
    check = tmp_path / "check"
    shutil.copytree(source, check)
    for args in (["init", "-q"], ["add", "-A", "-f"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm",
                                                        "baseline"]):
        subprocess.run(["git", "-C", str(check), *args], check=True, capture_output=True)
    am = subprocess.run(["git", "-C", str(check), "-c", "user.name=t", "-c", "user.email=t@t", "am",
                         *summary["best_patches"]], capture_output=True, text=True)
    assert am.returncode == 0, am.stderr
    assert "rep < 300" not in (check / OPS).read_text()
