"""The seams: the four small interfaces the roles depend on. Each has more than one implementation.

Roles import these, never a concrete class: a remote sandbox (SkyPilot), a Chroma server, a scripted LLM or a
generic target fit behind the same calls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .sandbox.docker_sandbox import Mount
from .sandbox.records import BenchResult, BuildResult, CommandResult, KLDResult, TestResult

if TYPE_CHECKING:
    from .agents.llm import LLMResponse


class Sandbox(Protocol):
    """Runs one command in isolation with the given mounts; the local Docker one, or a remote worker."""

    def run(self, command: str, *, mounts: Sequence[Mount] = (), workdir: str = "/tmp", timeout_s: float = 600,
            env: Mapping[str, str] | None = None, log_path: Path | None = None,
            cpuset: str | None = None) -> CommandResult: ...

    def gc(self, *, everything: bool = False) -> int: ...


class Target(Protocol):
    """A project that can be fetched, patched, built, tested and benchmarked (llama.cpp; a generic config).

    Builds and tests run in a worker's checkout; benchmarks and logits checks run a finished build's artifacts,
    so two builds can alternate without rebuilding. `config` defaults to the target's current configuration.
    """

    name: str
    protected: tuple[str, ...]

    def prepare(self) -> str: ...                                        # returns the baseline commit

    def commit_patch(self, patch: str, *, base: str | None = None, message: str = "experiment") -> str: ...

    def has_build(self, commit: str, config: Any = None) -> bool: ...

    def build(self, commit: str, *, worker: int = 0, config: Any = None) -> BuildResult: ...

    def test(self, commit: str, *, worker: int = 0, config: Any = None) -> TestResult: ...

    def bench(self, commit: str, *, model: Path, options: Any = None, config: Any = None) -> BenchResult: ...

    def kld_base(self, commit: str, *, model: Path, config: Any = None, flash_attn: bool = True) -> Path: ...

    def logits_check(self, commit: str, *, model: Path, base_logits: Path, config: Any = None,
                     flash_attn: bool = True) -> KLDResult: ...


class LLM(Protocol):
    """A chat model: Anthropic, a scripted one for tests, or the recorded responses of a trace."""

    def complete(self, messages: list[dict[str, Any]], *, system: str = "", tools: list[dict[str, Any]] | None = None,
                 max_tokens: int = 4096, agent: str = "", experiment: str | None = None) -> "LLMResponse": ...


class KnowledgeStore(Protocol):
    """Chunks with their origins, searchable by meaning and by exact identifiers (embedded Chroma, a server).

    `where`: kind (one of paper, fork-diff, fork-code, backend-gap, doc, or a list), repo, source, path (a glob).
    Each result: id, score, kind, text, snippet and the origin: repo, revision, path, start_line, end_line,
    symbol for code; paper_id, title, section for papers (absent fields are missing, not None).
    """

    def query(self, text: str, *, k: int = 10, where: Mapping[str, Any] | None = None) -> list[dict[str, Any]]: ...

    def get(self, ids: Sequence[str]) -> list[dict[str, Any]]: ...     # cited chunks, whole; unknown ids left out

    def count(self) -> int: ...
