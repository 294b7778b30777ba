"""The loop in LLM mode on the stand-in target: the real graph, runner and ledger, a scripted model as planner and
implementer (the LLM seam's ScriptedLLM), the real worktree implementer editing real git trees.

What it shows: both roles read the same briefing (facts, noise floor, keep threshold, the ledger with outcomes and
what each experiment changed); the planner's surplus waits in the ideas queue instead of a new planner call; the
planner's own questions are what the next reading round searches; a reworded repeat of a discarded experiment is
dropped by the functions it changes.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from test_trace_standin import StandInKnowledgeBase, make_source, record_run  # noqa: E402

from readfirst.agents.hypothesize_llm import plan_hypotheses
from readfirst.agents.implementer import worktree_implementer
from readfirst.agents.llm import ScriptedLLM, message_json, tool_use_block
from readfirst.graph.report_data import last_state, ledger_rows
from readfirst.graph.workflow import RunOptions

QUESTION = "fused q4_0 dot product with activation quantization"
A = {"title": "Unroll the work loop by four", "functions": ["work"], "files": ["src/work.c"]}
B = {"title": "Hoist the bounds check out of helper", "functions": ["helper"], "files": ["src/work.c"]}
A_REWORDED = {"title": "Process four elements per iteration in work()", "functions": ["work"],
              "files": ["src/work.c"]}
C = {"title": "Prefetch the next row in scan", "functions": ["scan"], "files": ["src/work.c"]}


class AskedKnowledgeBase(StandInKnowledgeBase):
    def __init__(self):
        self.asked: list[tuple[str, Any]] = []

    def query(self, text: str, k: int = 8, where: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        self.asked.append((text, (where or {}).get("kind")))
        return super().query(text, k=k, where=where)


def responder(request: dict[str, Any]) -> dict[str, Any]:
    messages = request["messages"]
    if request["agent"] == "hypothesize":
        task = messages[0]["content"]
        fid = re.search(r"- (F[0-9a-f]{10}):", task).group(1)
        first = "Already tried" in task and "(nothing yet)" in task.split("Already tried", 1)[1]
        plan = [A, B] if first else [A_REWORDED, C]
        body = {"hypotheses": [{**h, "rationale": "r", "findings": [fid], "expected_gain": "2%"} for h in plan],
                "questions": [QUESTION] if first else []}
        return message_json(json.dumps(body))
    assert request["agent"] == "implementer"
    if any(isinstance(m["content"], list) and any(b.get("type") == "tool_result" for b in m["content"])
           for m in messages):
        return message_json("Done.")
    title = re.search(r"title: (.*)", messages[0]["content"]).group(1)
    name = re.sub(r"\W+", "_", title.lower())
    return message_json([tool_use_block("write_file", {"path": f"src/{name}.c",
                                                       "content": f"/* {title} */\nint {name};\n"})])


def test_llm_roles_share_a_briefing_queue_ideas_ask_questions_and_skip_reworded_repeats(tmp_path):
    source = make_source(tmp_path / "source")
    llm = ScriptedLLM([responder] * 12)
    plan = lambda facts, findings, tried, n: plan_hypotheses(llm, facts, findings, tried, n=n)  # noqa: E731
    implement = worktree_implementer(llm, source, protected=("tests/*",))
    kb = AskedKnowledgeBase()
    options = RunOptions(budget_experiments=3, calibration_pairs=0, max_runs=12, max_research_rounds=3,
                         kinds=("llm",))
    directory, summary, _ = record_run(tmp_path, kb=kb, plan=plan, implement=implement, options=options)

    planner = [c for c in llm.calls if c["agent"] == "hypothesize"]
    implementer = [c for c in llm.calls if c["agent"] == "implementer"]
    # Three experiments, two planner calls: B waited in the ideas queue while A ran.
    assert summary["experiments"] == 3 and len(planner) == 2
    first_tasks = [c["messages"][0]["content"] for c in implementer if len(c["messages"]) == 1]
    assert [re.search(r"title: (.*)", t).group(1) for t in first_tasks] == [A["title"], B["title"], C["title"]]

    # The planner and the implementer are told the same facts: the noise floor and the keep threshold too.
    for task in (planner[0]["messages"][0]["content"], first_tasks[0]):
        assert "Noise floor" in task and "Keep threshold" in task and "+1.0%" in task
        assert "The stand-in generates" in task
    # The second planner call sees both experiments with outcome and what they changed.
    second = planner[1]["messages"][0]["content"]
    assert f"{A['title']} (llm/" in second and "discard at performance" in second
    assert re.search(r"Unroll the work loop by four.*; changed work in src/unroll_the_work_loop_by_four\.c", second)
    # The implementer of the third experiment reads the ledger too.
    assert A["title"] in first_tasks[2] and B["title"] in first_tasks[2]

    # The reworded repeat of A changed the same functions as discarded A (the planner declared them): dropped.
    titles = [r["title"] for r in ledger_rows(directory)]
    assert titles == [A["title"], B["title"], C["title"]] and A_REWORDED["title"] not in titles

    # The round after the no-win wave read the planner's question, from the top, in papers and in the forks.
    asked = [(q, kind) for q, kind in kb.asked if q == QUESTION]
    assert {json.dumps(kind) for _, kind in asked} >= {json.dumps(["paper", "doc"]),
                                                      json.dumps(["fork-diff", "fork-code"])}
    assert sum(1 for q, kind in kb.asked if q == QUESTION and kind == ["paper", "doc"]) == 1  # asked once

    assert last_state(directory)["asked"] == [QUESTION]  # state: a resumed run does not ask it again


def test_the_ideas_queue_is_checkpointed_for_a_resume(tmp_path):
    source = make_source(tmp_path / "source")
    llm = ScriptedLLM([responder] * 6)
    plan = lambda facts, findings, tried, n: plan_hypotheses(llm, facts, findings, tried, n=n)  # noqa: E731
    implement = worktree_implementer(llm, source, protected=("tests/*",))
    options = RunOptions(budget_experiments=1, calibration_pairs=0, max_runs=12, max_research_rounds=1,
                         kinds=("llm",))
    directory, summary, _ = record_run(tmp_path, kb=StandInKnowledgeBase(), plan=plan, implement=implement,
                                       options=options)
    assert summary["experiments"] == 1
    state = last_state(directory)
    # A ran; B waits (the next hypothesize step drops what the tried list holds)
    assert [h["title"] for h in state["ideas"]] == [A["title"], B["title"]]
    assert state["tried"] == [state["ideas"][0]["key"]]


def test_the_report_shows_dollars_and_tokens_per_experiment_and_per_kept_win():
    from rich.console import Console

    from readfirst.graph.report import experiment_table
    from readfirst.graph.report_data import llm_costs

    def row(i, decision, usd, tokens, repair=None):
        llm = {"usd": usd, "tokens": tokens, "steps": 3, **({"repair_1": repair} if repair else {})}
        return {"id": f"E{i}", "wave": i, "kind": "llm", "title": f"t{i}", "decision": decision, "reason": "r",
                "speedup": 0.05 if decision == "keep" else None, "ci_low": 0.02, "ci_high": 0.08, "llm": llm}

    rows = [row(1, "discard", 0.10, 20_000, repair={"usd": 0.05, "tokens": 9_000, "steps": 2}),
            row(2, "keep", 0.20, 40_000), row(3, "discard", 0.0, 0)]
    meta = {"llm_budget": {"total": {"cost_usd": 0.60, "input_tokens": 100_000, "output_tokens": 5_000},
                           "by_agent": {"hypothesize": {"cost_usd": 0.25}, "implementer": {"cost_usd": 0.35}}}}
    costs = llm_costs(rows, meta)
    assert costs["usd_per_experiment"] == 0.2 and costs["tokens_per_experiment"] == 35_000
    assert costs["usd_implementing"] == 0.35 and costs["kept"] == 1 and costs["usd_per_kept_win"] == 0.6
    assert llm_costs(rows)["usd_total"] == 0.35  # without meta.json: the experiments' own spend
    assert llm_costs([{**r, "llm": {}} for r in rows]) is None  # an offline run shows no LLM column
    console = Console(width=200, record=True)
    console.print(experiment_table(rows, llm=costs))
    text = console.export_text()
    assert "$0.150 / 29,000" in text and "$0.60 per kept win" in text and "$0.200 and 35,000 tokens per" in text


def test_a_run_whose_budget_cannot_pay_the_implementer_stops_instead_of_discarding_every_idea(tmp_path):
    from readfirst.agents.llm import Budget
    source = make_source(tmp_path / "source")
    # The planner's call (4,096 tokens of output: about $0.06) fits in $0.10; the implementer's (8,192: $0.12) not.
    llm = ScriptedLLM([responder] * 6, budget=Budget(0.10))
    plan = lambda facts, findings, tried, n: plan_hypotheses(llm, facts, findings, tried, n=n)  # noqa: E731
    implement = worktree_implementer(llm, source, protected=("tests/*",))
    options = RunOptions(budget_experiments=3, calibration_pairs=0, max_runs=12, max_research_rounds=3,
                         kinds=("llm",))
    directory, summary, _ = record_run(tmp_path, kb=StandInKnowledgeBase(), plan=plan, implement=implement,
                                       options=options)
    assert [c["agent"] for c in llm.calls] == ["hypothesize"]  # no implementer call was made
    assert summary["experiments"] == 1 and summary["stop_reason"].startswith("dollar budget spent (the LLM budget")
    row = ledger_rows(directory)[0]
    assert row["verdict"]["gate"] == "budget" and "may cost up to" in row["reason"]
