"""The baseline must run before anything is measured against it.

Build the baseline, run its tests and a short benchmark that exercises prompt processing and generation. If the
native build crashes or fails a check (seen: the AMX matmul of the pinned llama.cpp segfaults in prompt
processing on AVX-512 + AMX Xeons, upstream #20824), fall back to the next configuration that works, say so in
one sentence, and remember the choice for this CPU and source.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...errors import BaselineBroken, SandboxError
from ...records import BuildConfig, BuildResult, TestResult, from_dict, to_dict
from ...sandbox.workers import cpu_signature, short_digest
from .target import BenchOptions, LlamaCppTarget, config_key, fallback_configs, native_config

SMOKE = BenchOptions(n_prompt=64, n_gen=16, repetitions=1)


@dataclass
class VerifiedBaseline:
    commit: str
    config: BuildConfig
    build: BuildResult
    tests: TestResult
    fallback_reason: str = ""  # empty when the native configuration works


def _record_path(target: LlamaCppTarget) -> Path:
    return target.paths.cache / "baselines" / f"{target.source.key}-{short_digest(cpu_signature())}.json"


def establish_baseline(target: LlamaCppTarget, *, model: Path | None = None,
                       say: Callable[[str], None] = lambda _: None,
                       build_model: Callable[[LlamaCppTarget, str], Path] | None = None) -> tuple[VerifiedBaseline, Path]:
    """Build and check the baseline, falling back through configurations until one works.

    Returns the baseline and the model to benchmark (given, or made by `build_model` with the working build).
    The target's config is left set to the one that works.
    """
    record = _record_path(target)
    commit = target.source.baseline
    configs = [native_config(), *fallback_configs()]
    saved = json.loads(record.read_text()) if record.exists() else None
    if saved is not None:
        remembered = from_dict(BuildConfig, saved.get("config", saved))  # early records held the config alone
        if saved.get("commit") == commit and target.has_build(commit, remembered):
            # Verified on this CPU already, and its build is still there: checking it again proves nothing new.
            target.config = remembered
            say(f"baseline: verified earlier on this CPU ({remembered.note})")
            if model is None:
                model = _make_model(target, commit, build_model)
            return VerifiedBaseline(commit, remembered, from_dict(BuildResult, saved["build"]),
                            from_dict(TestResult, saved["tests"]), saved.get("fallback_reason", "")), model
        # The configuration that worked last time on this CPU goes first.
        configs = [remembered] + [c for c in configs if config_key(c) != config_key(remembered)]
    failures: list[str] = []
    for config in configs:
        target.config = config
        say(f"building the baseline ({config.note})")
        build = target.build_config(commit)
        if not build.ok:
            failures.append(f"{config.note}: build failed at {build.stage}")
            continue
        tests = target.run_tests(commit)
        if not tests.ok:
            failed = ", ".join(c.name for c in tests.cases if not c.passed)
            failures.append(f"{config.note}: tests failed ({failed})")
            continue
        if model is None:
            model = _make_model(target, commit, build_model)
        try:
            target.bench(commit, model=model, options=SMOKE)
        except SandboxError as e:
            failures.append(f"{config.note}: the benchmark crashed ({str(e).splitlines()[0][:200]})")
            continue
        reason = ""
        if failures:
            reason = f"the native baseline does not work here ({'; '.join(failures)}), so every result uses: {config.note}"
            say(reason)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"config": to_dict(config), "commit": commit, "build": to_dict(build),
                                      "tests": to_dict(tests), "fallback_reason": reason}))
        return VerifiedBaseline(commit, config, build, tests, reason), model
    raise BaselineBroken("no build configuration of the baseline works: " + "; ".join(failures))


def _make_model(target: LlamaCppTarget, commit: str, build_model) -> Path:
    if build_model is None:
        raise ValueError("establish_baseline needs a model or a way to build one")
    return build_model(target, commit)
