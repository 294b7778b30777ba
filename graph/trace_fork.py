"""Fork: a new run that starts from a checkpoint of an earlier run, with changed options (time travel).

The parent's thread history up to that checkpoint is copied into the new run's own checkpointer through
LangGraph's API (get_tuple / put), so the parent's run directory is only read; the changed options then enter as
an `update_state` made as the node that produced the checkpoint, so LangGraph recomputes what runs next (a wave's
experiments are sent again with the new options). The new ledger holds the parent's experiments from before the
fork. meta.json names the parent run, step and checkpoint; `readfirst run --resume NEW_ID` continues it.
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from .runner import open_checkpointer, read_meta, write_meta
from .trace import TraceError
from .trace_read import Trace, checkpoint_history
from .trace_replay import copy_ledger_before, steps_from

# What a child inherits from its parent's meta.json; status, pid, summary and errors are the parent's own.
# The LLM's spending starts again: the checkpoint does not hold what the parent spent before the fork.
INHERITED = ("source", "ref", "target", "target_spec", "model", "quant", "forks", "fork_subdirs", "as_trees",
             "chroma_url", "papers", "offline", "llm_model", "llm_max_reply", "reading_list",
             "backend_gaps")
# Options of the llama.cpp target that a fork may change (the benchmark's shape): they live in its spec.
TARGET_OPTIONS = ("n_prompt", "n_gen", "threads")


def fork_run(parent_dir: Path, new_dir: Path, *, from_step: int, overrides: dict[str, Any],
             target_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Create runs/<new id> from `parent_dir` at the checkpoint step `from_step` starts from; return its meta.
    `target_overrides` change the llama.cpp target's benchmark shape (TARGET_OPTIONS)."""
    from .runner import spec_of
    from .workflow import RunDeps, RunOptions, build_graph
    known = {f.name for f in fields(RunOptions)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TraceError(f"unknown run option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    target_overrides = dict(target_overrides or {})
    spec = spec_of(read_meta(parent_dir, strict=True))
    if target_overrides:
        unknown = sorted(set(target_overrides) - set(TARGET_OPTIONS))
        if unknown or spec.get("name") != "llama.cpp":
            raise TraceError(f"{', '.join(unknown or sorted(target_overrides))}: not an option of the "
                             f"{spec.get('name')} target")
        spec = {**spec, "options": {**(spec.get("options") or {}), **target_overrides}}
    trace = Trace(parent_dir)
    start, later = steps_from(trace, from_step)
    history = checkpoint_history(parent_dir, trace.thread_id)
    parents = dict(history)
    if start.starts_from not in parents:
        raise TraceError(f"the checkpoint of step {from_step} is not in run {parent_dir.name}'s checkpoints")
    lineage = [start.starts_from]
    while parents.get(lineage[-1]):
        lineage.append(parents[lineage[-1]])
    lineage.reverse()
    # The node whose step produced the checkpoint: the update is made as that node, so that its edges decide
    # what runs next. None before the first node (the checkpoint of the run's input).
    made_by = sorted({s.node for s in trace.ordered() if s.starts_from == parents.get(start.starts_from)})
    new_id = new_dir.name
    new_dir.mkdir(parents=True)
    src_saver, src_conn = open_checkpointer(parent_dir)
    saver, conn = open_checkpointer(new_dir)
    with closing(src_conn), closing(conn):
        previous: str | None = None
        for checkpoint_id in lineage:
            got = src_saver.get_tuple({"configurable": {"thread_id": trace.thread_id, "checkpoint_ns": "",
                                                        "checkpoint_id": checkpoint_id}})
            config = {"configurable": {"thread_id": new_id, "checkpoint_ns": "",
                                       **({"checkpoint_id": previous} if previous else {})}}
            saver.put(config, got.checkpoint, got.metadata, got.checkpoint.get("channel_versions", {}))
            previous = checkpoint_id
        values = got.checkpoint["channel_values"]
        options = {**(values.get("options") or asdict(RunOptions())), **overrides}
        stub = RunDeps(target=None, ledger=None, run_dir=new_dir)  # compiled, never run
        graph = build_graph(stub, checkpointer=saver)
        at = {"configurable": {"thread_id": new_id, "checkpoint_ns": "", "checkpoint_id": start.starts_from}}
        graph.update_state(at, {"options": options, "run_id": new_id},
                           as_node=made_by[0] if len(made_by) == 1 else None)
    copy_ledger_before(trace, parent_dir / "ledger.sqlite", new_dir / "ledger.sqlite", later).close()
    parent_meta = read_meta(parent_dir, strict=True)
    meta = {"run_id": new_id, "created_at": time.time(), **{k: parent_meta[k] for k in INHERITED if k in parent_meta},
            "target_spec": spec, "status": "forked", "options": options, "budget_usd": options.get("budget_usd"),
            "parent": {"run_id": parent_dir.name, "step": from_step, "node": start.node,
                       "checkpoint_id": start.starts_from, "changed": {**overrides, **target_overrides}}}
    meta.setdefault("offline", bool(options.get("offline")))
    write_meta(new_dir, meta)
    return meta
