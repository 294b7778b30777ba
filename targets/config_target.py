"""Any project with a build, a test suite and a benchmark, described by its readfirst.toml.

Every command runs in the same sandbox as llama.cpp's (no network, limits, killed at its timeout). A build is
clean: the commit's tree is exported from git, copied into a fresh artifact directory inside the container and
built there, so that what a build leaves is the artifact and nothing of it leaks into the next build. Tests and
benchmark runs copy the artifact into the container's scratch (/tmp) and run there: every run starts from the
same files, and the artifact stays as it was built.

A variant is {"build_env": {...}, "run_env": {...}}: environment for the build, and for the test and bench runs.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import statistics
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import Paths
from ..errors import BaselineBroken, SandboxError
from ..protocols import Sandbox
from ..records import (Baseline, BuildConfig, BuildResult, CheckResult, Checks, Measurement, Mount, Profile,
                       from_dict, to_dict)
from ..sandbox.workers import bench_cpus, cpu_model, short_digest
from ..sources import SourceRepo
from .base import GitTarget, failed_stage
from .config_file import ConfigError, ProjectConfig, metric_line_counts, parse_metrics


def _env_note(env: Mapping[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(env.items()))


class ConfigTarget(GitTarget):
    """A project as its readfirst.toml describes it."""

    def __init__(self, paths: Paths, sandbox: Sandbox, source: SourceRepo, config: ProjectConfig, *,
                 say: Callable[[str], None] = lambda _: None):
        super().__init__(paths, sandbox, source, say=say)
        self.config = config
        self.name = config.name
        self.objective = config.objective
        self.hot_paths = config.hot_paths
        self.protected = config.protected

    # -- the Target interface -------------------------------------------------------------------------------------
    def prepare(self) -> Baseline:
        commit = self.source.baseline
        variant: dict[str, Any] = {"build_env": {}, "run_env": {}}
        self.say(f"building the baseline of {self.name}")
        build = self.build(commit, variant)
        if not build.ok:
            raise BaselineBroken(f"the baseline of {self.name} does not build ({build.stage}; "
                                 f"`{self.config.build.command}`): {_last_lines(build.log_tail)}")
        self.say(f"testing the baseline of {self.name}")
        checks = self.checks(commit, variant, baseline=None)
        failed = checks.first_failure()
        if failed is not None:
            raise BaselineBroken(f"the baseline of {self.name} fails its own tests (`{self.config.test.command}`): "
                                 f"{failed.reason}")
        return Baseline(commit, variant, checks, "", build.duration_s)

    def build(self, commit: str, variant: Mapping[str, Any], *, worker: int = 0) -> BuildResult:
        """A build is made in a staging folder of its own and renamed into place once its record is written: two
        runs sharing the cache never build into, or delete, each other's folder (one deleted the other's while it
        linked: `ld: cannot open output file`), and an artifact folder is there whole or not at all. The record
        (build.json) lies beside the tree, in a folder no container mounts (only the tree is)."""
        env = dict(variant.get("build_env") or {})
        config = BuildConfig([], _env_note(env), f"{self.config.build.command}"
                                                 + (f" with {_env_note(env)}" if env else ""))
        art = self._artifact(commit, env)
        reused = self._reused(art, commit)
        if reused is not None:
            return reused
        staging = art.parent / f".{art.name}.{uuid.uuid4().hex[:12]}"
        tree = staging / "tree"
        tree.mkdir(parents=True)
        try:
            r = self._build_in(commit, tree, env)
            stage = "ok" if r.ok else failed_stage(r)
            result = BuildResult(r.ok, stage, r.duration_s, r.output_tail[-8000:], config, commit, r.log_path)
            if r.ok:
                (staging / "build.json").write_text(json.dumps(to_dict(result)))
                self._publish(staging, art)
            return result
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _reused(self, art: Path, commit: str) -> BuildResult | None:
        """The finished build in `art`, or None; a folder there without a readable record (an older run's, cut
        short) is moved aside and removed."""
        try:
            built = from_dict(BuildResult, json.loads((art / "build.json").read_text()))
            return BuildResult(True, "ok", 0.0, f"reused the build of {commit[:10]}", built.config, commit,
                               built.log_path, reused=True)
        except FileNotFoundError:
            if not art.exists():
                return None
        except (OSError, ValueError, TypeError):
            pass
        aside = art.parent / f".{art.name}.stale-{uuid.uuid4().hex[:12]}"
        try:
            os.rename(art, aside)
        except OSError:
            return None  # gone already (another run moved it)
        shutil.rmtree(aside, ignore_errors=True)
        return None

    @staticmethod
    def _publish(staging: Path, art: Path) -> None:
        try:
            os.rename(staging, art)  # atomic; refused when another run published the same build first
        except OSError:
            if not (art / "build.json").is_file():
                raise

    def _build_in(self, commit: str, tree: Path, env: Mapping[str, str]):
        command = f"cp -a /src/. /work/ && cd /work && exec /bin/sh -c {shlex.quote(self.config.build.command)}"
        (self.paths.cache / "scratch").mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.paths.cache / "scratch", prefix="export-") as exported:
            os.chmod(exported, 0o755)  # mkdtemp makes it 0700: the sandbox user must read it
            self._export(commit, Path(exported))
            r, out = self._run(command, timeout_s=self.config.build.timeout_s, log_name="build",
                               mounts=[Mount(Path(exported), "/src", True), Mount(tree, "/work", False)],
                               workdir="/work", env={**self.config.env, **env})
        self._discard(out)
        return r

    def clean(self, variant: Mapping[str, Any]) -> dict[str, Any]:
        """Every build here is made from nothing already (a tree exported from git into a fresh directory): the
        same variant. (A build command that brings its own compiler cache is the project's to turn off.)"""
        return dict(variant)

    def checks(self, commit: str, variant: Mapping[str, Any], *, baseline: Baseline | None,
               worker: int = 0) -> Checks:
        """The project's own test command on the build; exit 0 passes."""
        step = self.config.test
        r = self._in_copy(commit, variant, step.command, step.timeout_s, "test")
        if r.timed_out:
            reason = f"the tests timed out after {step.timeout_s:g} s (`{step.command}`)."
        elif r.oom_killed:
            reason = f"the tests ran out of memory (`{step.command}`)."
        elif not r.ok:
            reason = f"the tests failed (exit {r.exit_code}): {_last_lines(r.output_tail)}"
        else:
            reason = ""
        return Checks([CheckResult("tests", r.ok, reason, r.duration_s,
                                   {"command": step.command, "exit_code": r.exit_code, "timed_out": r.timed_out,
                                    "log_tail": r.output_tail[-3000:]})])

    def measure(self, commit: str, variant: Mapping[str, Any], *,
                metrics: Sequence[str] | None = None) -> Measurement:
        """One run of the bench command, pinned to a fixed CPU set, with the machine to itself. The command
        measures what it measures: `metrics` cannot narrow it. The run's signature is how many METRIC lines it
        printed per name; its claimed seconds, when [objective] says how its figure implies time (work or
        seconds_per_unit), let the host's clock judge a keep."""
        step = self.config.bench
        cpus = bench_cpus(self.config.bench_cpus or len(os.sched_getaffinity(0)))
        r = self._in_copy(commit, variant, step.command, step.timeout_s, "bench", cpuset=cpus, measuring=True,
                          collect="METRIC")
        if r.timed_out:
            raise SandboxError(f"the bench command timed out after {step.timeout_s:g} s and was killed")
        if r.oom_killed:
            raise SandboxError("the bench command ran out of memory and was killed")
        if not r.ok:
            raise SandboxError(f"the bench command failed (exit {r.exit_code}): {_last_lines(r.output_tail)}")
        if r.lines_capped:
            raise SandboxError(f"its METRIC lines could not all be read (more than {len(r.lines)}, or one too long, "
                               f"or its output never ended): which figure is the bench's cannot be told")
        # from the whole output: anything printed after the bench's lines could push them out of the tail
        metric_text = "\n".join(r.lines)
        values, problems = parse_metrics(metric_text)
        metric = self.objective.metric
        if metric not in values:
            why = f"; {problems[0]}" if problems else ""
            printed = ", ".join(f"{k}={v:g}" for k, v in values.items()) or "no METRIC line at all"
            raise SandboxError(f"it printed no `METRIC {metric}=<number>` line{why} (it printed: {printed})")
        claim = self.config.claim
        return Measurement(values, {"cpu": cpu_model(), "cpus": cpus, "command": step.command}, r.duration_s,
                           claimed_s=claim.seconds(values[metric]) if claim else None,
                           signature={"METRIC lines": metric_line_counts(metric_text)}, **self.load_fields(r))

    def profile(self, baseline: Baseline) -> Profile:
        try:  # the first run of the bench is the test of the file's [bench] and [objective]
            runs = [self.measure(baseline.commit, baseline.variant)]
        except SandboxError as e:
            raise ConfigError(f"{self.config.path.name}: [bench] command: {e}") from None
        runs += [self.measure(baseline.commit, baseline.variant) for _ in range(2)]
        values = [r.values for r in runs]
        metrics = {k: statistics.median(r[k] for r in values) for k in values[0] if all(k in r for r in values)}
        metric, unit = self.objective.metric, f" {self.objective.unit}" if self.objective.unit else ""
        facts = [f"Project: {self.name}" + (f" — {self.config.description}" if self.config.description else "."),
                 *self.config.facts,
                 f"The objective is {metric} ({self.objective.direction} is better): the baseline measures "
                 f"{metrics.get(metric, float('nan')):g}{unit} (median of 3 runs of `{self.config.bench.command}`).",
                 f"Building takes {_seconds_said(baseline.build_s)} and the tests "
                 f"{_seconds_said(sum(c.duration_s for c in baseline.checks.results))}; edits matter under "
                 f"{', '.join(self.hot_paths)}."]
        return Profile(facts, metrics, dict(self.config.queries), {"runs": [r.values for r in runs],
                                                                    "setup": runs[0].setup})

    def variants(self, variant: Mapping[str, Any]) -> list[dict[str, Any]]:
        out = []
        for v in self.config.variants:
            key = "build_env" if v.kind == "build" else "run_env"
            current = variant.get(key) or {}
            if all(current.get(k) == value for k, value in v.env.items()):
                continue  # already in effect
            out.append({"kind": v.kind, "title": v.title, "rationale": v.rationale or f"set {_env_note(v.env)}",
                        "change": {key: v.env}})
        return out

    def apply(self, variant: Mapping[str, Any], change: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(change) - {"build_env", "run_env"}
        if unknown:
            raise ValueError(f"a {self.name} variant changes build_env or run_env, not {', '.join(sorted(unknown))}")
        out = {"build_env": dict(variant.get("build_env") or {}), "run_env": dict(variant.get("run_env") or {})}
        for key, env in change.items():
            out[key].update({str(k): str(v) for k, v in env.items()})
        return out

    def readings(self) -> list[dict[str, Any]]:
        """A readfirst.toml project names what to read with `run --papers`/`--fork`; nothing by itself."""
        return []

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "config": str(self.config.path), "source": self.source.origin,
                "repository": str(self.source.path), "baseline": self.source.baseline,
                "build": self.config.build.command, "test": self.config.test.command,
                "bench": self.config.bench.command,
                "objective": {"metric": self.objective.metric, "direction": self.objective.direction},
                # the roles' prompts speak of the project in its own file's words, and of nothing else
                "language": self.config.language, "description": self.config.description,
                "facts": list(self.config.facts)}

    # -- plumbing -------------------------------------------------------------------------------------------------
    def _artifact(self, commit: str, build_env: Mapping[str, str]) -> Path:
        key = short_digest(json.dumps([self.config.build.command, self.config.env, dict(build_env),
                                       self.config.apt, cpu_model()], sort_keys=True))
        return self.paths.cache / "artifacts" / self.source.key / f"{commit[:16]}-{key}"

    def _export(self, commit: str, dest: Path) -> None:
        """The commit's files, from git (no .git: builds see no repository metadata)."""
        archive = subprocess.run(["git", "-C", str(self.source.path), "archive", "--format=tar", commit],
                                 capture_output=True)
        if archive.returncode != 0:
            raise SandboxError(f"git archive {commit[:10]} failed: {archive.stderr.decode()[-400:]}")
        unpack = subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, capture_output=True)
        if unpack.returncode != 0:
            raise SandboxError(f"unpacking {commit[:10]} failed: {unpack.stderr.decode()[-400:]}")

    def _in_copy(self, commit: str, variant: Mapping[str, Any], command: str, timeout_s: float, log_name: str,
                 cpuset: str | None = None, measuring: bool = False, collect: str | None = None):
        """`command` in a scratch copy of the build of (commit, variant)."""
        build_env = dict(variant.get("build_env") or {})
        tree = self._artifact(commit, build_env) / "tree"
        if not (tree.parent / "build.json").is_file():
            raise SandboxError(f"no build of {commit[:10]} to run: build it first")
        wrapped = (f"cp -a /artifact/. /tmp/work && cd /tmp/work && exec /bin/sh -c {shlex.quote(command)}")
        r, out = self._run(wrapped, timeout_s=timeout_s, log_name=log_name, workdir="/tmp",
                           mounts=[Mount(tree, "/artifact", True)], cpuset=cpuset, measuring=measuring,
                           collect=collect,
                           env={**self.config.env, **build_env, **(variant.get("run_env") or {})})
        self._discard(out)
        return r


def _last_lines(text: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])[-400:] or "no output"


def _seconds_said(seconds: float) -> str:
    """A duration as a fact reads it: "0 s" said a step took no time at all."""
    return "under a second" if seconds < 1 else f"{seconds:.0f} s"
