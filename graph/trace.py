"""The trace recorder: every node execution of a run is a step, and inside it every LLM call, knowledge-base
query, target call and sandbox command, written as it happens.

runs/<id>/trace.jsonl is append-only, one JSON event per line: a line is flushed when written and the file is
fsynced at the end of each step, so a run killed with -9 leaves a readable prefix (a torn last line is skipped
by the reader). Large payloads (build logs, patches, LLM messages, state updates) go to runs/<id>/trace/ as
content-addressed files, referenced as {"$blob": "trace/<digest>.json"}.

The trace is not a second copy of the state: a step names the LangGraph checkpoint it starts from (the graph's
state is there); the checkpoint it ends at is the child of that one in the checkpointer's history. The trace adds
what checkpoints do not hold: the calls made inside a step, which replay serves back instead of making them.
"""

from __future__ import annotations

import contextvars
import copy
import dataclasses
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig

from ..errors import ReadfirstError
from ..sandbox.machine_lock import waited_s

TRACE_FILE = "trace.jsonl"
BLOB_DIR = "trace"
SCHEMA_VERSION = 1
INLINE_LIMIT = 2000          # characters of JSON kept inline in an event; more goes to a blob file
LOG_TAIL = 2000              # characters of a sandbox command's output shown in the trace itself
# The Target interface's methods (readfirst.protocols.Target): each call and its result is recorded.
TARGET_METHODS = ("prepare", "commit_patch", "build", "checks", "measure", "profile", "variants", "apply", "clean")


class TraceError(ReadfirstError):
    """A trace cannot be read or used as asked (no trace, no such step, a replay that cannot start)."""


# -- encoding ----------------------------------------------------------------------------------------------------

def plain(value: Any) -> Any:
    """JSON-ready data: dataclasses as dicts, paths as strings; what a digest and a comparison look at."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def canonical(value: Any) -> str:
    return json.dumps(plain(value), sort_keys=True, default=str)


def digest(value: Any) -> str:
    return hashlib.sha256(canonical(value).encode()).hexdigest()[:16]


def encode_result(value: Any) -> dict[str, Any]:
    """A target call's return value with its type, so replay can rebuild the same object."""
    if isinstance(value, Path):
        return {"type": "Path", "data": str(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__name__, "data": plain(value)}
    return {"type": "json", "data": plain(value)}


def decode_result(encoded: dict[str, Any]) -> Any:
    from .. import records
    kind, data = encoded.get("type"), encoded.get("data")
    if kind == "Path":
        return Path(data)
    if kind == "json":
        return data
    cls = getattr(records, kind or "", None)
    if cls is None:
        raise TraceError(f"the trace holds a result of unknown type {kind!r}; it was written by another version")
    return records.from_dict(cls, data)


def encode_error(e: BaseException) -> dict[str, str]:
    return {"type": type(e).__name__, "message": str(e)}


def raise_recorded(error: dict[str, str]) -> None:
    """Raise the error a recorded call raised: the same readfirst error class when it is one, else TraceError."""
    from .. import errors
    cls = getattr(errors, error.get("type", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, ReadfirstError)):
        cls = TraceError
    raise cls(error.get("message", ""))


# -- the writer --------------------------------------------------------------------------------------------------

class TraceWriter:
    """Appends events to runs/<id>/trace.jsonl; thread-safe (a wave's experiments run in parallel)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.path = directory / TRACE_FILE
        self.blobs = directory / BLOB_DIR
        self._lock = threading.Lock()
        self._next_step = _last_step(self.path) + 1  # a resumed run goes on numbering
        self._file = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def next_step(self) -> int:
        with self._lock:
            n, self._next_step = self._next_step, self._next_step + 1
            return n

    def stash(self, value: Any) -> Any:
        """Small data stays inline; large data becomes a blob file, written once per content."""
        data = plain(value)
        text = json.dumps(data, sort_keys=True, default=str)
        if len(text) <= INLINE_LIMIT:
            return data
        name = hashlib.sha256(text.encode()).hexdigest()[:24] + ".json"
        self.blobs.mkdir(exist_ok=True)
        dest = self.blobs / name
        if not dest.exists():
            tmp = dest.with_suffix(f".tmp{threading.get_ident()}")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, dest)
        return {"$blob": f"{BLOB_DIR}/{name}"}

    def write(self, event: dict[str, Any], *, sync: bool = False) -> None:
        line = json.dumps({"at": time.time(), **event}, default=str)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()
            if sync:
                os.fsync(self._file.fileno())


def _last_step(path: Path) -> int:
    last = 0
    if path.exists():
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if '"step_start"' in line:
                    try:
                        last = max(last, int(json.loads(line).get("step") or 0))
                    except (json.JSONDecodeError, ValueError, AttributeError):
                        continue  # a torn line
    return last


# -- the step in progress ----------------------------------------------------------------------------------------

@dataclass
class StepContext:
    step: int
    node: str
    calls: int = 0
    in_target: int = 0  # > 0 while a target call runs: its sandbox commands are nested in it
    cost_usd: float = 0.0
    tokens: int = 0


CURRENT: contextvars.ContextVar[StepContext | None] = contextvars.ContextVar("readfirst_trace_step", default=None)


@dataclass
class Recorder:
    writer: TraceWriter

    def call(self, kind: str, nested: bool | None = None, **fields: Any) -> None:
        """One call inside the current step (or outside any step, step null). A call made by another recorded
        call (a build's sandbox commands, the model maker's quantize) is nested: replay serves only the outer."""
        ctx = CURRENT.get()
        seq = None
        if ctx is not None:
            ctx.calls += 1
            seq = ctx.calls
        if nested is None:
            nested = ctx is not None and ctx.in_target > 0
        self.writer.write({"event": "call", "kind": kind, "step": ctx.step if ctx else None, "seq": seq,
                           **({"nested": True} if nested else {}), **fields})

    def wrap_node(self, name: str, fn: Callable) -> Callable:
        def traced(state: Any, config: RunnableConfig) -> Any:
            configurable = (config or {}).get("configurable", {})
            starts_from = (configurable.get("checkpoint_map") or {}).get("") or configurable.get("checkpoint_id")
            ctx = StepContext(self.writer.next_step(), name)
            start = {"event": "step_start", "step": ctx.step, "node": name, "starts_from": starts_from,
                     "task_id": configurable.get("__pregel_task_id"), "input_digest": digest(state)}
            if name == "experiment":  # a Send payload is not in the checkpoint's state: keep it here
                start["payload"] = self.writer.stash(state)
            self.writer.write(start)
            token = CURRENT.set(ctx)
            t0, w0 = time.monotonic(), waited_s()  # the machine lock's waits in this thread, shown apart
            try:
                update = fn(state)
            except BaseException as e:
                self.writer.write({"event": "step_end", "step": ctx.step, "node": name,
                                   "duration_s": round(time.monotonic() - t0, 3), "error": encode_error(e),
                                   "waited_s": round(waited_s() - w0, 3),
                                   "cost_usd": ctx.cost_usd, "tokens": ctx.tokens}, sync=True)
                raise
            finally:
                CURRENT.reset(token)
            self.writer.write({"event": "step_end", "step": ctx.step, "node": name,
                               "duration_s": round(time.monotonic() - t0, 3), "update": self.writer.stash(update),
                               "waited_s": round(waited_s() - w0, 3),
                               "update_digest": digest(update), "cost_usd": ctx.cost_usd, "tokens": ctx.tokens},
                              sync=True)
            return update
        return traced

    def on_llm_call(self, record: dict[str, Any]) -> None:
        ctx = CURRENT.get()
        if ctx is not None:
            ctx.cost_usd += float(record.get("cost_usd") or 0.0)
            ctx.tokens += sum(int(record.get(k) or 0) for k in ("input_tokens", "output_tokens",
                                                                "cache_write_tokens", "cache_read_tokens"))
        request = {k: record.get(k) for k in ("messages", "system", "tools", "max_tokens")}
        response = record.get("response") or {}
        self.call("llm", agent=record.get("agent"), experiment=record.get("experiment"), model=record.get("model"),
                  request=self.writer.stash(request), request_digest=digest(request),
                  response=self.writer.stash(response) if response else None,
                  tool_calls=[b.get("name") for b in response.get("content", []) if b.get("type") == "tool_use"],
                  error=record.get("error"), input_tokens=record.get("input_tokens"),
                  output_tokens=record.get("output_tokens"), cache_write_tokens=record.get("cache_write_tokens"),
                  cache_read_tokens=record.get("cache_read_tokens"), cost_usd=record.get("cost_usd"),
                  latency_s=record.get("latency_s"))


# -- wrappers around the dependencies ------------------------------------------------------------------------------

class _Proxy:
    """Passes every attribute through to the wrapped object, setting included (a target may change its own
    state, and the wrapped target must see it)."""

    def __init__(self, inner: Any, recorder: Recorder):
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_recorder", recorder)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._inner, name, value)


class TracedSandbox(_Proxy):
    def run(self, command: str, **kwargs: Any):
        t0 = time.monotonic()
        try:
            result = self._inner.run(command, **kwargs)
        except BaseException as e:
            self._recorder.call("sandbox", command=command, duration_s=round(time.monotonic() - t0, 3),
                                error=encode_error(e))
            raise
        self._recorder.call("sandbox", command=command, exit_code=result.exit_code, duration_s=result.duration_s,
                            timed_out=result.timed_out, log_tail=result.output_tail[-LOG_TAIL:],
                            log_path=result.log_path, result=self._recorder.writer.stash(encode_result(result)))
        return result


class TracedTarget(_Proxy):
    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in TARGET_METHODS or not callable(attr):
            return attr
        recorder = self._recorder

        def call(*args: Any, **kwargs: Any) -> Any:
            ctx = CURRENT.get()
            nested = ctx is not None and ctx.in_target > 0
            if ctx is not None:
                ctx.in_target += 1
            t0 = time.monotonic()
            called = {"args": args, "kwargs": kwargs}
            fields_ = {"method": name, "nested": nested, "args": recorder.writer.stash(called),
                       "args_digest": digest(called)}
            try:
                result = attr(*args, **kwargs)
            except BaseException as e:
                recorder.call("target", **fields_, duration_s=round(time.monotonic() - t0, 3), error=encode_error(e))
                raise
            finally:
                if ctx is not None:
                    ctx.in_target -= 1
            recorder.call("target", **fields_, duration_s=round(time.monotonic() - t0, 3),
                          result=recorder.writer.stash(encode_result(result)))
            return result
        return call


class TracedKnowledgeBase(_Proxy):
    def query(self, text: str, k: int = 8, where: dict[str, Any] | None = None, **kwargs: Any):
        t0 = time.monotonic()
        results = self._inner.query(text, k=k, where=where, **kwargs)
        origins = [{key: r.get(key) for key in ("id", "kind", "repo", "path", "start_line", "end_line", "symbol")}
                   for r in results]
        self._recorder.call("kb", query=text, k=k, where=where, duration_s=round(time.monotonic() - t0, 3),
                            origins=origins, results=self._recorder.writer.stash(results))
        return results


    def get(self, ids: Any) -> list[dict[str, Any]]:
        t0 = time.monotonic()
        results = self._inner.get(ids)
        origins = [{key: r.get(key) for key in ("id", "kind", "repo", "path", "start_line", "end_line", "symbol")}
                   for r in results]
        self._recorder.call("kb", ids=list(ids), duration_s=round(time.monotonic() - t0, 3), origins=origins,
                            results=self._recorder.writer.stash(results))
        return results


class TracedSummaries(_Proxy):
    """A chunk's summary found (or not) in the cache decides whether the model is asked: replay needs each
    answer, since the cache has grown since the run (and a run that found a summary made no call for it)."""

    def get(self, chunk: Any) -> Any:
        from ..agents.summaries import chunk_key
        claims = self._inner.get(chunk)
        self._recorder.call("summaries", key=chunk_key(chunk), claims=claims)
        return claims


class TracedLedger(_Proxy):
    def record(self, row: dict[str, Any]) -> dict[str, Any]:
        recorded = self._inner.record(row)
        self._recorder.call("ledger", key=recorded.get("key"), id=recorded.get("id"),
                            decision=recorded.get("decision"), patch=self._recorder.writer.stash(recorded.get("patch")))
        return recorded


def _recorded_value(recorder: Recorder, kind: str, fn: Callable[[], Any]) -> Callable[[], Any]:
    """clock() and spent_usd() decide budgets inside nodes: replay needs the values they gave."""
    def wrapped() -> Any:
        value = fn()
        if CURRENT.get() is not None:
            recorder.call(kind, value=value)
        return value
    return wrapped


def start_tracing(deps: Any, directory: Path) -> Any:
    """RunDeps whose every node step, and every call made inside one, is recorded in directory/trace.jsonl."""
    writer = TraceWriter(directory)
    recorder = Recorder(writer)
    target = deps.target
    if target is not None:
        inner = copy.copy(target)  # a shallow copy whose sandbox is traced; the caller's target stays as it was
        if getattr(target, "sandbox", None) is not None:
            inner.sandbox = TracedSandbox(target.sandbox, recorder)
        target = TracedTarget(inner, recorder)
    llm = deps.llm
    if llm is not None and hasattr(llm, "on_call"):
        # A hook on the model object itself: the implementer and planner hold the same object.
        previous = llm.on_call

        def on_call(record: dict[str, Any]) -> None:
            recorder.on_llm_call(record)
            if previous is not None:
                previous(record)
        llm.on_call = on_call
    say = deps.say

    def traced_say(message: str) -> None:
        if CURRENT.get() is not None:
            recorder.call("say", message=message)
        say(message)

    described = deps.target.describe() if deps.target is not None else {}
    writer.write({"event": "run", "v": SCHEMA_VERSION, "pid": os.getpid(), "run_dir": str(directory),
                  "has": {"kb": deps.kb is not None, "llm": deps.llm is not None,
                          "summaries": getattr(deps, "summaries", None) is not None,
                          "implement": deps.implement is not None, "plan": deps.plan is not None},
                  "target": {"name": getattr(deps.target, "name", None), "describe": plain(described),
                             "repository": str(getattr(deps.target, "repository", "") or ""),
                             "objective": plain(getattr(deps.target, "objective", None)),
                             "hot_paths": list(getattr(deps.target, "hot_paths", ()) or ()),
                             "protected": list(getattr(deps.target, "protected", ()) or ())},
                  # Trees are read, not called: a replay reopens the same revisions to port the same code.
                  "fork_trees": {name: {"repo": str(getattr(t, "repo", "")), "revision": t.revision,
                                        "subdirs": list(getattr(t, "subdirs", ()))}
                                 for name, t in deps.fork_trees.items()}}, sync=True)
    return dataclasses.replace(
        deps, target=target, kb=TracedKnowledgeBase(deps.kb, recorder) if deps.kb is not None else None,
        ledger=TracedLedger(deps.ledger, recorder) if deps.ledger is not None else None,
        summaries=TracedSummaries(deps.summaries, recorder) if deps.summaries is not None else None,
        say=traced_say, clock=_recorded_value(recorder, "clock", deps.clock),
        spent_usd=_recorded_value(recorder, "spent_usd", deps.spent_usd),
        wrap_node=lambda name, fn: recorder.wrap_node(name, deps.wrap_node(name, fn)),
        extra={**deps.extra, "trace": recorder})
