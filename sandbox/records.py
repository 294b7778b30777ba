"""Typed records that cross boundaries: what a sandbox command, a build, a test run and a benchmark produced.

Each serializes with its schema version; loading tolerates fields it does not know, so old ledgers and traces
stay readable when a record grows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
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
        if nested is not None and value is not None:
            value = [from_dict(nested, v) for v in value] if isinstance(value, list) else from_dict(nested, value)
        kwargs[name] = value
    return cls(**kwargs)


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

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


@dataclass
class BuildConfig:
    """How a target is built; recorded with every result so that results say what they measured."""
    cmake_flags: list[str] = field(default_factory=list)
    c_flags: str = ""
    note: str = ""


@dataclass
class BuildResult:
    ok: bool
    stage: str  # "ok" | "configure" | "compile" | "link" | "timeout"
    duration_s: float
    log_tail: str
    config: BuildConfig
    commit: str
    log_path: str | None = None


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

    def get(self, test: str) -> BenchSample | None:
        return next((s for s in self.samples if s.test == test), None)


_NESTED: dict[tuple[str, str], type] = {
    ("BuildResult", "config"): BuildConfig,
    ("TestResult", "cases"): TestCase,
    ("BenchResult", "samples"): BenchSample,
    ("BenchResult", "config"): BuildConfig,
}
