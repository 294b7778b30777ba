"""Reading a run's trace: its steps with their calls, the checkpoints they start from and end at, and the
figures `trace list` shows. Readers open nothing for writing."""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from langgraph.checkpoint.sqlite import SqliteSaver

from ..sandbox.readback import open_inside, read_bytes_inside
from .checkpoint_serde import PlainDataSerializer
from .runner import refuse_unless_plain
from .trace import TRACE_FILE, TraceError

# A blob is one recorded prompt, reply or result; past this it is not something this run wrote.
MAX_BLOB_BYTES = 64 * 2**20


@dataclass
class Step:
    step: int
    node: str
    starts_from: str | None
    input_digest: str
    at: float
    task_id: str | None = None
    payload: Any = None
    end: dict[str, Any] | None = None        # the step_end event; None when the run stopped inside the step
    calls: list[dict[str, Any]] = field(default_factory=list)
    ends_at: str | None = None

    @property
    def finished(self) -> bool:
        return self.end is not None and "error" not in self.end

    @property
    def status(self) -> str:
        if self.end is None:
            return "interrupted"
        return "error" if "error" in self.end else "ok"

    @property
    def duration_s(self) -> float | None:
        return None if self.end is None else self.end.get("duration_s")

    @property
    def cost_usd(self) -> float:
        return sum(float(c.get("cost_usd") or 0) for c in self.calls if c["kind"] == "llm")

    def count(self, kind: str) -> int:
        return sum(1 for c in self.calls if c["kind"] == kind)

    def experiment_ids(self) -> list[str]:
        ids = [c["id"] for c in self.calls if c["kind"] == "ledger" and c.get("id")]
        return ids


class Trace:
    """A run directory's trace.jsonl as steps; blobs are loaded on demand."""

    def __init__(self, directory: Path, *, checkpoints: bool = True):
        self.directory = directory
        self.events = read_events(directory)
        self.runs = [e for e in self.events if e.get("event") == "run"]
        self.steps: dict[int, Step] = {}
        self._run_of: dict[int, dict[str, Any]] = {}  # step -> the run event (process) that ran it
        current: dict[str, Any] = {}
        for e in self.events:
            kind = e.get("event")
            if kind == "run":
                current = e
            elif kind == "step_start":
                self._run_of[e["step"]] = current
                self.steps[e["step"]] = Step(e["step"], e["node"], e.get("starts_from"), e.get("input_digest", ""),
                                             e.get("at", 0.0), e.get("task_id"), e.get("payload"))
            elif kind == "step_end" and e.get("step") in self.steps:
                self.steps[e["step"]].end = e
            elif kind == "call" and e.get("step") in self.steps:
                self.steps[e["step"]].calls.append(e)
        if checkpoints:  # `trace list` needs only the figures: it skips reading every run's checkpoints
            self._resolve_ends()

    @property
    def info(self) -> dict[str, Any]:
        return self.runs[0] if self.runs else {}

    def info_for(self, step: int) -> dict[str, Any]:
        """What the process that ran `step` recorded about its dependencies (a resumed run has several)."""
        return self._run_of.get(step) or self.info

    def blob(self, value: Any) -> Any:
        return load_blob(self.directory, value)

    def step(self, number: int) -> Step:
        if number not in self.steps:
            last = max(self.steps, default=0)
            raise TraceError(f"run {self.directory.name} has no step {number} (its steps are 1..{last})")
        return self.steps[number]

    def ordered(self) -> list[Step]:
        return [self.steps[n] for n in sorted(self.steps)]

    def update(self, step: Step) -> Any:
        return self.blob((step.end or {}).get("update"))

    def _resolve_ends(self) -> None:
        """The checkpoint a step ends at is the first child of the one it starts from."""
        children = checkpoint_children(self.directory, self.thread_id)
        for s in self.steps.values():
            if s.end is not None and s.starts_from in children:
                s.ends_at = children[s.starts_from][0]

    @property
    def thread_id(self) -> str:
        return self.directory.name

    def summary(self) -> dict[str, Any]:
        steps = self.ordered()
        start = min((s.at for s in steps), default=None)
        stop = max((s.at + (s.duration_s or 0) for s in steps), default=None)
        llm = [c for s in steps for c in s.calls if c["kind"] == "llm"]
        return {"steps": len(steps), "duration_s": None if start is None else round(stop - start, 1),
                "experiments": sum(len(s.experiment_ids()) for s in steps),
                "llm_calls": len(llm), "cost_usd": round(sum(float(c.get("cost_usd") or 0) for c in llm), 6),
                "sandbox_commands": sum(s.count("sandbox") for s in steps),
                "interrupted_steps": [s.step for s in steps if s.end is None]}


def has_trace(directory: Path) -> bool:
    return (directory / TRACE_FILE).exists()


def _saver(directory: Path) -> tuple[SqliteSaver, sqlite3.Connection] | None:
    path = directory / "checkpoints.sqlite"
    if not os.path.lexists(path):
        return None
    refuse_unless_plain(path)
    # Read-only: showing a run must never change it, even while it runs.
    conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, check_same_thread=False, timeout=30)
    return SqliteSaver(conn, serde=PlainDataSerializer(path)), conn


def checkpoint_children(directory: Path, thread_id: str) -> dict[str, list[str]]:
    """parent checkpoint id -> its children, oldest first, from LangGraph's own history of the thread."""
    opened = _saver(directory)
    if opened is None:
        return {}
    saver, conn = opened
    children: dict[str, list[str]] = {}
    with closing(conn):
        try:
            tuples = list(saver.list({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}))
        except sqlite3.Error:
            return {}
    for t in reversed(tuples):  # list() is newest first
        parent = (t.parent_config or {}).get("configurable", {}).get("checkpoint_id")
        if parent:
            children.setdefault(parent, []).append(t.config["configurable"]["checkpoint_id"])
    return children


def checkpoint_history(directory: Path, thread_id: str) -> list[tuple[str, str | None]]:
    """(checkpoint id, parent id) of the thread, oldest first."""
    opened = _saver(directory)
    if opened is None:
        return []
    saver, conn = opened
    with closing(conn):
        tuples = list(saver.list({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}))
    return [(t.config["configurable"]["checkpoint_id"],
             (t.parent_config or {}).get("configurable", {}).get("checkpoint_id")) for t in reversed(tuples)]


def state_at(directory: Path, thread_id: str, checkpoint_id: str | None) -> dict[str, Any] | None:
    """The graph state held by a checkpoint: what a step was given."""
    if not checkpoint_id:
        return None
    opened = _saver(directory)
    if opened is None:
        return None
    saver, conn = opened
    with closing(conn):
        got = saver.get_tuple({"configurable": {"thread_id": thread_id, "checkpoint_ns": "",
                                                "checkpoint_id": checkpoint_id}})
    if got is None:
        return None
    return {k: v for k, v in got.checkpoint["channel_values"].items() if not k.startswith(("__", "branch:"))}


def read_events(directory: Path) -> list[dict[str, Any]]:
    """Every complete event; a torn last line (a run killed mid-write) is skipped."""
    path = directory / TRACE_FILE
    if not path.exists():
        raise TraceError(f"run {directory.name} has no trace (it ran before tracing, or never started a step)")
    events = []
    try:
        # A run folder may come from someone else: its trace is read as a regular file inside it, never through a
        # link or from a FIFO that would wait for ever.
        stream = open_inside(directory, TRACE_FILE)
    except OSError as e:
        raise TraceError(f"run {directory.name}'s trace cannot be read: {e}") from None
    with stream as f:
        for raw in f:
            try:
                event = json.loads(raw.decode("utf-8", errors="replace"))
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                events.append(event)
    return events


def load_blob(directory: Path, value: Any) -> Any:
    """The data behind a {"$blob": ...} reference (or the value itself when it is inline)."""
    if isinstance(value, dict) and set(value) == {"$blob"}:
        try:
            # Only a plain file of this run's folder: a tampered trace naming ../../ or a link reads nothing else.
            return json.loads(read_bytes_inside(directory, str(value["$blob"]), limit=MAX_BLOB_BYTES))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return {"missing": value["$blob"]}
    return value
