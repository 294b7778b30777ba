"""The baseline's fallback through build configurations, with a stand-in target whose native build crashes in
its benchmark (as the AMX matmul of this llama.cpp does on AMX Xeons). The real build path is covered by the
end-to-end tests; this pins the control flow: try, fall back, say so, remember, and fail clearly when nothing works.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from readfirst.config import Paths
from readfirst.errors import BaselineBroken, SandboxError
from readfirst.targets.llama_cpp.baseline import establish_baseline
from readfirst.records import BuildConfig, BuildResult, TestCase, TestResult


class CrashyTarget:
    """Native builds crash in llama-bench; `works` lists the config notes that run."""

    def __init__(self, paths: Paths, works: set[str]):
        self.paths, self.works = paths, works
        self.source = SimpleNamespace(key="src", baseline="b" * 40)
        self.config = BuildConfig()
        self.tried: list[str] = []
        self.built: set[str] = set()

    def build_config(self, commit, **_):
        self.tried.append(self.config.note)
        self.built.add(self.config.note)
        return BuildResult(True, "ok", 1.0, "", self.config, commit)

    def has_build(self, commit, config):
        return config.note in self.built

    def run_tests(self, commit, **_):
        return TestResult(True, [TestCase("test-rope", True, 0.1)], "", 0.1)

    def bench(self, commit, *, model, options, **_):
        if self.config.note not in self.works:
            raise SandboxError("llama-bench failed (exit 139): Segmentation fault in ggml_backend_amx_mul_mat")
        return None


@pytest.fixture
def amx(monkeypatch):
    monkeypatch.setattr("readfirst.targets.llama_cpp.target.cpu_has_amx", lambda: True)


def test_a_crashing_native_baseline_falls_back_says_so_and_remembers(tmp_path, amx):
    paths = Paths(home=tmp_path, cache=tmp_path / "cache")
    target = CrashyTarget(paths, works={"native without AMX"})
    said: list[str] = []
    base, model = establish_baseline(target, model=Path("m.gguf"), say=said.append)
    assert base.config.c_flags == "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    assert target.tried == ["native", "native without AMX"]
    assert "benchmark crashed" in base.fallback_reason and base.fallback_reason in said
    # The next time on this CPU, with its build still there, the verified baseline is reused as it was...
    again = CrashyTarget(paths, works=target.works)
    again.built = set(target.built)
    reused, _ = establish_baseline(again, model=Path("m.gguf"))
    assert again.tried == [] and reused.fallback_reason == base.fallback_reason
    assert reused.config.c_flags == base.config.c_flags
    # ...and without its build, the configuration that worked goes first: no crash to wait for.
    fresh = CrashyTarget(paths, works=target.works)
    establish_baseline(fresh, model=Path("m.gguf"))
    assert fresh.tried == ["native without AMX"]


def test_nothing_works_is_one_clear_error(tmp_path, amx):
    target = CrashyTarget(Paths(home=tmp_path, cache=tmp_path / "cache"), works=set())
    with pytest.raises(BaselineBroken, match="no build configuration of the baseline works"):
        establish_baseline(target, model=Path("m.gguf"))
    assert len(target.tried) == 3
