"""An in-process stand-in target, for the trace's and the loop's unit tests (no tests of its own).

It satisfies the Target interface (readfirst.protocols.Target) and nothing more: no paths, source or build
configuration attributes, so that the graph, the experiment pipeline and the trace are shown to need only the
interface. Replay promises no builds: what it must prove is that the graph is re-executed with every target result
served from the recording, which a stand-in shows as well as llama.cpp does, in milliseconds. The real target is
recorded and replayed once, in test_trace_docker.py. The stand-in runs its "commands" through a sandbox that
counts them, like a real target runs its build and benchmark, so a test can see that replay ran none.
"""

from __future__ import annotations

import math
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from readfirst.graph.ledger import Ledger
from readfirst.graph.runner import execute, write_meta
from readfirst.graph.trace import start_tracing
from readfirst.graph.workflow import RunDeps, RunOptions
from readfirst.records import (Baseline, BuildConfig, BuildResult, CheckResult, Checks, CommandResult,
                               Measurement, Objective, Profile)

SMALL = RunOptions(budget_experiments=2, calibration_pairs=0, max_runs=16, max_research_rounds=1)


class CountingSandbox:
    def __init__(self, slow_bench_s: float = 0.0):
        self.commands: list[str] = []
        self.slow_bench_s = slow_bench_s

    def run(self, command: str, **_: Any) -> CommandResult:
        self.commands.append(command)
        if command.startswith("bench") and self.slow_bench_s:
            time.sleep(self.slow_bench_s)
        out = f"ran {command}\n"
        if command.startswith("make") and "test" not in command:  # a build log as long as a real one's tail
            out += "".join(f"[{i:3d}%] Building C object src/unit{i}.c.o\n" for i in range(100)) * 3
        return CommandResult(command, 0, 0.01, out, len(out), False, False, None)

    def gc(self, *, everything: bool = False) -> int:
        return 0


class StandInTarget:
    """A project whose variant {"flags": [...], "threads": n} is built, checked and measured by counted commands;
    any build flag added to the baseline's makes it 8% faster. Patches apply as real commits."""
    name = "stand-in"
    objective = Objective(metric="tg", direction="higher", guards=None, unit="t/s")
    hot_paths = ("src/*",)
    protected = ("tests/*",)
    stale_flags: tuple[str, ...] = ()

    def __init__(self, home: Path, source: Path, sandbox: CountingSandbox):
        self.repository = source
        self.baseline_commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True,
                                              text=True, check=True).stdout.strip()
        self.sandbox = sandbox
        self.benches = 0

    def prepare(self) -> Baseline:
        variant = {"flags": [], "threads": 2}
        build = self.build(self.baseline_commit, variant)
        return Baseline(self.baseline_commit, variant, self.checks(self.baseline_commit, variant, baseline=None),
                        "", build.duration_s)

    def commit_patch(self, patch: str, *, base: str, message: str = "") -> str:
        from readfirst.sandbox.patch import commit_patch
        return commit_patch(self.repository, patch, base=base, message=message, protected=self.protected)

    def build(self, commit: str, variant: dict[str, Any], *, worker: int = 0) -> BuildResult:
        clean = " --clean" if variant.get("clean") else ""
        r = self.sandbox.run(f"make {commit[:8]} {' '.join(variant['flags'])}".strip() + clean)
        return BuildResult(True, "ok", 0.5, r.output_tail,
                           BuildConfig(list(variant["flags"]), "", "stand-in", bool(clean)), commit, None)

    def clean(self, variant: dict[str, Any]) -> dict[str, Any]:
        return {**variant, "clean": True}

    def checks(self, commit: str, variant: dict[str, Any], *, baseline: Baseline | None, worker: int = 0) -> Checks:
        self.sandbox.run("make test")
        return Checks([CheckResult("tests", True, "", 0.1)])

    def measure(self, commit: str, variant: dict[str, Any], metrics=None) -> Measurement:
        self.sandbox.run(f"bench -t {variant['threads']}")
        self.benches += 1
        # a flag in stale_flags is fast only in an incremental build (a stale object's win, gone when clean)
        won = [f for f in variant["flags"] if not (variant.get("clean") and f in self.stale_flags)]
        fast = 1.08 if won else 1.0
        wobble = 1 + 0.004 * math.sin(self.benches)  # deterministic noise: the statistics need some spread
        return Measurement({"pp16": 200.0 * wobble, "tg8": 40.0 * fast * wobble}, {"cpu": "stand-in CPU"})

    def profile(self, baseline: Baseline) -> Profile:
        m = self.measure(baseline.commit, baseline.variant)
        return Profile([f"The stand-in generates {m.values['tg8']:.1f} t/s."], m.values, {}, {"setup": m.setup})

    def variants(self, variant: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        if "-DFAST=ON" not in variant["flags"]:
            out.append({"kind": "build", "title": "build with -DFAST=ON", "rationale": "",
                        "change": {"flags_add": ["-DFAST=ON"]}})
        for t in (1, 4):
            if variant["threads"] != t:
                out.append({"kind": "runtime", "title": f"run with {t} threads", "rationale": "",
                            "change": {"threads": t}})
        return out

    def apply(self, variant: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
        return {"flags": variant["flags"] + list(change.get("flags_add", [])),
                "threads": change.get("threads", variant["threads"])}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "repository": str(self.repository), "baseline": self.baseline_commit}


def make_source(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "README.md").write_text("stand-in source\n")
    for args in (["init", "-q"], ["add", "README.md"],
                 ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "baseline"]):
        subprocess.run(["git", "-C", str(directory), *args], check=True, capture_output=True)
    return directory


def record_run(home: Path, run_id: str = "run-a", *, options: RunOptions = SMALL, kb: Any = None, llm: Any = None,
               sandbox: CountingSandbox | None = None, plan: Any = None, implement: Any = None,
               target_class: type | None = None, summaries: Any = None) -> tuple[Path, dict[str, Any], StandInTarget]:
    """A whole traced run of the real graph and runner on the stand-in target; returns its directory."""
    source = home / "source"
    if not source.exists():
        make_source(source)
    target = (target_class or StandInTarget)(home, source, sandbox or CountingSandbox())
    directory = home / "runs" / run_id
    directory.mkdir(parents=True)
    meta = {"run_id": run_id, "created_at": time.time(), "source": str(source), "status": "starting",
            "options": asdict(options)}
    write_meta(directory, meta)
    ledger = Ledger(directory / "ledger.sqlite")
    deps = RunDeps(target=target, ledger=ledger, run_dir=directory, kb=kb, llm=llm, plan=plan, implement=implement,
                   summaries=summaries)
    deps = start_tracing(deps, directory)
    try:
        summary = execute(deps, directory, run_id, options=options, meta=meta)
    finally:
        ledger.close()
    return directory, summary, target


def continue_run(home: Path, run_id: str) -> dict[str, Any]:
    """`readfirst run --resume` on the stand-in: what a fork is continued with."""
    from readfirst.graph.runner import read_meta
    directory = home / "runs" / run_id
    target = StandInTarget(home, home / "source", CountingSandbox())
    ledger = Ledger(directory / "ledger.sqlite")
    deps = start_tracing(RunDeps(target=target, ledger=ledger, run_dir=directory), directory)
    try:
        return execute(deps, directory, run_id, options=None, meta=read_meta(directory))
    finally:
        ledger.close()


class StandInKnowledgeBase:
    """Two chunks for every query: enough for the researcher to ask the LLM."""

    def query(self, text: str, k: int = 8, where: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        kinds = (where or {}).get("kind")
        kind = kinds[0] if isinstance(kinds, list) else (kinds or "paper")
        return [{"id": f"{kind}-{i}-{len(text)}", "kind": kind, "repo": "", "path": f"doc{i}.md",
                 "start_line": 1, "end_line": 9, "symbol": "", "text": f"Evidence {i} about {text}.",
                 "title": f"Doc {i}"} for i in range(2)][:k]

    def get(self, ids: Any) -> list[dict[str, Any]]:
        return [{"id": i, "kind": "fork-code", "repo": "ik_llama.cpp", "path": "ggml/src/iqk/iqk_mul_mat.cpp",
                 "start_line": 10, "end_line": 90, "symbol": "mul_mat_q4_0", "text": f"the whole of chunk {i}"}
                for i in ids]

    def count(self) -> int:
        return 2
