"""Issue 31: the roles speak of the target in its own words, and pay for a chunk's summary once.

Every prompt goes through the real `anthropic` client to a local Messages server (tests/fake_anthropic.py), which
records what each role was sent. The target is a tiny Python project with a readfirst.toml, and llama.cpp's own
target for the contrast.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from readfirst.agents import competitor_analyst, researcher
from readfirst.agents.hypothesize_llm import plan_hypotheses
from readfirst.agents.implementer import worktree_implementer
from readfirst.agents.llm import AnthropicLLM, Budget, make_client, message_json
from readfirst.agents.summaries import SummaryCache
from readfirst.targets.config_file import load_config
from readfirst.targets.config_target import ConfigTarget

sys.path.insert(0, str(Path(__file__).parent))
from fake_anthropic import FakeAnthropic  # noqa: E402

# What only llama.cpp's prompts may say: its name, its libraries, its hardware, its workload.
LLAMA_WORDS = re.compile(r"llama|ggml|cuda|metal|vulkan|token generation|bandwidth|tinyblas|ik_llama", re.I)

PROJECT = """
[target]
name = "prettyjson"
language = "Python"
description = "A pure-Python JSON pretty-printer; the bench formats a 5 MB document."
facts = ["The formatter walks the document recursively, one string join per nesting level."]
hot_paths = ["prettyjson/**"]
[build]
command = "true"
[test]
command = "python -m unittest"
[bench]
command = "python bench.py"
[objective]
metric = "docs_per_s"
[reading]
queries = ["fast string building in CPython"]
fork_queries = ["faster JSON indentation"]
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def python_project(root: Path) -> ConfigTarget:
    (root / "prettyjson").mkdir(parents=True)
    (root / "prettyjson" / "__init__.py").write_text("def pretty(doc):\n    return repr(doc)\n")
    (root / "readfirst.toml").write_text(PROJECT)
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline")
    source = SimpleNamespace(path=root, baseline=git(root, "rev-parse", "HEAD").strip(), origin=str(root), key="k")
    target = ConfigTarget(None, None, source, load_config(root / "readfirst.toml"))
    return target


class Chunks:
    """A knowledge store holding a few chunks: each query returns them all, as Chroma would rank a tiny store."""

    def __init__(self, chunks):
        self.chunks = chunks

    def query(self, text, *, k=4, where=None):
        kinds = (where or {}).get("kind")
        kinds = [kinds] if isinstance(kinds, str) else kinds
        return [dict(c) for c in self.chunks if not kinds or c["kind"] in kinds][:k]


CHUNKS = [{"id": "paper-1", "kind": "paper", "title": "String building", "text": "join beats += in loops"},
          {"id": "fork-1", "kind": "fork-diff", "repo": "fastjson", "path": "prettyjson/__init__.py",
           "symbol": "pretty", "text": "-    return repr(doc)\n+    return ''.join(parts)"}]


def answer(request: dict) -> dict:
    """Plays each role: claims citing every excerpt, one plan, an implementer that stops at once."""
    system = json.dumps(request.get("system", ""))
    first = json.dumps(request["messages"][0]["content"])
    if "You plan performance experiments" in system:
        fid = re.search(r"- (F[0-9a-f]{10}):", first).group(1)
        return message_json(json.dumps({"hypotheses": [{"title": "Join once", "rationale": "fewer copies",
                                                        "files": ["prettyjson/__init__.py"], "findings": [fid]}],
                                        "questions": []}))
    if "You are the implementer" in system:
        return message_json("Nothing to change.")
    ids = re.findall(r'id=\\"([\w-]+)\\"', first)
    return message_json(json.dumps([{"claim": "Building the output with one join is faster than repeated +=.",
                                     "citations": ids}]))


def roles_prompts(target, tmp_path, *, summaries=None, rounds=1):
    """What the planner, implementer, researcher and competitor analyst were sent, by agent; and the server."""
    about = target.describe()
    with FakeAnthropic([answer] * 40) as server:
        llm = AnthropicLLM(make_client("test-key", base_url=server.url, max_retries=0), budget=Budget(5.0))
        kb = Chunks(CHUNKS)
        findings = []
        for round_ in range(rounds):
            findings += researcher.research(kb, [], llm=llm, k=1, queries=["fast string building"], about=about,
                                            summaries=summaries)
            findings += competitor_analyst.analyze(kb, [], hot_paths=target.hot_paths, llm=llm, k=1,
                                                   queries=["faster indentation", "faster JSON output"],
                                                   about=about, summaries=summaries)
        plan = plan_hypotheses(llm, ["baseline: 12.0 docs_per_s"], findings, [], n=2, about=about)
        implement = worktree_implementer(llm, target.repository, about=about, scratch=tmp_path)
        implement({**plan.items[0], "briefing": {}} if plan.items else {"id": "H1", "title": "t"},
                  git(target.repository, "rev-parse", "HEAD").strip())
        bodies = [r["body"] for r in server.requests]
    return bodies, findings, plan


def by_agent(bodies):
    out = {}
    for b in bodies:
        system = json.dumps(b.get("system", ""))
        agent = ("planner" if "You plan performance" in system else "implementer" if "implementer" in system
                 else "reader")
        out.setdefault(agent, []).append(json.dumps(b.get("system", "")) + json.dumps(b["messages"]))
    return out


def test_a_python_projects_prompts_speak_of_it_and_of_no_llama_cpp_word(tmp_path):
    target = python_project(tmp_path / "prettyjson")
    bodies, _, plan = roles_prompts(target, tmp_path)
    sent = by_agent(bodies)
    assert set(sent) == {"planner", "implementer", "reader"} and plan.items, plan.error
    for agent, texts in sent.items():
        for text in texts:
            assert not LLAMA_WORDS.search(text), (agent, LLAMA_WORDS.search(text).group(0))
            assert "the Python project prettyjson (A pure-Python JSON pretty-printer" in text, agent


def test_llama_cpps_prompts_still_carry_its_own_facts():
    from readfirst.agents.context import prompt_context
    from readfirst.agents.implementer import sources_note
    from readfirst.agents.llm import render_prompt
    from readfirst.targets.llama_cpp.target import LlamaCppTarget
    target = LlamaCppTarget(None, None, SimpleNamespace(origin="llama.cpp", path=Path("/nowhere"), baseline="b" * 40))
    values = prompt_context(target.describe())
    planner = render_prompt("hypothesize_system", **values)
    implementer = render_prompt("implementer_system", **values)
    assert "C/C++ project llama.cpp" in planner and "memory-bandwidth limit" in planner
    assert "(CUDA, Metal, Vulkan)" in implementer and "C/C++ project llama.cpp" in implementer
    assert "ggml/src/ggml-cuda" in sources_note({}, target.describe())
    assert "C/C++ project llama.cpp" in render_prompt("summarize_system", **values)


def test_a_chunk_read_again_in_a_later_round_or_run_costs_no_summary_call(tmp_path):
    target = python_project(tmp_path / "prettyjson")
    summaries = SummaryCache(tmp_path / "home" / "summaries.sqlite")
    bodies, findings, _ = roles_prompts(target, tmp_path, summaries=summaries, rounds=2)
    reads = by_agent(bodies)["reader"]
    # Two rounds, three queries, two chunks: each chunk was sent to the model once.
    assert sum(t.count('id=\\"paper-1\\"') for t in reads) == 1, reads
    assert sum(t.count('id=\\"fork-1\\"') for t in reads) == 1, reads
    planner = by_agent(bodies)["planner"][0]
    # The same claim, found by every query of both rounds, is one line of the planner's prompt.
    assert len({f["id"] for f in findings}) > 1
    assert planner.count("Building the output with one join") == 1, planner
    summaries.close()
    # A second run reading the same chunks pays for none of them.
    again = SummaryCache(tmp_path / "home" / "summaries.sqlite")
    bodies, _, _ = roles_prompts(target, tmp_path, summaries=again)
    assert "reader" not in by_agent(bodies)
    again.close()


# -- the cost printed at the end of a run: every role's, as `report` says it ------------------------------------

def planner_then_idle_implementer(request: dict) -> dict:
    """A planner with one idea on the profile's finding; an implementer that changes nothing (it still costs)."""
    system = json.dumps(request.get("system", ""))
    if "You plan performance experiments" in system:
        first = json.dumps(request["messages"][0]["content"])
        fid = re.search(r"- (F[0-9a-f]{10}):", first).group(1)
        return message_json(json.dumps([{"title": "Skip the checksum passes", "rationale": "they do nothing",
                                         "files": ["lz4/lz4.c"], "findings": [fid]}]),
                            input_tokens=4000, output_tokens=800)
    return message_json("The tree already does what the hypothesis asks.", input_tokens=1000, output_tokens=50)


@pytest.mark.docker
@pytest.mark.slow
def test_the_cost_printed_after_a_run_is_reports_every_role_included(tmp_path, shared_cache, docker_client,
                                                                      base_image):
    import os
    from config_project import make_project
    project = make_project(tmp_path / "lz4", shared_cache / "sdists")
    with FakeAnthropic([planner_then_idle_implementer] * 20) as server:
        env = {**os.environ, "READFIRST_HOME": str(tmp_path / "home"), "ANTHROPIC_API_KEY": "sk-test",
               "ANTHROPIC_BASE_URL": server.url, "COLUMNS": "400"}
        run = subprocess.run([sys.executable, "-m", "readfirst.graph", "run", "--source", str(project),
                              "--budget-experiments", "1", "--calibration-pairs", "0", "--max-runs", "6"],
                             capture_output=True, text=True, env=env, timeout=1800)
        systems = {json.dumps(r["body"].get("system"))[:60] for r in server.requests}
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(systems) >= 2, systems  # the planner and the implementer both spent
    run_id = next(p.name for p in (tmp_path / "home" / "runs").iterdir())
    report = subprocess.run([sys.executable, "-m", "readfirst.graph", "report", run_id, "--json"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    llm = json.loads(report.stdout)["llm"]
    assert llm["usd_total"] > llm["usd_implementing"] > 0  # the planner's spend is in the total, not the share
    printed = re.search(r"LLM: \$([\d.]+) and ([\d,]+) tokens in all", run.stdout)
    assert printed, run.stdout[-3000:]
    assert printed.group(1) == f"{llm['usd_total']:.2f}"
    assert int(printed.group(2).replace(",", "")) == llm["tokens_total"]
