"""All graph state and its reducers, in one place.

Values are plain data (dicts, lists, strings, numbers) so that the SQLite checkpointer stores them and an old
checkpoint loads whatever the code has become.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict


def extend_or_reset(left: list | None, right: list | None) -> list:
    """Fan-in of a wave's experiments: branches append; `None` (sent by decide) starts the next wave empty."""
    if right is None:
        return []
    return (left or []) + right


class RunState(TypedDict, total=False):
    run_id: str
    options: dict[str, Any]             # the run's options (budgets, workers, bench shape, offline...)
    started_at: float                   # wall-clock seconds; the minutes budget counts from here
    baseline: dict[str, Any]            # records.Baseline as a dict (commit, variant, checks, note) + "metrics"
    profile: dict[str, Any]             # records.Profile as a dict: facts, metrics, queries, details
    calibration: str                    # the A/A noise floor, in words
    noise: dict[str, dict[str, Any]]    # the A/A noise per test {"pair_sd", "df"}: every verdict pools it
    best: dict[str, Any]                # {"commit", "variant", "stack": [experiment ids], "metrics"}
    findings: Annotated[list[dict[str, Any]], operator.add]
    hypotheses: list[dict[str, Any]]    # the ranked queue; replaced by each hypothesize step
    tried: Annotated[list[str], operator.add]          # hypothesis keys already run
    wave: int
    wave_results: Annotated[list[dict[str, Any]], extend_or_reset]
    experiments: int                    # finished experiments
    kept: Annotated[list[str], operator.add]           # experiment ids kept, in order
    research_round: int
    last_wave_won: bool
    stop_reason: str
    candidate_stats: dict[str, Any]     # the last proposal: candidates per source, drops per reason, needs an LLM
    ideas: list[dict[str, Any]]         # the planner's hypotheses not run yet; they wait for later waves
    questions: list[str]                # the planner's knowledge-base queries for the next reading round
    asked: Annotated[list[str], operator.add]          # questions already read
    confirmation: dict[str, Any]        # the final stack re-measured against the baseline (confirm node)
