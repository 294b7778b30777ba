"""Typed records that cross boundaries: what a sandbox command, a build, a check and a measurement produced, and
what a target says about itself (its objective, its baseline, its profile).

Neutral ground: the seams (protocols.py), the roles, the graph and storage import these without importing the
sandbox or docker.

Each serializes with its schema version; loading tolerates fields it does not know, so old ledgers and traces
stay readable when a record grows.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

SCHEMA_VERSION = 1

T = TypeVar("T")


def to_dict(record: Any) -> dict[str, Any]:
    data = dataclasses.asdict(record)
    data["schema_version"] = SCHEMA_VERSION
    return data


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build `cls` from a dict written by any schema version: unknown keys are dropped, nested records rebuilt."""
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {}
    for name, value in data.items():
        if name not in known:
            continue
        nested = _NESTED.get((cls.__name__, name))
        mapped = _NESTED_MAPS.get((cls.__name__, name))
        if mapped is not None and isinstance(value, dict):
            value = {k: from_dict(mapped, v) if isinstance(v, dict) else v for k, v in value.items()}
        elif nested is not None and value is not None:
            value = [from_dict(nested, v) for v in value] if isinstance(value, list) else from_dict(nested, value)
        kwargs[name] = value
    return cls(**kwargs)


@dataclass(frozen=True)
class Mount:
    """A host path seen inside a sandbox at `target`."""
    host: Path
    target: str
    read_only: bool = True


@dataclass
class CommandResult:
    """One command run in a sandbox. A failing command is a result, not an error."""
    command: str
    exit_code: int
    duration_s: float
    output_tail: str
    output_bytes: int
    truncated: bool
    timed_out: bool
    log_path: str | None = None
    oom_killed: bool = False  # the engine killed it for exceeding its memory limit
    disk_exceeded: str = ""  # which writable mount it wrote past its limit (the sandbox killed it), or ""
    # The lines of the whole output holding the string run() was asked to collect (METRIC lines), in order; and
    # whether some could not be kept (too many, one too long, the stream unfinished): then they say nothing sure.
    lines: list[str] = field(default_factory=list)
    lines_capped: bool = False
    # Other processes' CPU time during the run, as a share of its CPUs (sandbox.host_load); None: not known.
    foreign_share: float | None = None
    retakes: int = 0  # a measurement taken again because the machine was busy (sandbox.host_load.LoadWatch)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.oom_killed and not self.disk_exceeded


@dataclass
class BuildConfig:
    """How a target is built; recorded with every result so that results say what they measured."""
    cmake_flags: list[str] = field(default_factory=list)
    c_flags: str = ""
    note: str = ""
    # Made from nothing: a fresh build directory and no compiler cache (the confirmation's builds). An
    # incremental build can link stale objects, and a cached one can hide that a change does not compile alone.
    clean: bool = False


@dataclass
class BuildResult:
    ok: bool
    stage: str  # "ok" | "configure" | "compile" | "link" | "timeout" | "out of memory"
    duration_s: float
    log_tail: str
    config: BuildConfig
    commit: str
    log_path: str | None = None
    reused: bool = False  # an existing build of the same commit and configuration, not built again


@dataclass
class TestCase:
    __test__ = False  # a record, not a pytest class
    name: str
    passed: bool
    duration_s: float


@dataclass
class TestResult:
    __test__ = False
    ok: bool
    cases: list[TestCase]
    log_tail: str
    duration_s: float


@dataclass
class KLDResult:
    """Candidate logits against the baseline's, from llama-perplexity --kl-divergence."""
    mean_kld: float
    max_kld: float
    p999_kld: float
    same_top_p: float  # percent of tokens whose top-1 token is the baseline's
    ok: bool
    log_tail: str = ""


@dataclass
class BenchSample:
    test: str          # "pp512" | "tg128" ...
    n_prompt: int
    n_gen: int
    samples_ts: list[float]  # tokens per second, one per repetition
    mean_ts: float
    stddev_ts: float


@dataclass
class BenchResult:
    samples: list[BenchSample]
    threads: int
    flash_attn: bool
    cpu: str
    build_commit: str
    config: BuildConfig
    model: str
    raw: list[dict[str, Any]] = field(default_factory=list)
    cpus: str = ""  # the CPUs the benchmark was pinned to ("0,1"); empty: not pinned
    duration_s: float | None = None  # the llama-bench command's own run time
    foreign_share: float | None = None  # as Measurement's
    retakes: int = 0

    def get(self, test: str) -> BenchSample | None:
        return next((s for s in self.samples if s.test == test), None)


@dataclass
class CheckResult:
    """One correctness check of a build (a test suite, a logits comparison): passed or not, and why."""
    name: str
    passed: bool
    reason: str = ""          # one sentence when it failed
    duration_s: float = 0.0
    evidence: dict[str, Any] = field(default_factory=dict)  # what the check saw (cases, KLD figures, log tail)


@dataclass
class Checks:
    """Every check of one build, in the target's order; the first failure decides."""
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.passed for c in self.results)

    def first_failure(self) -> CheckResult | None:
        return next((c for c in self.results if not c.passed), None)

    def get(self, name: str) -> CheckResult | None:
        return next((c for c in self.results if c.name == name), None)


@dataclass
class Measurement:
    """One run of a target's benchmark: a value per named metric, and the setup it ran on."""
    values: dict[str, float]
    setup: dict[str, Any] = field(default_factory=dict)  # cpu, threads, pinned cpus... fixed for a run
    # Seconds the benchmark itself ran (in the sandbox, after it had the machine): what an evaluator's time
    # budget counts, so that waiting for another process's benchmark neither stops a verdict nor makes a
    # replay (which serves this figure back) decide otherwise. None: not known.
    duration_s: float | None = None
    # Seconds of work the benchmark's own figures account for (llama.cpp: tokens / tokens per second, summed),
    # to hold against duration_s, the host's clock: code under test runs inside the benchmark and can rewrite
    # its figures, not the host's clock. None: the benchmark's figures imply no time.
    claimed_s: float | None = None
    # What every run of one benchmark shows whatever the build (a readfirst.toml bench: how many METRIC lines it
    # printed per name). A candidate whose runs differ from the baseline's steady one ran another benchmark, or
    # its code printed figures of its own. Empty: nothing to compare.
    signature: dict[str, Any] = field(default_factory=dict)
    # Other processes' share of the benchmark's CPUs while it ran (sandbox.host_load), the times it was retaken
    # because that share was too high, and whether it stayed too high: a contaminated figure is kept (the machine
    # never got quiet) but is not one to reason from. None: not known (a remote engine).
    foreign_share: float | None = None
    retakes: int = 0
    contaminated: bool = False


def metric_matches(name: str, key: str) -> bool:
    """Whether a measured metric is the one a key names: the same name, or a prefix of it ("tg" is "tg128")."""
    return name == key or name.startswith(key)


def in_paths(path: str, globs: Sequence[str]) -> bool:
    """Whether a repository path is among `globs` (fnmatch, `*` crosses folders); a glob starting with `!`
    takes back what the earlier ones matched, as in .gitignore ("ggml/src/ggml-cpu/*",
    "!ggml/src/ggml-cpu/arch/*", "ggml/src/ggml-cpu/arch/x86/*")."""
    inside = False
    for g in globs:
        if g.startswith("!"):
            inside = inside and not fnmatch.fnmatchcase(path, g[1:])
        elif fnmatch.fnmatchcase(path, g):
            inside = True
    return inside


@dataclass
class Guard:
    """A metric that may not get worse by more than `max_regression` (0.03 = 3%)."""
    max_regression: float = 0.03
    direction: str = "higher"  # "higher" or "lower" is better


@dataclass
class Objective:
    """What a target is optimized for: one metric (a name, or a prefix: "tg" matches "tg128"), its direction,
    and the guards. `guards` None: every other measured metric is guarded at `default_regression`."""
    metric: str
    direction: str = "higher"
    guards: dict[str, Guard] | None = None
    min_effect: float = 0.01
    default_regression: float = 0.03
    unit: str = ""

    def lower_is_better(self) -> tuple[str, ...]:
        lower = [self.metric] if self.direction == "lower" else []
        return tuple(lower + [m for m, g in (self.guards or {}).items() if g.direction == "lower"])

    def uses(self, metric: str) -> bool:
        """Whether a measured metric takes part in the decision (the objective, or a guard)."""
        named = [self.metric] if self.guards is None else [self.metric, *self.guards]
        return self.guards is None or any(metric_matches(metric, m) for m in named)


@dataclass
class Baseline:
    """The baseline as a target established it: its commit and variant, the checks it passed, and the reason
    when it is not the configuration first tried (a fallback)."""
    commit: str
    variant: dict[str, Any]
    checks: Checks
    note: str = ""
    build_s: float = 0.0


@dataclass
class Profile:
    """What a target says about its baseline before any experiment: facts for the agents (in sentences), the
    baseline's metrics, and the questions worth reading about (knowledge-base queries per role)."""
    facts: list[str]
    metrics: dict[str, float] = field(default_factory=dict)
    queries: dict[str, list[str]] = field(default_factory=dict)  # "research", "competitors" -> queries
    details: dict[str, Any] = field(default_factory=dict)        # target-specific figures, for reports
    # Function-name fragments that hold the time, most first ("vec_dot_q4_0", "mul_mat"): fork code is ranked and
    # retrieved by them. Empty when the target cannot tell.
    hot_symbols: list[str] = field(default_factory=list)


_NESTED: dict[tuple[str, str], type] = {
    ("BuildResult", "config"): BuildConfig,
    ("TestResult", "cases"): TestCase,
    ("BenchResult", "samples"): BenchSample,
    ("BenchResult", "config"): BuildConfig,
    ("Checks", "results"): CheckResult,
    ("Baseline", "checks"): Checks,
}
_NESTED_MAPS: dict[tuple[str, str], type] = {("Objective", "guards"): Guard}
