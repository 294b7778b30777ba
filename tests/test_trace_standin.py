"""An in-process stand-in for the llama.cpp target, for the trace's unit tests (no tests of its own).

Replay promises no builds: what it must prove is that the graph is re-executed with every target result served
from the recording, which a stand-in shows as well as llama.cpp does, in milliseconds. The real target is
recorded and replayed once, in test_trace_docker.py. The stand-in runs its "commands" through a sandbox that
counts them, like the real target runs cmake and llama-bench, so a test can see that replay ran none.
"""

from __future__ import annotations

import math
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from readfirst.config import Paths
from readfirst.graph.ledger import Ledger
from readfirst.graph.runner import execute, write_meta
from readfirst.graph.trace import start_tracing
from readfirst.graph.workflow import RunDeps, RunOptions
from readfirst.sandbox.llama_cpp import BASE_CMAKE, BenchOptions, native_config
from readfirst.sandbox.records import (BenchResult, BenchSample, BuildConfig, BuildResult, CommandResult, KLDResult,
                                       TestCase, TestResult)

SMALL = RunOptions(budget_experiments=2, calibration_pairs=0, max_runs=16, n_prompt=16, n_gen=8, max_research_rounds=1)


class CountingSandbox:
    def __init__(self, slow_bench_s: float = 0.0):
        self.commands: list[str] = []
        self.slow_bench_s = slow_bench_s

    def run(self, command: str, **_: Any) -> CommandResult:
        self.commands.append(command)
        if command.startswith("llama-bench") and self.slow_bench_s:
            time.sleep(self.slow_bench_s)
        out = '{"read_gbs": 40.0}\n' if command.startswith("gcc") else f"ran {command}\n"
        return CommandResult(command, 0, 0.01, out, len(out), False, False, None)


class StandInTarget:
    """Answers like LlamaCppTarget: any build configuration changed from the baseline's is 8% faster."""
    name = "llama.cpp"
    protected = ("tests/*",)

    def __init__(self, home: Path, source: Path, sandbox: CountingSandbox):
        self.paths = Paths(home, home / "cache")
        baseline = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                  check=True).stdout.strip()
        self.source = SimpleNamespace(path=source, baseline=baseline, key="standin")
        self.config = native_config()
        self.sandbox = sandbox
        self.benches = 0

    def prepare(self) -> str:
        return self.source.baseline

    def has_build(self, commit: str, config: BuildConfig | None = None) -> bool:
        return False  # the stand-in keeps no artifacts: every run checks its baseline

    def commit_patch(self, patch: str, *, base: str | None = None, message: str = "") -> str:
        raise AssertionError("the stand-in takes no patches")

    def build(self, commit: str, *, worker: int = 0, config: BuildConfig | None = None, **_: Any) -> BuildResult:
        r = self.sandbox.run(f"cmake --build {commit[:8]}")
        return BuildResult(True, "ok", 0.5, r.output_tail, config or self.config, commit, None)

    def test(self, commit: str, *, worker: int = 0, config: BuildConfig | None = None, **_: Any) -> TestResult:
        self.sandbox.run("ctest")
        return TestResult(True, [TestCase("test-rope", True, 0.1)], "ok", 0.1)

    def bench(self, commit: str, *, model: Path, options: BenchOptions = BenchOptions(),
              config: BuildConfig | None = None, worker: int = 0) -> BenchResult:
        self.sandbox.run(f"llama-bench -t {options.threads}")
        self.benches += 1
        config = config or self.config
        fast = 1.08 if set(config.cmake_flags) - set(BASE_CMAKE) else 1.0  # any changed build wins
        wobble = 1 + 0.004 * math.sin(self.benches)  # deterministic noise: the statistics need some spread
        tg = 40.0 * fast * wobble
        samples = [BenchSample(f"pp{options.n_prompt}", options.n_prompt, 0, [200.0 * wobble], 200.0 * wobble, 0.1),
                   BenchSample(f"tg{options.n_gen}", 0, options.n_gen, [tg], tg, 0.1)]
        return BenchResult(samples, options.threads, options.flash_attn, "stand-in CPU", commit[:8], config, model.name)

    def kld_base(self, commit: str, *, model: Path, **_: Any) -> Path:
        self.sandbox.run("llama-perplexity --kl-divergence-base")
        path = self.paths.cache / "kld" / "base.kld"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("logits")
        return path

    def logits_check(self, commit: str, *, model: Path, base_logits: Path, **_: Any) -> KLDResult:
        self.sandbox.run("llama-perplexity --kl-divergence")
        return KLDResult(1e-6, 2e-5, 1e-5, 99.9, True, "KLD ok")


def make_source(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "README.md").write_text("stand-in source\n")
    for args in (["init", "-q"], ["add", "README.md"],
                 ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "baseline"]):
        subprocess.run(["git", "-C", str(directory), *args], check=True, capture_output=True)
    return directory


def make_model_file(directory: Path) -> Path:
    import gguf
    import numpy as np
    path = directory / "models" / "standin.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_tensor("token_embd.weight", np.zeros((32, 16), dtype=np.float32))
        writer.add_tensor("blk.0.ffn_up.weight", np.zeros((16, 16), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def record_run(home: Path, run_id: str = "run-a", *, options: RunOptions = SMALL, kb: Any = None, llm: Any = None,
               sandbox: CountingSandbox | None = None, plan: Any = None,
               implement: Any = None) -> tuple[Path, dict[str, Any], StandInTarget]:
    """A whole traced run of the real graph and runner on the stand-in target; returns its directory."""
    source = home / "source"
    if not source.exists():
        make_source(source)
    target = StandInTarget(home, source, sandbox or CountingSandbox())
    directory = home / "runs" / run_id
    directory.mkdir(parents=True)
    meta = {"run_id": run_id, "created_at": time.time(), "source": str(source), "status": "starting",
            "options": asdict(options)}
    write_meta(directory, meta)
    ledger = Ledger(directory / "ledger.sqlite")
    deps = RunDeps(target=target, ledger=ledger, run_dir=directory, kb=kb, llm=llm, plan=plan, implement=implement,
                   make_model=lambda _t, _c: make_model_file(home / "cache"))
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
    deps = start_tracing(RunDeps(target=target, ledger=ledger, run_dir=directory,
                                 make_model=lambda _t, _c: make_model_file(home / "cache")), directory)
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
