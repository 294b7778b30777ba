"""The wiring: nodes and edges of the research-driven loop, in one function.

profile → research → competitors → hypothesize ─Send×K→ experiment → decide ─┬→ hypothesize (a win: go on)
                                      ↑                                         ├→ research (no win: read again)
                                      └─────────────────────────────────────────┴→ confirm → END (budget spent,
                                                                                             exhausted)
confirm re-measures the final stack against the baseline in one more interleaved A/B (only when something was
kept), so the run's speedup is a measurement, not the product of per-step estimates.

Nodes are thin: they read the state, call a role with the dependencies in RunDeps, and return an update. Every
node is safe to re-run after a crash: the profile and the experiments find their recorded results.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

from ..agents import competitor_analyst, offline_policy, porting, researcher
from ..agents.briefing import brief
from ..agents.experiment import calibrate_build, confirm_stack, evaluator_for, run_experiment
from ..agents.findings import finding, source_kind
from ..agents.llm import BudgetExceeded
from ..agents.summaries import SummaryCache
from ..protocols import KnowledgeStore, Target, Tree
from ..records import Baseline, from_dict, to_dict
from ..sources import GitTree, merge_file
from .ledger import Ledger
from .state import RunState

Say = Callable[[str], None]
CONTEXT_CHUNKS = 6  # cited chunks shown whole to the implementer (each cut at 4000 characters there)


@dataclass
class RunOptions:
    """What `readfirst run` was asked to do; stored in the state so a resumed run keeps its settings."""
    budget_experiments: int = 6
    budget_minutes: float = 120.0
    budget_usd: float = 5.0
    workers: int = 1
    offline: bool = True
    calibration_pairs: int = 8  # A/A pairs of the objective (its guards: every other block, so half as many)
    max_runs: int = 62          # per verdict; the sequential rule stops most much earlier
    max_research_rounds: int = 3
    kinds: tuple[str, ...] = ("llm", "patch", "build", "runtime")
    confirm: bool = True  # re-measure the final stack against the baseline at the end (when something was kept)


@dataclass
class RunDeps:
    target: Target
    ledger: Ledger
    run_dir: Path
    kb: KnowledgeStore | None = None     # None when the knowledge base is empty
    llm: Any = None                      # an LLM, or None for the offline policy
    implement: Callable | None = None    # LLM implementer: (hypothesis, base commit) -> (patch, info)
    plan: Callable | None = None         # LLM planner: (facts, findings, tried, n) -> hypotheses
    # Runs one experiment elsewhere (sandbox/ray_executor.py: on a cluster node) instead of run_experiment here:
    # (hypothesis, best=, baseline=, worker=, max_runs=, noise=, implement=, say=) -> the ledger row
    execute: Callable | None = None
    spent_usd: Callable[[], float] = lambda: 0.0
    say: Say = lambda _: None
    clock: Callable[[], float] = time.time
    wrap_node: Callable[[str, Callable], Callable] = lambda name, fn: fn  # the trace recorder's hook
    fork_trees: dict[str, Tree] = field(default_factory=dict)  # the forks' source trees, by the name chunks cite
    summaries: Any = None  # agents.summaries.SummaryCache: chunk summaries already paid for, in any round or run
    extra: dict[str, Any] = field(default_factory=dict)


def _options(state: RunState) -> RunOptions:
    known = {f.name for f in fields(RunOptions)}  # options of older runs that moved to their target are left out
    options = {k: v for k, v in state["options"].items() if k in known}
    return RunOptions(**{**options, "kinds": tuple(options.get("kinds", RunOptions.kinds))})


def _baseline(state: RunState) -> Baseline:
    return from_dict(Baseline, state["baseline"])


def build_graph(deps: RunDeps, checkpointer=None):
    say = deps.say

    target = deps.target
    # Without a file of summaries (a replay, a test), this run's own are still kept: a replay then asks the model
    # exactly what the recorded run asked.
    summaries = deps.summaries if deps.summaries is not None else SummaryCache()

    def tree_at(commit: str) -> Tree:
        return GitTree(target.name, target.repository, commit)

    # -- profile ---------------------------------------------------------------------------------------------------
    def profile(state: RunState) -> dict[str, Any]:
        opts = _options(state)
        say(f"profile: preparing the baseline of {target.name}")
        baseline = target.prepare()
        say("profile: measuring the baseline")
        prof = target.profile(baseline)
        for fact in prof.facts:
            say(f"fact: {fact}")
        calibration, noise = "", {}
        if opts.calibration_pairs > 0:
            say(f"profile: A/A calibration ({opts.calibration_pairs} pairs) for the noise floor")
            cal = calibrate_build(target, baseline.commit, baseline.variant, pairs=opts.calibration_pairs,
                                  max_runs=opts.max_runs)
            calibration = cal.describe()
            # every verdict of the run pools this noise: a decisive effect is then decided in a block or two
            noise = {test: asdict(prior) for test, prior in cal.priors().items()}  # {"pair_sd", "df"}
            say(f"noise floor: {calibration}")
        best = {"commit": baseline.commit, "variant": baseline.variant, "stack": [], "metrics": prof.metrics}
        return {"baseline": {**to_dict(baseline), "metrics": prof.metrics}, "best": best,
                "profile": to_dict(prof), "calibration": calibration, "noise": noise,
                "findings": [finding("profiler", "profile", " ".join(prof.facts), extra={"facts": prof.facts})],
                "wave": 0, "experiments": 0, "research_round": 0}

    # -- research ----------------------------------------------------------------------------------------------------
    def research(state: RunState) -> dict[str, Any]:
        if deps.kb is None:
            say("research: the knowledge base is empty; only build and runtime experiments are possible")
            return {}
        round_ = state.get("research_round", 0)
        questions = _open_questions(state)
        say(f"research: reading papers and docs (round {round_ + 1}"
            + (f"; the planner's {len(questions)} questions)" if questions else ")"))
        try:
            # The planner's own questions, read from the top; without any, the profile's queries, read deeper
            # each round.
            found = researcher.research(deps.kb, state["profile"]["facts"], llm=deps.llm,
                                        round_=0 if questions else round_, say=say, about=target.describe(),
                                        summaries=summaries,
                                        queries=questions or (state["profile"].get("queries") or {}).get("research"))
        except BudgetExceeded as e:
            return {"stop_reason": f"dollar budget spent ({e})"}
        known = {f["id"] for f in state.get("findings", [])}
        return {"findings": [f for f in found if f["id"] not in known]}

    def competitors(state: RunState) -> dict[str, Any]:
        if deps.kb is None:
            return {}
        round_ = state.get("research_round", 0)
        questions = _open_questions(state)
        say(f"competitors: reading fork diffs and backend gaps (round {round_ + 1})")
        try:
            found = competitor_analyst.analyze(deps.kb, state["profile"]["facts"], llm=deps.llm,
                                               round_=0 if questions else round_, about=target.describe(),
                                               say=say, hot_paths=target.hot_paths, summaries=summaries,
                                               hot_symbols=porting.hot_symbols(tree_at(state["best"]["commit"]),
                                                                               target.hot_paths),
                                               queries=questions or (state["profile"].get("queries") or {}).get(
                                                   "competitors"))
        except BudgetExceeded as e:
            return {"stop_reason": f"dollar budget spent ({e})"}
        known = {f["id"] for f in state.get("findings", [])}
        # The last reading node: the questions are answered (research read them in papers, this in the forks).
        return {"findings": [f for f in found if f["id"] not in known], "asked": questions}

    # -- hypothesize ---------------------------------------------------------------------------------------------------
    def hypothesize(state: RunState) -> dict[str, Any]:
        opts = _options(state)
        stop = _budget_spent(state, opts)
        if stop:
            return {"stop_reason": stop, "hypotheses": []}
        tried = set(state.get("tried", []))
        findings = state.get("findings", [])
        profile_finding = next(f["id"] for f in findings if f["role"] == "profiler")
        best = state["best"]

        # What both LLM roles are told: the facts, the noise floor and keep threshold, the model, the ledger.
        briefing = brief(profile=state.get("profile") or {}, calibration=state.get("calibration") or "",
                         min_effect=target.objective.min_effect,
                         rows=deps.ledger.rows() if deps.ledger is not None else [], stack=best.get("stack") or [])
        # The planner's surplus of earlier waves waits here (in the state, so a resumed run keeps it); the
        # planner is asked again only when fewer ideas wait than a wave takes.
        ideas = [h for h in state.get("ideas") or [] if h["key"] not in tried]
        plan_update: dict[str, Any] = {}
        if deps.plan is not None and len(ideas) < opts.workers:
            try:
                planned = deps.plan(briefing["facts"], findings, _tried_for_planner(briefing, tried, ideas),
                                    2 * opts.workers)
            except BudgetExceeded as e:
                return {"stop_reason": f"dollar budget spent ({e})", "hypotheses": []}
            if getattr(planned, "error", None):
                say(f"hypothesize: the planner's answer was unusable: {planned.error}")
            queued = {h["key"] for h in ideas}
            ideas += [{**h, "source_kind": source_kind(h.get("citations", []), findings)}
                      for h in planned if h["key"] not in tried and h["key"] not in queued]
            questions = list(getattr(planned, "questions", None) or [])
            if questions:
                say("hypothesize: the planner asks: " + "; ".join(questions))
            plan_update["questions"] = questions
        plan_update["ideas"] = ideas
        ranked: list[dict[str, Any]] = [{**h, "briefing": briefing} for h in ideas]
        proposal = offline_policy.propose(
            findings, variants=target.variants(best["variant"]), tried=tried, profile_finding=profile_finding,
            forks=offline_policy.ForkSources(
                current=tree_at(best["commit"]), base=tree_at(state["baseline"]["commit"]), forks=deps.fork_trees,
                hot_paths=target.hot_paths, merge_file=merge_file,
                rank=_ranker((state.get("profile") or {}).get("hot_symbols") or [])),
            llm=deps.implement is not None,
            history=[r.get("source_kind") or "llm" for r in (deps.ledger.rows() if deps.ledger is not None else [])])
        ranked += proposal.hypotheses
        stats = proposal.stats(state.get("candidate_stats"))
        if stats["candidates_by_source"] != (state.get("candidate_stats") or {}).get("candidates_by_source") or \
                stats["dropped"] != (state.get("candidate_stats") or {}).get("dropped"):
            say("hypothesize: candidates by source: " + (", ".join(f"{k} {n}" for k, n in
                stats["candidates_by_source"].items()) or "none") + (
                "; dropped: " + ", ".join(f"{n} {r}" for r, n in stats["dropped"].items()) if stats["dropped"] else ""))
        known = {f["id"] for f in findings}
        update: dict[str, Any] = {**plan_update, "candidate_stats": stats,
                                  "findings": [f for f in proposal.findings if f["id"] not in known]}
        ranked = [h for h in ranked if h["kind"] in opts.kinds]
        if not ranked:
            if state.get("research_round", 0) + 1 < opts.max_research_rounds and deps.kb is not None:
                return {**update, "hypotheses": [], "research_round": state.get("research_round", 0) + 1}
            return {**update, "hypotheses": [], "stop_reason": "hypotheses exhausted"}
        say(f"hypothesize: {len(ranked)} untried; next: " + "; ".join(h["title"] for h in ranked[:opts.workers]))
        return {**update, "hypotheses": ranked, "wave": state.get("wave", 0) + 1}

    def after_competitors(state: RunState) -> str:
        return finish(state) if state.get("stop_reason") else "hypothesize"

    def after_hypothesize(state: RunState):
        if state.get("stop_reason"):
            return finish(state)
        queue = state.get("hypotheses", [])
        if not queue:
            return "research"
        opts = _options(state)
        room = opts.budget_experiments - state.get("experiments", 0)
        wave = queue[:max(1, min(opts.workers, room))]
        return [Send("experiment", {"hypothesis": h, "worker": i, "wave": state["wave"], "best": state["best"],
                                    "baseline": state["baseline"], "options": state["options"],
                                    "noise": state.get("noise") or {}})
                for i, h in enumerate(wave)]

    # -- experiment (one per Send) ---------------------------------------------------------------------------------------
    def experiment(payload: dict[str, Any]) -> dict[str, Any]:
        h = payload["hypothesis"]
        key = f"{payload['best']['commit'][:12]}:{_config_id(payload['best'])}:{h['key']}"
        recorded = deps.ledger.find(key)
        if recorded is None:
            opts = _options({"options": payload["options"]})
            say(f"wave {payload['wave']}: {h['title']}")
            if deps.implement is not None and deps.kb is not None and h.get("chunk_ids"):
                # The implementer reads the cited code and papers whole, not only the findings' snippets (a fork's
                # kernel is the thing to port); the ledger keeps what it was shown.
                h = {**h, "context": deps.kb.get(h["chunk_ids"][:CONTEXT_CHUNKS])}
            if deps.execute is not None:  # plain records travel: the payload's dicts out, the row back
                row = deps.execute(h, best=payload["best"], baseline=payload["baseline"], worker=payload["worker"],
                                   max_runs=opts.max_runs, noise=payload.get("noise") or {},
                                   implement=deps.implement, say=say)
            else:
                row = run_experiment(h, target=target, best=payload["best"], baseline=_baseline(payload),
                                     worker=payload["worker"],
                                     evaluator_config=evaluator_for(target, max_runs=opts.max_runs,
                                                                    noise=payload.get("noise")),
                                     implement=deps.implement, say=say)
            recorded = deps.ledger.record({**row, "key": key, "wave": payload["wave"], "best_before": payload["best"],
                                           "source_kind": h.get("source_kind") or "llm"})
        return {"wave_results": [_summary(recorded)], "tried": [h["key"]]}

    # -- decide ------------------------------------------------------------------------------------------------------
    def decide(state: RunState) -> dict[str, Any]:
        results = state.get("wave_results", [])
        done = state.get("experiments", 0) + len(results)
        update: dict[str, Any] = {"wave_results": None, "experiments": done}
        kept = [r for r in results if r["decision"] == "keep"]
        if kept:
            win = max(kept, key=lambda r: r["speedup"] or 0)
            cand = win["candidate"]
            best = {"commit": cand["commit"], "variant": cand["variant"],
                    "stack": state["best"]["stack"] + [win["id"]], "metrics": state["best"].get("metrics", {})}
            say(f"decide: kept {win['id']} ({win['title']}), {_pct(win['speedup'])} "
                f"[{_pct(win['ci_low'])}, {_pct(win['ci_high'])}]; the next wave starts from it")
            update.update(best=best, kept=[win["id"]], last_wave_won=True)
        else:
            update["last_wave_won"] = False
            say("decide: no win in this wave; reading again")
            update["research_round"] = state.get("research_round", 0) + 1
        stop = _budget_spent({**state, "experiments": done}, _options(state))
        refused = next((r for r in results if r.get("gate") == "budget"), None)
        if not stop and refused is not None:
            # the budget could not pay for the next call: later experiments would be refused the same way
            stop = f"dollar budget spent ({refused['reason'].removeprefix('not implemented: ')})"
        if stop:
            update["stop_reason"] = stop
        return update

    def after_decide(state: RunState) -> str:
        if state.get("stop_reason"):
            return finish(state)
        return "hypothesize" if state.get("last_wave_won") else "research"

    def finish(state: RunState) -> str:
        """The way out: through the confirmation when something was kept and it has not run yet."""
        wanted = _options(state).confirm and (state.get("best") or {}).get("stack")
        return "confirm" if wanted and not state.get("confirmation") else END

    # -- confirm -----------------------------------------------------------------------------------------------------
    def confirm(state: RunState) -> dict[str, Any]:
        """The final stack against the baseline, both built from nothing (agents.experiment.confirm_stack),
        beside the estimate: the product of the kept steps' effects."""
        opts = _options(state)
        base, best = _baseline(state), state["best"]
        rows = {r["id"]: r for r in (deps.ledger.rows() if deps.ledger is not None else [])}
        estimated = 1.0
        for eid in best["stack"]:
            estimated *= 1 + ((rows.get(eid) or {}).get("speedup") or 0)
        steps = []
        if len(best["stack"]) > 1:  # each kept win against what it was kept over, from clean builds too
            for eid in best["stack"]:
                row = rows.get(eid) or {}
                before, cand = row.get("best_before") or {}, row.get("candidate") or {}
                if not (before.get("commit") and cand.get("commit")):
                    continue  # a row from before the ledger kept these
                say(f"confirm: {eid} ({row.get('title', '')[:80]}) against what it was kept over")
                step = confirm_stack(target, baseline=(before["commit"], before["variant"]),
                                     best=(cand["commit"], cand["variant"]), max_runs=opts.max_runs,
                                     noise=state.get("noise"), say=say)
                steps.append({"id": eid, "title": row.get("title", ""), "estimated": row.get("speedup"), **step})
        say(f"confirm: the final stack ({len(best['stack'])} kept) against the baseline")
        record = confirm_stack(target, baseline=(base.commit, base.variant), best=(best["commit"], best["variant"]),
                               max_runs=opts.max_runs, noise=state.get("noise"), say=say)
        record = {"estimated": estimated - 1, "stack": list(best["stack"]), **record,
                  **({"steps": steps} if steps else {})}
        if record.get("speedup") is not None:
            say(f"confirm: measured {_pct(record['speedup'])} [{_pct(record['ci_low'])}, {_pct(record['ci_high'])}] "
                f"against the estimated {_pct(record['estimated'])}")
        return {"confirmation": record}

    def _budget_spent(state: RunState, opts: RunOptions) -> str:
        if state.get("experiments", 0) >= opts.budget_experiments:
            return f"experiment budget spent ({opts.budget_experiments})"
        if deps.clock() - state.get("started_at", deps.clock()) > opts.budget_minutes * 60:
            return f"time budget spent ({opts.budget_minutes:g} min)"
        if deps.spent_usd() >= opts.budget_usd:
            return f"dollar budget spent (${opts.budget_usd:g})"
        return ""

    g = StateGraph(RunState)
    for name, fn in (("profile", profile), ("research", research), ("competitors", competitors),
                     ("hypothesize", hypothesize), ("experiment", experiment), ("decide", decide),
                     ("confirm", confirm)):
        g.add_node(name, deps.wrap_node(name, fn))
    g.add_edge(START, "profile")
    g.add_edge("profile", "research")
    g.add_edge("research", "competitors")
    g.add_conditional_edges("competitors", after_competitors, ["hypothesize", "confirm", END])
    g.add_conditional_edges("hypothesize", after_hypothesize, ["experiment", "research", "confirm", END])
    g.add_edge("experiment", "decide")
    g.add_conditional_edges("decide", after_decide, ["hypothesize", "research", "confirm", END])
    g.add_edge("confirm", END)
    return g.compile(checkpointer=checkpointer)


def _ranker(fragments: list[str]) -> Callable[[str], int]:
    """A function name's rank by the profile's hot symbols: the index of the first fragment it contains."""
    def rank(name: str) -> int:
        return next((i for i, f in enumerate(fragments) if f in name), len(fragments))
    return rank


def _config_id(best: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(best["variant"], sort_keys=True).encode()).hexdigest()[:8]


def _tried_for_planner(briefing: dict[str, Any], tried: set[str],
                       ideas: list[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """What the planner is told was tried: every experiment of the ledger with its outcome and what it changed
    (the briefing's), the ideas waiting in the queue (not to be proposed twice), and the keys of the state's
    tried list that the ledger does not hold (an experiment in flight when the run was cut)."""
    out = [dict(t) for t in briefing.get("tried") or []]
    out += [{"title": h["title"], "key": h["key"], "decision": "queued", "files": h.get("files") or [],
             "functions": h.get("functions") or []} for h in ideas]
    known = {t.get("key") for t in out}
    return out + [{"key": k} for k in sorted(tried - known)]


def _open_questions(state: RunState) -> list[str]:
    """The planner's questions not read yet."""
    asked = set(state.get("asked") or [])
    return [q for q in state.get("questions") or [] if q not in asked]


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    """What the state keeps of an experiment; the ledger keeps everything."""
    return {**{k: row.get(k) for k in ("id", "key", "kind", "title", "decision", "reason", "speedup", "ci_low",
                                       "ci_high", "candidate", "source_kind")},
            "gate": (row.get("verdict") or {}).get("gate")}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.1%}"
