"""Replay: re-execute a recorded run from one of its LangGraph checkpoints, with the recorded LLM responses,
knowledge-base results, target results and sandbox commands served back (no API call, no build, no benchmark),
and report the first step whose update differs from the recording (the code changed, or was not deterministic).

The replay runs on scratch copies of the run's checkpoints and ledger, so the run itself is left as it was (a
replay that wrote into the run's own thread would become its latest checkpoint, and `--resume` would follow it).
Each step that starts is matched to the recorded step with the same node and the same input digest (parallel
experiments may start in another order); inside it, calls are served in the order they were recorded.

With --rerun-sandbox the builds, tests and benchmarks run again for real, so every measured number differs from
the recording: steps are then compared with their measurements masked (`unmeasured`), and a divergence means a
different decision, gate, hypothesis or query, not different samples.
"""

from __future__ import annotations

import contextvars
import os
import re
import sqlite3
import tempfile
import threading
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..agents.llm import LLMError, LLMResponse
from ..records import Objective, from_dict
from .ledger import Ledger
from .runner import refuse_unless_plain
from .trace import TARGET_METHODS, TraceError, canonical, decode_result, digest, plain, raise_recorded
from .trace_read import Step, Trace
from .deps import llm_roles  # replay composes the LLM roles exactly as a run does


class Diverged(Exception):
    """Raised inside a replayed step when it asks for a call the recording cannot answer."""


class _Stop(Exception):
    """Ends the replay early (a divergence was found, or --until was reached)."""


# A number, or an id made of hex digits (commits, log names): what differs between two real measurements of the
# same decisions.
_MEASURED = re.compile(r"[0-9a-f]{7,}|[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def unmeasured(value: Any) -> Any:
    """`value` with every number masked, inside strings too ("kept: +3.1% [1.2, 5.0]" -> "kept: #% [#, #]"), and
    a verdict's `reason` masked whole: its wording follows the samples too (a guard proven within its limit on
    one set, kept by its estimate on another; outliers set aside or not), while the decision and gate beside it
    say what was decided."""
    return _masked(plain(value))


def _masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "#" if k == "reason" and isinstance(v, str) else _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return "#"
    return _MEASURED.sub("#", value)


@dataclass
class Divergence:
    step: int            # the recorded step
    node: str
    reason: str
    differences: dict[str, dict[str, Any]] = field(default_factory=dict)  # state key -> recorded / replayed


@dataclass
class ReplayReport:
    run_id: str
    from_step: int
    until_step: int | None
    checkpoint_id: str
    steps: list[dict[str, Any]] = field(default_factory=list)   # {"step", "node", "same"} in replay order
    divergence: Divergence | None = None
    served: dict[str, int] = field(default_factory=dict)        # recorded calls served back, by kind
    rerun_sandbox: bool = False

    @property
    def identical(self) -> bool:
        return self.divergence is None


class _Cursor:
    """The recorded calls of one step, served in order per kind; nested calls are made by the outer ones."""

    def __init__(self, step: Step):
        self.step = step
        self.failure: str | None = None  # kept in case a role catches the Diverged it raised
        self.queues: dict[str, list[dict[str, Any]]] = {}
        for call in step.calls:
            if not call.get("nested"):
                self.queues.setdefault(call["kind"], []).append(call)

    def next(self, kind: str, what: str) -> dict[str, Any]:
        queue = self.queues.get(kind) or []
        if not queue:
            self.fail(f"it made a {kind} call the recording does not have ({what})")
        return queue.pop(0)

    def fail(self, reason: str) -> None:
        self.failure = self.failure or reason
        raise Diverged(reason)


_CURSOR: contextvars.ContextVar[_Cursor | None] = contextvars.ContextVar("readfirst_replay_cursor", default=None)


class Replayer:
    def __init__(self, trace: Trace, report: ReplayReport, queue: list[Step], until: int | None):
        self.trace, self.report, self.queue, self.until = trace, report, queue, until
        self.consumed: set[int] = set()
        self._lock = threading.Lock()

    # -- calls ------------------------------------------------------------------------------------------------
    def serve(self, kind: str, what: str) -> dict[str, Any]:
        cursor = _CURSOR.get()
        if cursor is None:
            raise Diverged(f"a {kind} call ({what}) outside any step")
        call = cursor.next(kind, what)
        with self._lock:
            self.report.served[kind] = self.report.served.get(kind, 0) + 1
        return call

    def fail(self, reason: str) -> None:
        cursor = _CURSOR.get()
        if cursor is None:
            raise Diverged(reason)
        cursor.fail(reason)

    def value(self, kind: str, fallback: Callable[[], Any]) -> Callable[[], Any]:
        recorded = [c["value"] for s in self.trace.ordered() for c in s.calls if c["kind"] == kind]

        def get() -> Any:
            cursor = _CURSOR.get()
            queue = cursor.queues.get(kind) if cursor else None
            if queue:
                return self.serve(kind, kind)["value"]
            return recorded[-1] if recorded else fallback()
        return get

    # -- steps ------------------------------------------------------------------------------------------------
    @property
    def measured(self) -> bool:
        """Builds and benchmarks run for real: compare what was decided, not the numbers measured."""
        return self.report.rerun_sandbox

    def same(self, recorded: Any, replayed: Any) -> bool:
        if self.measured:
            return canonical(unmeasured(recorded)) == canonical(unmeasured(replayed))
        return canonical(recorded) == canonical(replayed)

    def _match(self, node: str, input_digest: str, state: Any) -> Step:
        with self._lock:
            open_ = [s for s in self.queue if s.step not in self.consumed]
            same = [s for s in open_ if s.node == node]
            pick = next((s for s in same if s.input_digest == input_digest), None)
            if pick is None and self.measured and node == "experiment":
                # fresh measurements change the payload's numbers: find the experiment by what it tries
                pick = next((s for s in same if self.same(self.trace.blob(s.payload), state)), None)
            pick = pick or (same[0] if same else None)
            if pick is None or (self.until is not None and pick.step > self.until):
                if self.until is not None and all(s.step > self.until for s in open_):
                    raise _Stop()
                if not open_:
                    self._diverge(Divergence(max(self.trace.steps, default=0) + 1, node,
                                             "the replay ran a step the recording ends before"))
                else:
                    self._diverge(Divergence(open_[0].step, node, f"the replay ran {node} where the recording "
                                                                  f"ran {open_[0].node}"))
                raise _Stop()
            self.consumed.add(pick.step)
            return pick

    def _diverge(self, divergence: Divergence) -> None:
        current = self.report.divergence
        if current is None or divergence.step < current.step:
            self.report.divergence = divergence

    def wrap_node(self, name: str, fn: Callable) -> Callable:
        def replayed(state: Any) -> Any:
            recorded = self._match(name, digest(state), state)
            cursor = _Cursor(recorded)
            token = _CURSOR.set(cursor)
            try:
                update, error = fn(state), None
            except _Stop:
                raise
            except Diverged as e:
                cursor.failure = cursor.failure or str(e)
                update, error = None, None
            except Exception as e:  # a node's error is a result to compare: the recording may hold the same one
                update, error = None, {"type": type(e).__name__, "message": str(e)}
            finally:
                _CURSOR.reset(token)
            if cursor.failure is not None:
                self._diverge(Divergence(recorded.step, name, cursor.failure))
                with self._lock:
                    self.report.steps.append({"step": recorded.step, "node": name, "same": False})
                raise _Stop()
            same = self._compare(recorded, update, error, digest(state))
            with self._lock:
                self.report.steps.append({"step": recorded.step, "node": name, "same": same})
            if not same or error is not None:
                raise _Stop()
            return update
        return replayed

    def _compare(self, recorded: Step, update: Any, error: dict[str, str] | None, input_digest: str) -> bool:
        end = recorded.end or {}
        if input_digest != recorded.input_digest and not self.measured:
            self._diverge(Divergence(recorded.step, recorded.node, "its input differs from the recording"))
            return False
        if "error" in end or error is not None:
            if (end.get("error") or {}).get("type") == (error or {}).get("type"):
                return True
            self._diverge(Divergence(recorded.step, recorded.node,
                                     f"recorded {_outcome(end.get('error'))}, replayed {_outcome(error)}"))
            return False
        if digest(update) == end.get("update_digest"):
            return True
        before = self.trace.update(recorded) or {}
        after = update or {}
        differences = {k: {"recorded": before.get(k), "replayed": after.get(k)}
                       for k in sorted(set(before) | set(after)) if not self.same(before.get(k), after.get(k))}
        if not differences:
            return True  # only measurements differ (--rerun-sandbox)
        self._diverge(Divergence(recorded.step, recorded.node, "its state update differs from the recording",
                                 differences))
        return False


def _outcome(error: dict[str, str] | None) -> str:
    return "success" if not error else f"{error.get('type')}: {error.get('message', '')[:200]}"


def fork_trees_of(info: dict[str, Any], run_dir: Path, caches: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The fork trees a run read, reopened at the recorded revisions (git keeps them in the cache). A run folder
    may come from someone else and names these paths itself: only repositories inside readfirst's own sources
    caches (the data directory that holds the run, and `caches`: the cache it uses, which may live elsewhere,
    READFIRST_CACHE) are opened, never a folder elsewhere on the host."""
    from ..sources import GitTree
    roots = [run_dir.resolve().parent.parent, *(c.resolve() for c in caches)]
    trees = {}
    for name, t in (info.get("fork_trees") or {}).items():
        repo = Path(str(t.get("repo") or "")).resolve() if t.get("repo") else None
        if repo is not None and any(repo.is_relative_to(r) for r in roots) and repo.is_dir():
            trees[name] = GitTree(name, repo, str(t["revision"]), subdirs=tuple(t.get("subdirs") or ()))
    return trees


# -- stand-ins that serve the recording --------------------------------------------------------------------------

class ReplayTarget:
    """The target as recorded: its attributes from the run's record, every method call served back."""

    def __init__(self, replayer: Replayer, info: dict[str, Any]):
        t = info.get("target") or {}
        self.name = t.get("name") or "llama.cpp"
        self.protected = tuple(t.get("protected") or ())
        self.hot_paths = tuple(t.get("hot_paths") or ())
        self.objective = from_dict(Objective, t["objective"]) if t.get("objective") else Objective("tg")
        self.repository = Path(t.get("repository") or ".")
        self._described = t.get("describe") or {"name": self.name}
        self._replayer = replayer

    def describe(self) -> dict[str, Any]:
        return dict(self._described)

    def __getattr__(self, name: str) -> Any:
        if name not in TARGET_METHODS:
            raise AttributeError(name)

        def call(*args: Any, **kwargs: Any) -> Any:
            recorded = self._replayer.serve("target", name)
            if recorded.get("method") != name:
                self._replayer.fail(f"it called target.{name} where the recording called "
                                    f"target.{recorded.get('method')}")
            if recorded.get("args_digest") != digest({"args": args, "kwargs": kwargs}):
                self._replayer.fail(f"it called target.{name} with other arguments than the recording")
            if "error" in recorded:
                raise_recorded(recorded["error"])
            return decode_result(self._replayer.trace.blob(recorded["result"]))
        return call


class ReplayKnowledgeBase:
    def __init__(self, replayer: Replayer):
        self._replayer = replayer

    def query(self, text: str, k: int = 8, where: dict[str, Any] | None = None, **_: Any) -> list[dict[str, Any]]:
        recorded = self._replayer.serve("kb", text[:80])
        if not self._replayer.same([recorded.get("query"), recorded.get("k"), recorded.get("where")], [text, k, where]):
            self._replayer.fail(f"it queried the knowledge base with {text[:120]!r} where the recording queried "
                           f"{str(recorded.get('query'))[:120]!r}")
        return self._replayer.trace.blob(recorded["results"])

    def get(self, ids: Any) -> list[dict[str, Any]]:
        recorded = self._replayer.serve("kb", "get")
        if recorded.get("ids") != list(ids):
            self._replayer.fail(f"it read the chunks {list(ids)[:5]} where the recording read "
                                f"{(recorded.get('ids') or [])[:5]}")
        return self._replayer.trace.blob(recorded["results"])


class ReplaySummaries:
    """The cache's answers as the run got them: a summary it found, or none (then the model was asked)."""

    def __init__(self, replayer: Replayer):
        self._replayer = replayer

    def get(self, chunk: Any) -> Any:
        from ..agents.summaries import chunk_key
        key = chunk_key(chunk)
        recorded = self._replayer.serve("summaries", key)
        if recorded.get("key") != key:
            self._replayer.fail(f"it looked up the summary of chunk {key} where the recording looked up "
                                f"{recorded.get('key')}")
        return recorded.get("claims")

    def put(self, chunk: Any, claims: Any) -> None:
        pass  # the recording's cache is not this machine's to change


class ReplayLLM:
    """The recorded responses, in order; a request that differs from the recorded one is a divergence."""

    def __init__(self, replayer: Replayer, model: str = "replay"):
        self._replayer, self.model, self.on_call, self.budget = replayer, model, None, None

    def complete(self, messages: list[dict[str, Any]], *, system: str = "", tools: list[dict[str, Any]] | None = None,
                 max_tokens: int = 4096, agent: str = "", experiment: str | None = None) -> LLMResponse:
        recorded = self._replayer.serve("llm", agent or "llm")
        request = {"messages": messages, "system": system, "tools": tools, "max_tokens": max_tokens}
        if recorded.get("request_digest") != digest(request) and not (
                self._replayer.measured and self._replayer.same(self._replayer.trace.blob(recorded.get("request")),
                                                                request)):
            self._replayer.fail(f"its LLM request ({agent or 'an agent'}) differs from the recorded one")
        if recorded.get("error") or not recorded.get("response"):
            raise LLMError(f"(recorded) {recorded.get('error') or 'no response'}")
        return LLMResponse.from_dict(self._replayer.trace.blob(recorded["response"]))


# -- scratch copies of the run's stores ------------------------------------------------------------------------------

def copy_sqlite(src: Path, dest: Path) -> None:
    """A consistent copy of a SQLite database (WAL included) through SQLite's own backup; a run folder's file
    that is no plain file is refused, not followed or waited on."""
    refuse_unless_plain(src)
    with closing(sqlite3.connect(f"file:{quote(str(src))}?mode=ro", uri=True)) as s, closing(sqlite3.connect(dest)) as d:
        s.backup(d)


def copy_ledger_before(trace: Trace, src: Path, dest: Path, later: list[Step]) -> Ledger:
    """The ledger as it was before `later` steps ran: rows those steps recorded are dropped."""
    if os.path.lexists(src):  # a dangling symlink too is refused, not taken for no ledger
        copy_sqlite(src, dest)
    ledger = Ledger(dest)
    keys = [c["key"] for s in later for c in s.calls if c["kind"] == "ledger" and c.get("key")]
    if keys:
        ledger.db.execute(f"DELETE FROM experiments WHERE key IN ({','.join('?' * len(keys))})", keys)
    return ledger


def steps_from(trace: Trace, from_step: int) -> tuple[Step, list[Step]]:
    """The step to start from and every recorded step at or after it (with the rest of its superstep)."""
    start = trace.step(from_step)
    if not start.starts_from:
        raise TraceError(f"step {from_step} of run {trace.directory.name} names no checkpoint to start from")
    later = [s for s in trace.ordered() if s.end is not None and not _interrupted(s)
             and (s.step >= from_step or s.starts_from == start.starts_from)]
    return start, later


def _interrupted(step: Step) -> bool:
    """A step stopped by Ctrl-C is no result: the resumed run ran it again as a later step."""
    return ((step.end or {}).get("error") or {}).get("type") in ("KeyboardInterrupt", "SystemExit")


def replay(run_dir: Path, *, from_step: int | None = None, until_step: int | None = None,
           target: Any = None, make_roles: Callable[[Any], dict[str, Any]] | None = None,
           caches: tuple[Path, ...] = ()) -> ReplayReport:
    """Replay run_dir from `from_step` (its first step by default). `target` given: builds and benchmarks run
    for real (--rerun-sandbox); otherwise the recording answers. `make_roles(llm)` rebuilds the
    LLM implementer and planner ({"implement": ..., "plan": ...}) around the replayed model (default: llm_roles).
    `caches`: where, besides the run's data directory, the fork trees it read may be reopened (Paths.cache)."""
    from .runner import open_checkpointer
    from .workflow import RunDeps, build_graph
    trace = Trace(run_dir)
    if not trace.steps:
        raise TraceError(f"run {run_dir.name} recorded no step to replay")
    from_step = from_step or min(trace.steps)
    if until_step is not None and until_step < from_step:
        raise TraceError(f"--until {until_step} comes before --from {from_step}")
    start, later = steps_from(trace, from_step)
    report = ReplayReport(run_dir.name, from_step, until_step, start.starts_from or "",
                          rerun_sandbox=target is not None)
    replayer = Replayer(trace, report, later, until_step)
    info = trace.info_for(from_step)
    has = info.get("has", {})
    llm = ReplayLLM(replayer) if has.get("llm") else None
    replay_target = target if target is not None else ReplayTarget(replayer, info)
    fork_trees = fork_trees_of(info, run_dir, caches)
    roles: dict[str, Any] = {}
    if has.get("implement") or has.get("plan"):
        roles = make_roles(llm) if make_roles is not None else llm_roles(llm, replay_target, fork_trees)

    with tempfile.TemporaryDirectory(prefix="readfirst-replay-") as scratch_name:
        scratch = Path(scratch_name)
        copy_sqlite(run_dir / "checkpoints.sqlite", scratch / "checkpoints.sqlite")
        ledger = copy_ledger_before(trace, run_dir / "ledger.sqlite", scratch / "ledger.sqlite", later)
        deps = RunDeps(target=replay_target, ledger=ledger, run_dir=scratch,
                       kb=ReplayKnowledgeBase(replayer) if has.get("kb") else None, llm=llm,
                       summaries=ReplaySummaries(replayer) if has.get("summaries") else None,
                       implement=roles.get("implement"), plan=roles.get("plan"),
                       spent_usd=replayer.value("spent_usd", lambda: 0.0),
                       clock=replayer.value("clock", lambda: 0.0), wrap_node=replayer.wrap_node,
                       fork_trees=fork_trees)
        saver, conn = open_checkpointer(scratch)
        try:
            graph = build_graph(deps, checkpointer=saver)
            config = {"configurable": {"thread_id": trace.thread_id, "checkpoint_ns": "",
                                       "checkpoint_id": start.starts_from}, "recursion_limit": 10_000}
            try:
                graph.invoke(None, config, durability="sync")
            except _Stop:
                pass
        finally:
            conn.close()
            ledger.close()
    if report.divergence is None:
        missing = [s for s in later if s.step not in replayer.consumed and (until_step is None or s.step <= until_step)]
        stopped_on_error = any(not s["same"] or (trace.step(s["step"]).end or {}).get("error") for s in report.steps)
        if missing and not stopped_on_error:
            report.divergence = Divergence(missing[0].step, missing[0].node,
                                           "the replay ended before this recorded step ran")
    return report
