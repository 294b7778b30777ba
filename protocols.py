"""The seams: the small interfaces the roles and the graph depend on. Each has more than one implementation.

Roles and graph import these, never a concrete class: a remote sandbox, a Chroma server, a scripted LLM, or any
project with a build, a test suite and a benchmark fit behind the same calls. Nothing here imports docker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .records import (Baseline, BuildResult, Checks, CommandResult, Measurement, Mount, Objective, Profile)

if TYPE_CHECKING:
    from .agents.llm import LLMResponse


class Sandbox(Protocol):
    """Runs one command in isolation with the given mounts; the local Docker one, or a remote worker."""

    def run(self, command: str, *, mounts: Sequence[Mount] = (), workdir: str = "/tmp", timeout_s: float = 600,
            env: Mapping[str, str] | None = None, log_path: Path | None = None,
            cpuset: str | None = None, collect: str | tuple[str, ...] | None = None) -> CommandResult:
        """`cpuset` pins the command to those CPUs; `collect`: the lines of the whole output holding this string
        (or any of these strings) come back in CommandResult.lines (capped: lines_capped says so)."""

    def gc(self, *, everything: bool = False) -> int: ...


class Tree(Protocol):
    """A source tree at one revision, read-only: the run's current best tree, or a fork's (sources.GitTree)."""
    name: str
    revision: str

    def files(self) -> list[str]: ...

    def read(self, path: str, revision: str | None = None) -> str | None:
        """The file's text (at `revision` of the same repository when given), or None."""

    def at(self, revision: str) -> "Tree": ...


class Target(Protocol):
    """A project that can be patched, built, checked and measured: llama.cpp, or any project a readfirst.toml
    describes.

    A *variant* is how a commit is built and run (build flags, runtime settings, the workload): plain data that
    only the target reads. Roles and graph pass it along, hash it, store it; they never look inside. Every
    method returns a record from readfirst.records or plain data, so that a trace can record and serve it.
    `repository` is the git repository that holds the baseline and every experiment's commit.
    """

    name: str
    objective: Objective
    hot_paths: tuple[str, ...]     # globs: where forks' changes and the implementer's edits matter
    protected: tuple[str, ...]     # globs never patched: the benchmark and the tests are the judge
    repository: Path

    def prepare(self) -> Baseline:
        """Fetch, build and check the baseline (falling back to a variant that works); raises BaselineBroken."""

    def commit_patch(self, patch: str, *, base: str, message: str = "experiment") -> str:
        """The patch as a commit on `base`; PatchRejected (unsafe, protected) or PatchDoesNotApply."""

    def build(self, commit: str, variant: Mapping[str, Any], *, worker: int = 0) -> BuildResult:
        """A failed build is a result (its stage says where), not an exception. A build that exists is reused."""

    def clean(self, variant: Mapping[str, Any]) -> dict[str, Any]:
        """`variant` built from nothing (a fresh build directory, no compiler cache), under an artifact of its own,
        so that a measurement of it owes nothing to what earlier builds left; `variant` itself when every build of
        the target is made that way already. The run's confirmation builds and measures these."""

    def checks(self, commit: str, variant: Mapping[str, Any], *, baseline: Baseline, worker: int = 0) -> Checks:
        """Every correctness check of a finished build, in order; a failed check is a result."""

    def measure(self, commit: str, variant: Mapping[str, Any], *,
                metrics: Sequence[str] | None = None) -> Measurement:
        """One benchmark run of a finished build (a SandboxError when it crashes or prints no objective).
        `metrics` (names or prefixes): only these are needed this run, a target that can measure less to save
        time may (llama.cpp: tg alone); it may still return more. None: everything."""

    def profile(self, baseline: Baseline) -> Profile:
        """Where the baseline stands: facts for the agents, its metrics, what to read about."""

    def variants(self, variant: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The offline candidates this target knows from `variant`: each {"kind": "build" | "runtime", "title",
        "rationale", "change"}, `change` being opaque data that `apply` understands."""

    def apply(self, variant: Mapping[str, Any], change: Mapping[str, Any]) -> dict[str, Any]:
        """The variant with `change` made to it."""

    def readings(self) -> list[dict[str, Any]]:
        """What the target asks to read before a run, as knowledge-base recipes (plain data): for llama.cpp its
        curated reading list and its own sibling backends' gaps."""

    def describe(self) -> dict[str, Any]:
        """For reports and traces: the target's name, source, objective and whatever else identifies the setup."""


class LLM(Protocol):
    """A chat model: Anthropic, a scripted one for tests, or the recorded responses of a trace."""

    def complete(self, messages: list[dict[str, Any]], *, system: str = "", tools: list[dict[str, Any]] | None = None,
                 max_tokens: int = 4096, agent: str = "", experiment: str | None = None) -> "LLMResponse": ...


class KnowledgeStore(Protocol):
    """Chunks with their origins, searchable by meaning and by exact identifiers (embedded Chroma, a server).

    `where`: kind (one of paper, fork-diff, fork-code, backend-gap, doc, or a list), repo, source, path (a glob,
    or a list of globs: any may match). Each result: id, score, kind, text, snippet and the origin: repo,
    revision, path, start_line, end_line, symbol for code; paper_id, title, section for papers (absent fields are
    missing, not None).
    """

    def query(self, text: str, *, k: int = 10, where: Mapping[str, Any] | None = None) -> list[dict[str, Any]]: ...

    def get(self, ids: Sequence[str]) -> list[dict[str, Any]]: ...     # cited chunks, whole; unknown ids left out

    def count(self) -> int: ...
