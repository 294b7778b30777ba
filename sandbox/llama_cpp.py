"""The llama.cpp target: build, test, benchmark and check logits of a commit, inside the sandbox.

Container layout for every command: /src the worker's checkout (read-only), /build its build directory for the
configuration, /ccache the compiler cache, /models the models (read-only), /out a fresh scratch directory whose
files are read back without following symlinks.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from ..config import Paths
from ..errors import SandboxError
from .docker_sandbox import DockerSandbox, Mount
from .patch import commit_patch
from .readback import read_text_inside
from .records import (BenchResult, BenchSample, BuildConfig, BuildResult, CommandResult, KLDResult, TestCase,
                      TestResult)
from .sources import SourceRepo, git
from .workers import Worker, cpu_has, cpu_model, cpu_signature, short_digest, worker

# The fast ctest subset that exercises ggml's CPU numerics directly: quantize/dequantize and vec_dot of every
# type against the reference implementation (test-quantize-fns), RoPE (test-rope), the tiled matmul path against
# a naive one (test-tiled-mulmat), and the thread pool barrier the CPU graph executor relies on (test-barrier).
# Tokenizer, grammar, chat and server tests do not touch the kernels a performance patch changes.
FAST_TESTS = ("test-quantize-fns", "test-rope", "test-tiled-mulmat", "test-barrier")
TOOLS = ("llama-bench", "llama-perplexity", "llama-quantize")
# The benchmark, the logits check and the tests are read-only to experiments.
PROTECTED = ("tools/llama-bench/*", "tools/perplexity/*", "tools/quantize/*", "tests/*")

BASE_CMAKE = ("-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DGGML_CCACHE=ON", "-DLLAMA_CURL=OFF",
              "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=ON", "-DLLAMA_BUILD_TOOLS=ON",
              "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF",
              "-DLLAMA_USE_PREBUILT_UI=OFF")
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
_LINK_ERRORS = re.compile(r"undefined reference|collect2: error|ld returned|ld: cannot find|multiple definition")


def native_config() -> BuildConfig:
    return BuildConfig(cmake_flags=list(BASE_CMAKE), c_flags="", note="native")


def fallback_configs() -> list[BuildConfig]:
    """Configurations to try when the native baseline crashes or fails its checks, most native first.

    Seen: on AVX-512 + AMX Xeons the pinned llama.cpp crashes in its AMX matmul during prompt processing
    (upstream #20824); native flags without AMX run.
    """
    configs = []
    if cpu_has_amx():
        configs.append(BuildConfig(list(BASE_CMAKE), NO_AMX, "native without AMX (AMX matmul crashes: #20824)"))
    configs.append(BuildConfig([f for f in BASE_CMAKE if f != "-DGGML_NATIVE=ON"] + ["-DGGML_NATIVE=OFF"], "",
                               "portable (GGML_NATIVE=OFF)"))
    return configs


def cpu_has_amx() -> bool:
    return cpu_has("amx_tile")


def config_key(config: BuildConfig) -> str:
    return short_digest(json.dumps([config.cmake_flags, config.c_flags, cpu_signature()]))


@dataclass(frozen=True)
class BenchOptions:
    n_prompt: int = 512
    n_gen: int = 128
    threads: int = 2
    flash_attn: bool = True
    repetitions: int = 5
    ubatch: int = 0  # 0: llama-bench's default


class LlamaCppTarget:
    name = "llama.cpp"
    protected = PROTECTED

    def __init__(self, paths: Paths, sandbox: DockerSandbox, source: SourceRepo, *,
                 config: BuildConfig | None = None, say: Callable[[str], None] = lambda _: None,
                 build_timeout_s: float = 3600, run_timeout_s: float = 1800):
        self.paths = paths
        self.sandbox = sandbox
        self.source = source
        self.config = config or native_config()
        self.say = say
        self.build_timeout_s = build_timeout_s
        self.run_timeout_s = run_timeout_s
        self.use_ccache = True  # off only to measure cold builds

    # -- source --------------------------------------------------------------------------------------------
    def prepare(self) -> str:
        return self.source.baseline

    def commit_patch(self, patch: str, *, base: str | None = None, message: str = "experiment") -> str:
        return commit_patch(self.source.path, patch, base=base or self.source.baseline, message=message,
                            protected=self.protected)

    # -- plumbing --------------------------------------------------------------------------------------------
    def _worker(self, index: int) -> Worker:
        return worker(self.paths.builds, self.source, index)

    def artifact_dir(self, commit: str, config: BuildConfig | None = None) -> Path:
        """Where a build's binaries are kept, so benchmarks of any two builds can alternate without rebuilding."""
        return self.paths.cache / "artifacts" / self.source.key / f"{commit[:16]}-{config_key(config or self.config)}"

    def has_build(self, commit: str, config: BuildConfig | None = None) -> bool:
        return (self.artifact_dir(commit, config) / "bin" / "llama-bench").is_file()

    def _run(self, command: str, *, timeout_s: float, log_name: str, mounts: Sequence[Mount],
             workdir: str = "/tmp", cpuset: str | None = None) -> tuple[CommandResult, Path]:
        out = self.paths.cache / "scratch" / uuid.uuid4().hex
        out.mkdir(parents=True)
        ccache = self.paths.ccache / short_digest(cpu_signature())
        ccache.mkdir(parents=True, exist_ok=True)
        self.paths.models.mkdir(parents=True, exist_ok=True)
        env = {"CCACHE_DIR": "/ccache", "CCACHE_MAXSIZE": "5G", "CCACHE_NOHASHDIR": "1"}
        if not self.use_ccache:
            env["CCACHE_DISABLE"] = "1"
        log = self.paths.logs / f"{log_name}-{out.name[:8]}.log"
        all_mounts = [Mount(ccache, "/ccache", False), Mount(self.paths.models, "/models", True),
                      Mount(out, "/out", False), *mounts]
        result = self.sandbox.run(command, mounts=all_mounts, workdir=workdir, timeout_s=timeout_s, env=env,
                                  log_path=log, cpuset=cpuset)
        return result, out

    def _worker_mounts(self, w: Worker, config: BuildConfig) -> list[Mount]:
        return [Mount(w.src, "/src", True), Mount(w.build_dir(config_key(config)), "/build", False)]

    def _tool_mounts(self, commit: str, config: BuildConfig | None) -> list[Mount]:
        """A finished build's binaries at the path they were linked for (/build/bin), read-only."""
        art = self.artifact_dir(commit, config)
        if not (art / "bin" / "llama-bench").is_file():
            raise SandboxError(f"no build of {commit[:10]} ({(config or self.config).note}) to run: build it first")
        return [Mount(art / "bin", "/build/bin", True)]

    @staticmethod
    def _discard(out: Path) -> None:
        shutil.rmtree(out, ignore_errors=True)

    # -- build ---------------------------------------------------------------------------------------------
    def build(self, commit: str, *, worker: int = 0, targets: Sequence[str] = TOOLS + FAST_TESTS,
              config: BuildConfig | None = None) -> BuildResult:
        config = config or self.config
        w = self._worker(worker)
        with w.locked():
            w.checkout(commit)
            mounts = self._worker_mounts(w, config)
            flags = " ".join(config.cmake_flags)
            if config.c_flags:
                flags += f" '-DCMAKE_C_FLAGS={config.c_flags}' '-DCMAKE_CXX_FLAGS={config.c_flags}'"
            configure, out = self._run(f"cmake -S /src -B /build {flags}", timeout_s=600, log_name="configure",
                                       mounts=mounts, workdir="/build")
            self._discard(out)
            if not configure.ok:
                return self._build_result(False, "timeout" if configure.timed_out else "configure", configure,
                                          commit, config)
            art = self.artifact_dir(commit, config)
            art.mkdir(parents=True, exist_ok=True)
            jobs = max(1, int(self.sandbox.limits.cpus))
            build, out = self._run(f"cmake --build /build -j {jobs} --target {' '.join(targets)} && "
                                   f"rm -rf /artifact/bin && cp -a /build/bin /artifact/bin",
                                   timeout_s=self.build_timeout_s, log_name="build",
                                   mounts=[*mounts, Mount(art, "/artifact", False)], workdir="/build")
            self._discard(out)
            duration = configure.duration_s + build.duration_s
            if build.ok:
                return self._build_result(True, "ok", build, commit, config, duration)
            stage = "timeout" if build.timed_out else ("link" if _LINK_ERRORS.search(build.output_tail)
                                                       else "compile")
            return self._build_result(False, stage, build, commit, config, duration)

    def _build_result(self, ok: bool, stage: str, r: CommandResult, commit: str, config: BuildConfig,
                      duration: float | None = None) -> BuildResult:
        return BuildResult(ok=ok, stage=stage, duration_s=round(duration if duration is not None else r.duration_s, 3),
                           log_tail=r.output_tail[-8000:], config=config, commit=commit, log_path=r.log_path)

    # -- tests ---------------------------------------------------------------------------------------------
    def test(self, commit: str, *, worker: int = 0, tests: Sequence[str] = FAST_TESTS,
             config: BuildConfig | None = None) -> TestResult:
        """Run the fast ctest subset in the worker's build of `commit` (build it first)."""
        config = config or self.config
        w = self._worker(worker)
        with w.locked():
            w.checkout(commit)
            pattern = "^(" + "|".join(re.escape(t) for t in tests) + ")$"
            r, out = self._run(f"ctest --test-dir /build -R '{pattern}' --timeout 600 --output-on-failure "
                               f"--output-junit /out/junit.xml", timeout_s=self.run_timeout_s, log_name="ctest",
                               mounts=self._worker_mounts(w, config), workdir="/build")
            try:
                cases = _parse_junit(read_text_inside(out, "junit.xml"))
            except (OSError, ET.ParseError):
                cases = []
            finally:
                self._discard(out)
        found = {c.name for c in cases}
        missing = [TestCase(t, False, 0.0) for t in tests if t not in found]
        cases += missing
        return TestResult(ok=r.ok and not missing and all(c.passed for c in cases), cases=cases,
                          log_tail=r.output_tail[-6000:], duration_s=r.duration_s)

    # -- benchmark -------------------------------------------------------------------------------------------
    def bench(self, commit: str, *, model: Path, options: BenchOptions = BenchOptions(),
              config: BuildConfig | None = None) -> BenchResult:
        """llama-bench on a finished build. Benchmarks are serialized machine-wide: two at once measure each other."""
        rel = self._model_in_container(model)
        mounts = self._tool_mounts(commit, config)
        extra = f" -ub {options.ubatch}" if options.ubatch else ""
        cmd = (f"/build/bin/llama-bench -m {rel} -p {options.n_prompt} -n {options.n_gen} "
               f"-t {options.threads} -fa {int(options.flash_attn)} -r {options.repetitions}{extra} -o json "
               f"> /out/bench.json")
        self.paths.cache.mkdir(parents=True, exist_ok=True)
        cpus = bench_cpus(options.threads)
        with FileLock(str(self.paths.cache / "bench.lock")):
            r, out = self._run(cmd, timeout_s=self.run_timeout_s, log_name="bench", mounts=mounts, cpuset=cpus)
        try:
            text = read_text_inside(out, "bench.json") if r.ok else ""
        finally:
            self._discard(out)
        if not r.ok:
            raise SandboxError(f"llama-bench failed (exit {r.exit_code}{', timed out' if r.timed_out else ''}): "
                               f"{r.output_tail[-1500:]}")
        result = parse_bench_json(text, options=options, config=config or self.config, model=model.name)
        result.cpus = cpus
        return result

    def _model_in_container(self, model: Path) -> str:
        model = Path(model).resolve()
        models = self.paths.models.resolve()
        if models not in model.parents:
            raise SandboxError(f"model {model} is not in the model cache {models}")
        return "/models/" + str(model.relative_to(models))

    # -- models --------------------------------------------------------------------------------------------
    def quantize(self, commit: str, *, source_model: Path, dest: Path, quant: str,
                 config: BuildConfig | None = None) -> Path:
        """Quantize a model in the model cache with a build's llama-quantize; the result lands at `dest`."""
        rel = self._model_in_container(source_model)
        r, out = self._run(f"/build/bin/llama-quantize {rel} /out/model.gguf {quant} 2",
                           timeout_s=self.run_timeout_s, log_name="quantize", mounts=self._tool_mounts(commit, config))
        try:
            produced = out / "model.gguf"
            if not r.ok or produced.is_symlink() or not produced.is_file():
                raise SandboxError(f"llama-quantize failed (exit {r.exit_code}): {r.output_tail[-1500:]}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(produced, dest)
        finally:
            self._discard(out)
        return dest

    # -- logits ----------------------------------------------------------------------------------------------
    def _kld_text(self) -> Path:
        """The evaluation text: documentation of the baseline tree, fixed for the whole life of the source."""
        path = self.paths.cache / "kld" / f"text-{self.source.baseline[:12]}" / "text.txt"
        if not path.exists():
            parts = [git(self.source.path, "show", f"{self.source.baseline}:{f}", check=False).stdout
                     for f in ("README.md", "docs/build.md", "CONTRIBUTING.md")]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n\n".join(p for p in parts if p))
        return path

    def _perplexity(self, commit: str, config: BuildConfig | None, model: Path, args: str, ctx: int, chunks: int,
                    flash_attn: bool, extra: Sequence[Mount], log_name: str) -> tuple[CommandResult, Path]:
        rel = self._model_in_container(model)
        text = self._kld_text()
        cmd = (f"/build/bin/llama-perplexity -m {rel} -f /text/text.txt -c {ctx} --chunks {chunks} -t 2 "
               f"-fa {'on' if flash_attn else 'off'} {args}")
        return self._run(cmd, timeout_s=self.run_timeout_s, log_name=log_name,
                         mounts=[*self._tool_mounts(commit, config), Mount(text.parent, "/text", True), *extra])

    def kld_base(self, commit: str, *, model: Path, config: BuildConfig | None = None, ctx: int = 128,
                 chunks: int = 8, flash_attn: bool = True) -> Path:
        """The baseline's logits (llama-perplexity --kl-divergence-base), cached per build, model and settings."""
        config = config or self.config
        dest = (self.paths.cache / "kld" / f"{commit[:12]}-{config_key(config)}-{model.stem}-c{ctx}x{chunks}"
                f"-fa{int(flash_attn)}" / "base.kld")
        if dest.exists():
            return dest
        r, out = self._perplexity(commit, config, model, "--kl-divergence-base /out/base.kld", ctx, chunks,
                                  flash_attn, (), "kld-base")
        try:
            if not r.ok:
                raise SandboxError(f"llama-perplexity (baseline logits) failed: {r.output_tail[-1500:]}")
            src = out / "base.kld"
            if src.is_symlink() or not src.is_file():
                raise SandboxError("the baseline logits file is missing or not a regular file")
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
        finally:
            self._discard(out)
        return dest

    def logits_check(self, commit: str, *, model: Path, base_logits: Path, config: BuildConfig | None = None,
                     ctx: int = 128, chunks: int = 8, flash_attn: bool = True) -> KLDResult:
        r, out = self._perplexity(commit, config, model, "--kl-divergence-base /kld/base.kld --kl-divergence", ctx,
                                  chunks, flash_attn, [Mount(base_logits.parent, "/kld", True)], "kld")
        self._discard(out)
        if not r.ok:
            return KLDResult(float("inf"), float("inf"), float("inf"), 0.0, False,
                             f"llama-perplexity failed (exit {r.exit_code}): {r.output_tail[-1500:]}")
        return parse_kld(r.output_tail)


_KLD_LINE = {
    "mean": re.compile(r"Mean\s+KLD:\s*([-\d.eE+naif]+)"),
    "max": re.compile(r"Maximum KLD:\s*([-\d.eE+naif]+)"),
    "p999": re.compile(r"99\.9%\s+KLD:\s*([-\d.eE+naif]+)"),
    "same": re.compile(r"Same top p:\s*([-\d.eE+naif]+)"),
}


def parse_kld(output: str) -> KLDResult:
    """The KLD figures of llama-perplexity's output. `ok` says the check ran to the end; the evaluator judges
    the figures (agents.statistics.kld_failure), the sandbox only measures."""
    values = {}
    for key, rx in _KLD_LINE.items():
        m = rx.findall(output)
        if not m:
            return KLDResult(float("inf"), float("inf"), float("inf"), 0.0, False,
                             f"no '{key}' line in llama-perplexity's output: {output[-1000:]}")
        values[key] = float(m[-1])
    ok = all(math.isfinite(v) for v in values.values())
    tail = output[output.rfind("KLD") - 600:] if "KLD" in output else output[-600:]
    return KLDResult(values["mean"], values["max"], values["p999"], values["same"], ok, tail[-1500:])


def bench_cpus(threads: int, allowed: set[int] | None = None) -> str:
    """The CPUs a benchmark with `threads` threads is pinned to, the same set every run: the last `threads` of
    those this process may use (CPU 0 takes most interrupts and housekeeping), or all of them when there are no
    more than that (a 2-core machine: pinned to both, which fixes the set without narrowing it)."""
    cpus = sorted(allowed if allowed is not None else os.sched_getaffinity(0))
    return ",".join(str(c) for c in cpus[-max(1, threads):])


def parse_bench_json(text: str, *, options: BenchOptions, config: BuildConfig, model: str) -> BenchResult:
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise SandboxError(f"llama-bench wrote no valid JSON: {e}") from e
    samples = []
    for row in rows:
        n_prompt, n_gen = int(row.get("n_prompt", 0)), int(row.get("n_gen", 0))
        test = f"pp{n_prompt}" if n_gen == 0 else (f"tg{n_gen}" if n_prompt == 0 else f"pp{n_prompt}+tg{n_gen}")
        samples.append(BenchSample(test=test, n_prompt=n_prompt, n_gen=n_gen,
                                   samples_ts=[float(x) for x in row.get("samples_ts", [])],
                                   mean_ts=float(row.get("avg_ts", 0.0)), stddev_ts=float(row.get("stddev_ts", 0.0))))
    first = rows[0] if rows else {}
    return BenchResult(samples=samples, threads=options.threads, flash_attn=options.flash_attn,
                       cpu=first.get("cpu_info") or cpu_model(), build_commit=str(first.get("build_commit", "")),
                       config=config, model=model, raw=rows)


def _parse_junit(text: str) -> list[TestCase]:
    root = ET.fromstring(text)
    cases = []
    for tc in root.iter("testcase"):
        failed = tc.find("failure") is not None or tc.find("error") is not None or tc.get("status") == "fail"
        skipped = tc.find("skipped") is not None
        cases.append(TestCase(tc.get("name", "?"), not failed and not skipped, float(tc.get("time", 0) or 0)))
    return cases
