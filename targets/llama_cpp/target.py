"""The llama.cpp target: build, test, benchmark and check the logits of a commit, inside the sandbox.

Everything llama-specific lives here and in this package: llama-bench and its tg/pp tests, the KLD gate, the
ctest subset, the synthetic model, the bandwidth roofline facts, the AMX fallback, ggml's CMake flags, threads /
flash attention / micro-batch. Roles and graph see only the Target interface (readfirst.protocols.Target).

A variant is {"build": BuildConfig as a dict, "run": {"threads", "flash_attn", "ubatch"}, "model": path}; the
benchmark's shape (prompt and generated tokens) is the run's, fixed for all of its experiments.

Container layout for every command: /src the worker's checkout (read-only), /build its build directory for the
configuration, /ccache the compiler cache, /models the models (read-only), /out a fresh scratch directory whose
files are read back without following symlinks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ...config import Paths
from ...errors import SandboxError
from ...protocols import Sandbox
from ...records import (Baseline, BenchResult, BenchSample, BuildConfig, BuildResult, CheckResult, Checks,
                        CommandResult, KLDResult, Measurement, Mount, Objective, Profile, TestCase, TestResult,
                        from_dict, metric_matches, to_dict)
from ...sandbox.docker_sandbox import describe_exit
from ...sandbox.machine_lock import machine_lock
from ...sandbox.readback import read_text_inside
from ...sandbox.workers import Worker, bench_cpus, cpu_has, cpu_model, cpu_signature, short_digest
from ...sources import SourceRepo, git
from ..base import GitTarget, failed_stage
from .logits import KLD_MARKERS, KLDThresholds, kld_failure, parse_kld

# The fast ctest subset that exercises ggml's CPU numerics directly: quantize/dequantize and vec_dot of every
# type against the reference implementation (test-quantize-fns), RoPE (test-rope), the tiled matmul path against
# a naive one (test-tiled-mulmat), and the thread pool barrier the CPU graph executor relies on (test-barrier).
# Tokenizer, grammar, chat and server tests do not touch the kernels a performance patch changes.
FAST_TESTS = ("test-quantize-fns", "test-rope", "test-tiled-mulmat", "test-barrier")
TOOLS = ("llama-bench", "llama-perplexity", "llama-quantize")
# The benchmark, the logits check and the tests are read-only to experiments, and so are the build scripts that
# decide what they are built from (a patch to them could point llama-bench at other sources). ggml's own CMake
# files stay open: an optimization may add a source file.
PROTECTED = ("tools/llama-bench/*", "tools/perplexity/*", "tools/quantize/*", "tests/*", "CMakeLists.txt",
             "tools/CMakeLists.txt", "cmake/*", "common/*")
# The CPU backend's hot code as compiled on this machine: its ops, vec, quants, repack, matmul (llamafile's
# sgemm, the tiled paths) and flash-attention code, and only this CPU's arch/ folder (the others are not built).
# A fork's code is matched by function name wherever the fork keeps it (ik_llama.cpp: ggml.c, ggml-quants.c,
# iqk/), so the forks' layouts need no globs here; iqk/ is for retrieving its own kernels (iqk_mul_mat...), which
# replace upstream's rather than share their names.
_ARCH = {"x86_64": "x86", "amd64": "x86", "i686": "x86", "aarch64": "arm", "arm64": "arm", "ppc64le": "powerpc",
         "riscv64": "riscv", "s390x": "s390", "loongarch64": "loongarch"}.get(platform.machine().lower(), "x86")
HOT_PATHS = ("ggml/src/ggml-cpu/*", "!ggml/src/ggml-cpu/arch/*", f"ggml/src/ggml-cpu/arch/{_ARCH}/*",
             "!ggml/src/ggml-cpu/kleidiai/*", "!ggml/src/ggml-cpu/spacemit/*", "!ggml/src/ggml-cpu/cmake/*",
             "ggml/src/iqk/*")
# What dominates a dense model's generation and prompt processing on the CPU, most first: the quantized dot
# product of its weights' type and the activations' quantization, the matmul driver, attention, then the
# per-token elementwise ops. The profile puts the model's own types in front.
HOT_OPS = ("mul_mat", "flash_attn_ext", "vec_dot_f16", "rms_norm", "rope", "soft_max", "swiglu", "silu",
           "get_rows", "add", "mul", "cpy")

BASE_CMAKE = ("-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DGGML_CCACHE=ON", "-DLLAMA_CURL=OFF",
              "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=ON", "-DLLAMA_BUILD_TOOLS=ON",
              "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF",
              "-DLLAMA_USE_PREBUILT_UI=OFF")
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
_LINK_ERRORS = re.compile(r"undefined reference|collect2: error|ld returned|ld: cannot find|multiple definition")

# Build configurations a maintainer would try; offered as offline candidates (Target.variants).
BUILD_VARIANTS = (
    ("-DGGML_OPENMP=OFF", "ggml's own thread pool instead of OpenMP (different barrier and wake-up costs)"),
    ("-DGGML_LTO=ON", "link-time optimization across ggml's translation units"),
    ("-DBUILD_SHARED_LIBS=OFF", "static libraries: no PLT indirection on calls between ggml and llama"),
)

# What the agents read about, by role. Memory-bound generation wants fewer bytes and fewer passes; compute-bound
# prompt processing wants better matmul kernels.
MEMORY_BOUND_QUERIES = (
    "operator fusion to reduce memory traffic in LLM inference on CPU",
    "fused RMS norm and multiply kernel",
    "flash attention kernel for the CPU",
    "quantized matrix-vector product memory bandwidth bound decoding",
    "thread synchronization barrier overhead in graph execution",
)
COMPUTE_BOUND_QUERIES = (
    "quantized matrix multiplication kernel tiling for CPU prompt processing",
    "weight repacking interleaved blocks for SIMD dot products",
    "tinyBLAS llamafile matrix multiplication",
)
FORK_QUERIES = (
    "fused rms_norm multiply CPU kernel",
    "flash attention CPU kernel",
    "softmax CPU vectorized",
    "q4_0 dot product AVX2",
    "matrix multiplication quantized CPU",
    "rope CPU kernel",
    "thread barrier synchronization graph compute",
)


def hot_symbols(quant: str, *, flash_attn: bool) -> list[str]:
    """The function-name fragments that hold the time for this model type, most first: `vec_dot_q4_0` and
    `quantize_row_q8_0` for Q4_0 weights (whose dot product takes Q8_0 activations), then HOT_OPS."""
    q = quant.lower()
    activation = {"q4_0": "q8_0", "q4_1": "q8_1", "q5_0": "q8_0", "q5_1": "q8_1", "q8_0": "q8_0"}.get(q, "q8_k")
    ops = [o for o in HOT_OPS if flash_attn or o not in ("flash_attn_ext", "vec_dot_f16")]
    return [f"vec_dot_{q}", f"quantize_row_{activation}", *ops]


# What the LLM roles are told about llama.cpp (agents/context.py renders it): its language, its hot part, what
# bounds token generation, and its sibling backends, which often implement a fusion the CPU backend lacks.
PROMPT_CONTEXT = {
    "language": "C/C++",
    "about": "first of all its CPU backend, ggml/src/ggml-cpu",
    "hot_part": "the CPU backend",
    "bound": ("Respect the facts: when token generation runs close to the memory-bandwidth limit, instruction-level "
              "tweaks of that path cannot help much; fewer bytes moved, fused operators and less synchronization "
              "can."),
    "siblings": {"CUDA": "ggml/src/ggml-cuda", "Metal": "ggml/src/ggml-metal", "Vulkan": "ggml/src/ggml-vulkan"},
}


def research_queries(facts: Sequence[str]) -> list[str]:
    memory_bound = any("memory-bound" in f for f in facts)
    queries = list(MEMORY_BOUND_QUERIES if memory_bound else MEMORY_BOUND_QUERIES[2:] + MEMORY_BOUND_QUERIES[:2])
    return queries + list(COMPUTE_BOUND_QUERIES)


def native_config() -> BuildConfig:
    return BuildConfig(cmake_flags=list(BASE_CMAKE), c_flags="", note="native")


def fallback_configs() -> list[BuildConfig]:
    """Configurations to try when the native baseline crashes or fails its checks, most native first.

    Seen: on AVX-512 + AMX Xeons the pinned llama.cpp crashes in its AMX matmul during prompt processing
    (upstream #20824), or dies at start with SIGILL; native flags without AMX run. The note names the
    configuration only: what failed is said from what was observed (baseline.py), not from this guess.
    """
    configs = []
    if cpu_has_amx():
        configs.append(BuildConfig(list(BASE_CMAKE), NO_AMX, "native without AMX"))
    configs.append(BuildConfig([f for f in BASE_CMAKE if f != "-DGGML_NATIVE=ON"] + ["-DGGML_NATIVE=OFF"], "",
                               "portable (GGML_NATIVE=OFF)"))
    return configs


def cpu_has_amx() -> bool:
    return cpu_has("amx_tile")


def _cmake_args(config: BuildConfig) -> str:
    flags = " ".join(config.cmake_flags)
    if config.c_flags:
        flags += f" '-DCMAKE_C_FLAGS={config.c_flags}' '-DCMAKE_CXX_FLAGS={config.c_flags}'"
    return flags


def _failed_stage(r) -> str:
    """Where a failed build command stopped (targets.base.failed_stage, with the linker's errors told apart)."""
    return failed_stage(r, link=lambda tail: bool(_LINK_ERRORS.search(tail)))


def config_key(config: BuildConfig) -> str:
    # a clean build gets its own key (its own artifact and build directory); the others keep the keys they had
    return short_digest(json.dumps([config.cmake_flags, config.c_flags, cpu_signature()])) + (
        "-clean" if config.clean else "")


@dataclass(frozen=True)
class BenchOptions:
    n_prompt: int = 512
    n_gen: int = 128
    threads: int = 2
    flash_attn: bool = True
    repetitions: int = 5
    ubatch: int = 0  # 0: llama-bench's default
    warmup: bool = True
    """llama-bench's own warm-up pass before each test: a whole pp pass (it doubles the cost of pp), one token
    for tg. bench/run_shape_cost.py measures what dropping it changes."""


RUN_SETTINGS = ("threads", "flash_attn", "ubatch")  # the runtime part of a variant


def make_variant(config: BuildConfig, options: BenchOptions, model: Path | str) -> dict[str, Any]:
    return {"build": dataclasses.asdict(config), "run": {k: getattr(options, k) for k in RUN_SETTINGS},
            "model": str(model)}


class LlamaCppTarget(GitTarget):
    name = "llama.cpp"
    protected = PROTECTED
    hot_paths = HOT_PATHS
    objective = Objective(metric="tg", direction="higher", guards=None, unit="t/s")
    kld_thresholds = KLDThresholds()

    def __init__(self, paths: Paths, sandbox: Sandbox, source: SourceRepo, *, model: Path | None = None,
                 quant: str = "Q4_0", shape: BenchOptions = BenchOptions(), config: BuildConfig | None = None,
                 say: Callable[[str], None] = lambda _: None, build_timeout_s: float = 3600,
                 run_timeout_s: float = 1800):
        super().__init__(paths, sandbox, source, say=say)
        self.user_model = model
        self.quant = quant
        self.shape = shape
        self.config = config or native_config()
        self.build_timeout_s = build_timeout_s
        self.run_timeout_s = run_timeout_s
        self.use_ccache = True  # off only to measure cold builds

    # -- the Target interface -------------------------------------------------------------------------------------
    def prepare(self) -> Baseline:
        """Build and check the baseline (falling back from the native build when it does not work here), and make
        or import the model every experiment is measured on."""
        from .baseline import establish_baseline
        verified, model = establish_baseline(self, say=self.say, build_model=lambda _t, commit: self.make_model(commit))
        variant = make_variant(verified.config, self.shape, model)
        return Baseline(verified.commit, variant, Checks([_tests_check(verified.tests)]), verified.fallback_reason,
                        verified.build.duration_s)

    def build(self, commit: str, variant: Mapping[str, Any] | None = None, *, worker: int = 0,
              reuse: bool = True) -> BuildResult:
        config = self.config_of(variant)
        if reuse and self.has_build(commit, config):
            return BuildResult(True, "ok", 0.0, f"reused the build of {commit[:10]} ({config.note})", config,
                               commit, reused=True)
        return self.build_config(commit, worker=worker, config=config)

    def clean(self, variant: Mapping[str, Any]) -> dict[str, Any]:
        """The variant built from nothing: its own fresh build directory, the compiler cache disabled, only what a
        measurement runs (llama-bench). The confirmation measures these."""
        return {**variant, "build": {**variant["build"], "clean": True}}

    def checks(self, commit: str, variant: Mapping[str, Any], *, baseline: Baseline, worker: int = 0) -> Checks:
        """The ctest subset (its result kept with the build, so an unchanged build is not tested twice), then the
        logits against the baseline's (llama-perplexity --kl-divergence)."""
        config = self.config_of(variant)
        tests = self._tests_of(commit, config, worker)
        results = [_tests_check(tests)]
        if not tests.ok:
            return Checks(results)
        base_config = self.config_of(baseline.variant)
        model = Path(variant["model"])
        t0 = time.monotonic()
        try:
            base_logits = self.kld_base(baseline.commit, model=model, config=base_config,
                                        flash_attn=bool(baseline.variant["run"]["flash_attn"]))
            kld = self.logits_check(commit, model=model, base_logits=base_logits, config=config,
                                    flash_attn=bool(variant["run"]["flash_attn"]))
        except SandboxError as e:
            results.append(CheckResult("logits", False, f"the logits check could not run: {str(e)[:300]}",
                                       round(time.monotonic() - t0, 2)))
            return Checks(results)
        failure = kld_failure(kld, self.kld_thresholds)
        results.append(CheckResult("logits", failure is None, failure or "", round(time.monotonic() - t0, 2),
                                   to_dict(kld)))
        return Checks(results)

    def measure(self, commit: str, variant: Mapping[str, Any], *,
                metrics: Sequence[str] | None = None) -> Measurement:
        """One llama-bench run (one repetition of each test) at the run's shape; with `metrics`, only the tests
        they name (("tg",): -p 0, the pp pass is most of a full run's time)."""
        options = self._options(variant, repetitions=1)
        if metrics is not None:
            wanted = lambda test: any(metric_matches(m, test) or metric_matches(test, m) for m in metrics)  # noqa: E731
            keep_pp, keep_tg = wanted("pp"), wanted("tg")
            if keep_pp or keep_tg:  # names this target does not know: measure everything
                options = dataclasses.replace(options, n_prompt=options.n_prompt if keep_pp else 0,
                                              n_gen=options.n_gen if keep_tg else 0)
        result = self.bench(commit, model=Path(variant["model"]), options=options, config=self.config_of(variant))
        claimed = sum((s.n_prompt + s.n_gen) / ts for s in result.samples for ts in s.samples_ts if ts > 0)
        return Measurement({s.test.split("+")[0]: s.mean_ts for s in result.samples},
                           {"cpu": result.cpu, "threads": result.threads, "cpus": result.cpus,
                            "flash_attn": result.flash_attn}, result.duration_s, claimed_s=claimed or None,
                           **self.load_fields(result))

    def profile(self, baseline: Baseline) -> Profile:
        """The baseline benchmarked (3 repetitions) and the machine's read bandwidth measured in the sandbox: how
        far generation is from its bandwidth limit decides what is worth reading about."""
        from .model import bytes_read_per_token
        from .profile import make_profile, op_facts, read_bandwidth
        model = Path(baseline.variant["model"])
        bench = self.bench(baseline.commit, model=model, options=self._options(baseline.variant, repetitions=3),
                           config=self.config_of(baseline.variant))
        # The probe is a measurement too: nothing runs beside it.
        with machine_lock(self.paths.cache, exclusive=True, say=self.say, what="the bandwidth probe"):
            probe = read_bandwidth(self.sandbox, self.paths.cache / "probes",
                                   threads=int(baseline.variant["run"]["threads"]), watch=self.load_watch)
        prof = make_profile(bench, read_gbs=probe.gbs, bytes_per_token=bytes_read_per_token(model),
                            probe_share=probe.foreign_share)
        facts = list(prof.facts)
        try:
            ops = self.op_profile(baseline.commit, baseline.variant)
        except SandboxError as e:  # a fact less, not a run less
            ops = {"error": str(e)[:500]}
            facts.append(f"The per-op profile could not be measured ({str(e).splitlines()[0][:200]}): where the "
                         f"time goes is unknown.")
        else:
            facts += op_facts(ops)
        symbols = hot_symbols(self.quant, flash_attn=bool(baseline.variant["run"]["flash_attn"]))
        return Profile(facts, {s.test: s.mean_ts for s in bench.samples},
                       {"research": research_queries(facts),
                        "competitors": list(FORK_QUERIES) + [f"{s} CPU kernel" for s in symbols[:3]]},
                       {**prof.to_dict(), "facts": facts, "bench": to_dict(bench), "ops": ops,
                        "setup": {"cpu": bench.cpu, "threads": bench.threads, "cpus": bench.cpus,
                                  "flash_attn": bench.flash_attn}}, hot_symbols=symbols)

    def op_profile(self, commit: str, variant: Mapping[str, Any]) -> dict[str, Any]:
        """Where a build's time goes, by ggml op (native/op_profile.cpp, compiled in the sandbox against the
        commit's own headers and the build's libraries): the run's prompt, and up to OP_PROFILE_TG_TOKENS
        generated tokens, each node timed alone. A measurement: the machine to itself, the benchmark's CPUs."""
        from .profile import OP_PROFILE_TG_TOKENS, op_profile_source, op_summary
        options = self._options(variant, repetitions=1)
        config = self.config_of(variant)
        headers = self.paths.cache / "probes" / f"headers-{commit[:16]}"
        if not (headers / "include" / "llama.h").is_file():
            shutil.rmtree(headers, ignore_errors=True)
            headers.mkdir(parents=True)
            archive = subprocess.run(["git", "-C", str(self.repository), "archive", commit, "include", "ggml/include"],
                                     capture_output=True, check=False)
            if archive.returncode != 0:
                raise SandboxError(f"cannot read {commit[:10]}'s headers: {archive.stderr.decode()[-300:]}")
            subprocess.run(["tar", "-x", "-C", str(headers)], input=archive.stdout, check=True)
        probe = op_profile_source(self.paths.cache / "probes" / "op-profile")
        tg = min(options.n_gen, OP_PROFILE_TG_TOKENS)
        cmd = ("g++ -O2 -std=c++17 /probe/op_profile.cpp -I/hdr/include -I/hdr/ggml/include -L/build/bin "
               "-lllama -lggml -lggml-base -Wl,-rpath,/build/bin -o /tmp/op_profile && "
               f"/tmp/op_profile {self._model_in_container(Path(variant['model']))} {options.n_prompt} {tg} "
               f"{options.threads} {int(options.flash_attn)} {options.ubatch or 0} > /out/ops.json")
        mounts = [*self._tool_mounts(commit, config), Mount(headers, "/hdr", True), Mount(probe, "/probe", True)]
        r, out = self._run(cmd, timeout_s=self.run_timeout_s, log_name="op-profile", mounts=mounts,
                           cpuset=bench_cpus(options.threads), measuring=True)
        try:
            text = read_text_inside(out, "ops.json") if r.ok else ""
        except OSError as e:
            raise SandboxError(f"the op profile's result could not be read back: {e}") from None
        finally:
            self._discard(out)
        if not r.ok:
            raise SandboxError(f"the op profile failed ({describe_exit(r.exit_code)}): {r.output_tail[-800:]}")
        try:
            return op_summary(json.loads(text))
        except (ValueError, TypeError, KeyError) as e:
            raise SandboxError(f"the op profile printed no JSON it could read: {text[:300]!r}") from e

    def variants(self, variant: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Build flags a maintainer would try, and the runtime settings a user would tune."""
        flags = list(variant["build"]["cmake_flags"])
        run = variant["run"]
        out = [{"kind": "build", "title": f"build with {flag}", "rationale": why,
                "change": {"cmake_flags_add": [flag]}} for flag, why in BUILD_VARIANTS if flag not in flags]
        cpus = os.cpu_count() or 1
        for t in sorted({1, max(1, cpus // 2), cpus} - {run.get("threads")}):
            out.append({"kind": "runtime", "title": f"run with {t} thread{'s' if t > 1 else ''}",
                        "rationale": "Generation is bandwidth-bound: fewer threads may saturate memory with less "
                                     "synchronization; more may hide latency.", "change": {"run": {"threads": t}}})
        fa = not run.get("flash_attn", True)
        out.append({"kind": "runtime", "title": f"flash attention {'on' if fa else 'off'}",
                    "rationale": "Flash attention changes the attention kernel and its memory traffic.",
                    "change": {"run": {"flash_attn": fa}}})
        for ub in (256, 1024):
            if run.get("ubatch") != ub:
                out.append({"kind": "runtime", "title": f"micro-batch {ub}",
                            "rationale": "Prompt processing is compute-bound: the micro-batch sets the matmul tile "
                                         "the kernels see.", "change": {"run": {"ubatch": ub}}})
        return out

    def apply(self, variant: Mapping[str, Any], change: Mapping[str, Any]) -> dict[str, Any]:
        out = json.loads(json.dumps(dict(variant)))  # a deep copy of plain data
        added = list(change.get("cmake_flags_add") or [])
        if added:
            names = {a.split("=")[0] for a in added}
            build = out["build"]
            build["cmake_flags"] = [f for f in build["cmake_flags"] if f.split("=")[0] not in names] + added
            build["note"] = f"{build.get('note', '')} + {' '.join(added)}".strip(" +")
        unknown = set(change.get("run") or {}) - set(RUN_SETTINGS)
        if unknown:
            raise ValueError(f"unknown llama.cpp runtime setting(s): {', '.join(sorted(unknown))}")
        out["run"].update(change.get("run") or {})
        return out

    def readings(self) -> list[dict[str, Any]]:
        """The curated reading list on CPU inference, and this tree's own other backends (what CUDA, Metal and
        Vulkan implement that the CPU backend lacks)."""
        return [{"kind": "papers", "item": "reading-list", "max_results": 5, "fetch_pdf": True},
                {"kind": "backends", "target": self.source.origin}]

    def describe(self) -> dict[str, Any]:
        """What identifies the setup, and what the roles' prompts say of llama.cpp (PROMPT_CONTEXT)."""
        return {"name": self.name, "source": self.source.origin, "repository": str(self.source.path),
                "baseline": self.source.baseline, "config": self.config.note,
                "shape": {"n_prompt": self.shape.n_prompt, "n_gen": self.shape.n_gen},
                "objective": dataclasses.asdict(self.objective), **PROMPT_CONTEXT}

    # -- variants ------------------------------------------------------------------------------------------------
    def config_of(self, variant: Mapping[str, Any] | None) -> BuildConfig:
        """The build configuration a variant names (the target's current one for None)."""
        return from_dict(BuildConfig, dict(variant["build"])) if variant else self.config

    def _options(self, variant: Mapping[str, Any], *, repetitions: int) -> BenchOptions:
        run = variant["run"]
        return replace(self.shape, threads=int(run["threads"]), flash_attn=bool(run["flash_attn"]),
                       ubatch=int(run.get("ubatch") or 0), repetitions=repetitions)

    def make_model(self, commit: str) -> Path:
        """Import the user's GGUF, or synthesize the TinyLlama-shaped one with this build's llama-quantize."""
        from .model import import_model, synthesize
        if self.user_model is not None:
            return import_model(self.user_model, self.paths.models)
        return synthesize(self, commit, self.paths.models, quant=self.quant, say=self.say)

    # -- plumbing --------------------------------------------------------------------------------------------------
    def artifact_dir(self, commit: str, config: BuildConfig | None = None) -> Path:
        """Where a build's binaries are kept, so benchmarks of any two builds can alternate without rebuilding."""
        return self.paths.cache / "artifacts" / self.source.key / f"{commit[:16]}-{config_key(config or self.config)}"

    def has_build(self, commit: str, config: BuildConfig | None = None) -> bool:
        return (self.artifact_dir(commit, config) / "bin" / "llama-bench").is_file()

    def trusted(self, commit: str, config: BuildConfig) -> bool:
        """Whether a build may write the compiler cache other builds reuse: only the baseline commit in one of this
        target's own configurations. A candidate's code, and its build, could otherwise leave cached objects that
        the baseline, a fallback or a later candidate would link (issue 13). Build directories follow the commit
        alone (_worker_mounts): the baseline's is its own in every configuration, a candidate's a fresh copy."""
        return commit == self.source.baseline and config_key(config) in {
            config_key(c) for c in (native_config(), *fallback_configs())}

    def _run(self, command: str, *, mounts: Sequence[Mount], env: Mapping[str, str] | None = None,
             ccache: str | None = None, **run: Any) -> tuple[CommandResult, Path]:
        """GitTarget._run with the models and, when asked, the compiler cache mounted; its other arguments
        (`run`) pass through as they are. `ccache`: "write" for a trusted build, "read" for a candidate's (the
        shared cache mounted read-only, nothing added to it), None for a command that compiles nothing (no cache
        mounted)."""
        self.paths.models.mkdir(parents=True, exist_ok=True)
        env = dict(env or {})
        mounts = [Mount(self.paths.models, "/models", True), *mounts]
        if ccache is None or not self.use_ccache:
            env["CCACHE_DISABLE"] = "1"
        else:
            # A new directory name: the old shared cache was written by candidates too, so nothing in it is trusted.
            shared = self.paths.ccache / "trusted" / short_digest(cpu_signature())
            shared.mkdir(parents=True, exist_ok=True)
            env = {"CCACHE_DIR": "/ccache", "CCACHE_MAXSIZE": "5G", "CCACHE_NOHASHDIR": "1", **env}
            if ccache == "read":
                # ccache's read-only mode takes hits and stores nothing; its temporary files and statistics
                # would go into the (read-only) cache directory, so they go to /tmp and nowhere.
                env.update(CCACHE_READONLY="1", CCACHE_NOSTATS="1", CCACHE_TEMPDIR="/tmp")
            mounts.insert(0, Mount(shared, "/ccache", ccache == "read"))
        return super()._run(command, mounts=mounts, env=env, **run)

    def _worker_mounts(self, w: Worker, config: BuildConfig, commit: str) -> list[Mount]:
        # The baseline commit builds in a directory of its own per configuration: a candidate's build could
        # leave objects newer than their sources in the directory it builds in, which make would then link
        # into whatever built there next.
        build = self._baseline_build_dir(w, config) if commit == self.source.baseline \
            else w.build_dir(config_key(config))
        return [Mount(w.src, "/src", True), Mount(build, "/build", False)]

    @staticmethod
    def _baseline_build_dir(w: Worker, config: BuildConfig) -> Path:
        return w.build_dir(config_key(config) + "-baseline")

    def _start_from_baseline(self, w: Worker, config: BuildConfig, commit: str) -> None:
        """A candidate builds on a fresh copy of this worker's baseline build (timestamps kept), never on what
        another candidate left: that one could have planted objects newer than their sources. make still
        rebuilds only what differs: every file that differs from the baseline was written by a checkout after
        the baseline's build, so it is newer than the copied objects. The same commit built again (its tests
        rebuild it) keeps its own directory; the record of whose it is lies outside every mount."""
        own = w.build_dir(config_key(config))
        record = w.root / f"build-{config_key(config)}.commit"
        if record.is_file() and record.read_text() == commit:
            return
        record.unlink(missing_ok=True)
        shutil.rmtree(own)
        shutil.copytree(self._baseline_build_dir(w, config), own, symlinks=True)
        record.write_text(commit)

    def _tool_mounts(self, commit: str, config: BuildConfig | None) -> list[Mount]:
        """A finished build's binaries at the path they were linked for (/build/bin), read-only."""
        art = self.artifact_dir(commit, config)
        if not (art / "bin" / "llama-bench").is_file():
            raise SandboxError(f"no build of {commit[:10]} ({(config or self.config).note}) to run: build it first")
        return [Mount(art / "bin", "/build/bin", True)]

    # -- build -------------------------------------------------------------------------------------------------------
    def build_config(self, commit: str, *, worker: int = 0, targets: Sequence[str] = TOOLS + FAST_TESTS,
                     config: BuildConfig | None = None) -> BuildResult:
        """Configure and build `commit` in a worker's checkout (incrementally), and keep its binaries."""
        config = config or self.config
        if config.clean:
            return self._clean_build(commit, worker=worker, config=config)
        w = self._worker(worker)
        # Every candidate starts from the baseline commit's build in its own configuration, also one with added
        # CMake flags (a build variant, or a patch stacked on a kept one): only the flags, which every build of
        # that configuration runs anyway, went into that directory, never another candidate's code.
        from_baseline = commit != self.source.baseline
        if from_baseline and not (self._baseline_build_dir(w, config) / "CMakeCache.txt").is_file():
            self.build_config(self.source.baseline, worker=worker, config=config)  # what candidates start from
        with w.locked():
            if from_baseline:
                self._start_from_baseline(w, config, commit)
            w.checkout(commit)
            mounts = self._worker_mounts(w, config, commit)
            ccache = "write" if self.trusted(commit, config) else "read"
            configure, out = self._run(f"cmake -S /src -B /build {_cmake_args(config)}", timeout_s=600,
                                       log_name="configure",
                                       mounts=mounts, workdir="/build", ccache=ccache)
            self._discard(out)
            if not configure.ok:
                return self._build_result(False, "timeout" if configure.timed_out else "configure", configure,
                                          commit, config)
            art = self.artifact_dir(commit, config)
            art.mkdir(parents=True, exist_ok=True)
            (self.records_dir(commit, config) / "tests.json").unlink(missing_ok=True)  # a new build: not tested
            build, out = self._run(f"cmake --build /build -j {self._jobs()} --target {' '.join(targets)} && "
                                   f"rm -rf /artifact/bin && cp -a /build/bin /artifact/bin",
                                   timeout_s=self.build_timeout_s, log_name="build",
                                   mounts=[*mounts, Mount(art, "/artifact", False)], workdir="/build",
                                   ccache=ccache)
            self._discard(out)
            duration = configure.duration_s + build.duration_s
            if build.ok:
                return self._build_result(True, "ok", build, commit, config, duration)
            return self._build_result(False, _failed_stage(build), build, commit, config, duration)

    def _clean_build(self, commit: str, *, worker: int, config: BuildConfig) -> BuildResult:
        """`commit` configured and built in an empty directory with no compiler cache (llama-bench only); the
        directory goes afterwards, the binaries stay in the build's artifact."""
        w = self._worker(worker)
        with w.locked():
            w.checkout(commit)
            build_dir = w.build_dir(config_key(config))
            shutil.rmtree(build_dir, ignore_errors=True)
            build_dir.mkdir(parents=True)
            mounts = [Mount(w.src, "/src", True), Mount(build_dir, "/build", False)]
            art = self.artifact_dir(commit, config)
            art.mkdir(parents=True, exist_ok=True)
            try:
                # ccache=None: the cache is neither mounted nor used (CCACHE_DISABLE); every object compiled here
                r, out = self._run(f"cmake -S /src -B /build {_cmake_args(config)} && cmake --build /build -j "
                                   f"{self._jobs()} --target llama-bench && rm -rf /artifact/bin && "
                                   f"cp -a /build/bin /artifact/bin",
                                   timeout_s=self.build_timeout_s, log_name="clean-build",
                                   mounts=[*mounts, Mount(art, "/artifact", False)], workdir="/build", ccache=None)
                self._discard(out)
            finally:
                shutil.rmtree(build_dir, ignore_errors=True)
            if r.ok:
                return self._build_result(True, "ok", r, commit, config)
            shutil.rmtree(art / "bin", ignore_errors=True)
            return self._build_result(False, _failed_stage(r), r, commit, config)

    def _jobs(self) -> int:
        return max(1, int(getattr(getattr(self.sandbox, "limits", None), "cpus", os.cpu_count() or 1)))

    def _build_result(self, ok: bool, stage: str, r: CommandResult, commit: str, config: BuildConfig,
                      duration: float | None = None) -> BuildResult:
        return BuildResult(ok=ok, stage=stage, duration_s=round(duration if duration is not None else r.duration_s, 3),
                           log_tail=r.output_tail[-8000:], config=config, commit=commit, log_path=r.log_path)

    # -- tests ---------------------------------------------------------------------------------------------------
    def records_dir(self, commit: str, config: BuildConfig | None = None) -> Path:
        """Where the host keeps what it wrote about a build (its tests' result), keyed like its artifact but never
        mounted into a container: a build writes its artifact folder, and a planted result there passed the gate."""
        return self.paths.cache / "records" / self.source.key / f"{commit[:16]}-{config_key(config or self.config)}"

    def _cached_tests(self, commit: str, config: BuildConfig) -> TestResult | None:
        try:
            return from_dict(TestResult, json.loads((self.records_dir(commit, config) / "tests.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _tests_of(self, commit: str, config: BuildConfig, worker: int) -> TestResult:
        """The ctest subset of a build, run once per build: an unchanged build's result is read back."""
        cached = self._cached_tests(commit, config)
        if cached is not None:
            return cached
        # ctest runs in the worker's build directory, which must hold this very build.
        build = self.build_config(commit, worker=worker, config=config)
        if not build.ok:
            return TestResult(False, [], f"the build for the tests failed at {build.stage}: {build.log_tail[-1000:]}",
                              build.duration_s)
        tests = self.run_tests(commit, worker=worker, config=config)
        record = self.records_dir(commit, config) / "tests.json"
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(to_dict(tests)))
        return tests

    def run_tests(self, commit: str, *, worker: int = 0, tests: Sequence[str] = FAST_TESTS,
                  config: BuildConfig | None = None) -> TestResult:
        """Run the fast ctest subset in the worker's build of `commit` (build it first)."""
        config = config or self.config
        w = self._worker(worker)
        with w.locked():
            w.checkout(commit)
            pattern = "^(" + "|".join(re.escape(t) for t in tests) + ")$"
            r, out = self._run(f"ctest --test-dir /build -R '{pattern}' --timeout 600 --output-on-failure "
                               f"--output-junit /out/junit.xml", timeout_s=self.run_timeout_s, log_name="ctest",
                               mounts=self._worker_mounts(w, config, commit), workdir="/build")
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

    # -- benchmark -------------------------------------------------------------------------------------------------
    def bench(self, commit: str, *, model: Path, options: BenchOptions = BenchOptions(),
              config: BuildConfig | None = None) -> BenchResult:
        """llama-bench on a finished build, with the machine to itself (no other benchmark, build or test beside it:
        they would measure each other)."""
        rel = self._model_in_container(model)
        mounts = self._tool_mounts(commit, config)
        extra = (f" -ub {options.ubatch}" if options.ubatch else "") + ("" if options.warmup else " --no-warmup")
        cmd = (f"/build/bin/llama-bench -m {rel} -p {options.n_prompt} -n {options.n_gen} "
               f"-t {options.threads} -fa {int(options.flash_attn)} -r {options.repetitions}{extra} -o json "
               f"> /out/bench.json")
        self.paths.cache.mkdir(parents=True, exist_ok=True)
        cpus = bench_cpus(options.threads)
        r, out = self._run(cmd, timeout_s=self.run_timeout_s, log_name="bench", mounts=mounts, cpuset=cpus,
                           measuring=True)
        try:
            text = read_text_inside(out, "bench.json") if r.ok else ""
        except OSError as e:  # a symlink, a FIFO, a folder, too large: what a patched build can leave there
            raise SandboxError(f"llama-bench's result could not be read back: {e}") from None
        finally:
            self._discard(out)
        if not r.ok:
            timed_out = ", timed out" if r.timed_out else ""
            raise SandboxError(f"llama-bench failed ({describe_exit(r.exit_code)}{timed_out}): "
                               f"{r.output_tail[-1500:]}")
        result = parse_bench_json(text, options=options, config=config or self.config, model=model.name)
        result.cpus = cpus
        result.duration_s = r.duration_s
        result.foreign_share, result.retakes = r.foreign_share, r.retakes
        return result

    def _model_in_container(self, model: Path) -> str:
        model = Path(model).resolve()
        models = self.paths.models.resolve()
        if models not in model.parents:
            raise SandboxError(f"model {model} is not in the model cache {models}")
        return "/models/" + str(model.relative_to(models))

    # -- models ------------------------------------------------------------------------------------------------------
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

    # -- logits ------------------------------------------------------------------------------------------------------
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
                    flash_attn: bool, extra: Sequence[Mount], log_name: str,
                    collect: tuple[str, ...] | None = None) -> tuple[CommandResult, Path]:
        rel = self._model_in_container(model)
        text = self._kld_text()
        cmd = (f"/build/bin/llama-perplexity -m {rel} -f /text/text.txt -c {ctx} --chunks {chunks} -t 2 "
               f"-fa {'on' if flash_attn else 'off'} {args}")
        return self._run(cmd, timeout_s=self.run_timeout_s, log_name=log_name,
                         mounts=[*self._tool_mounts(commit, config), Mount(text.parent, "/text", True), *extra],
                         collect=collect)

    def kld_base(self, commit: str, *, model: Path, config: BuildConfig | None = None, ctx: int = 128,
                 chunks: int = 8, flash_attn: bool = True) -> Path:
        """The baseline's logits (llama-perplexity --kl-divergence-base), cached per build, model and settings."""
        config = config or self.config
        dest = (self.paths.cache / "kld" / f"{commit[:12]}-{config_key(config)}-{Path(model).stem}-c{ctx}x{chunks}"
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
                                  chunks, flash_attn, [Mount(base_logits.parent, "/kld", True)], "kld",
                                  collect=KLD_MARKERS)
        self._discard(out)
        if not r.ok:
            return KLDResult(float("inf"), float("inf"), float("inf"), 0.0, False,
                             f"llama-perplexity failed (exit {r.exit_code}): {r.output_tail[-1500:]}")
        return parse_kld(r.output_tail, lines=r.lines, capped=r.lines_capped)


def _tests_check(tests: TestResult) -> CheckResult:
    """The ctest subset as a check, its failure a sentence naming the failed cases."""
    failed = [c.name for c in tests.cases if not c.passed]
    reason = ""
    if failed:
        shown = ", ".join(failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
        reason = f"tests failed: {shown} ({len(failed)} of {len(tests.cases)})."
    elif not tests.ok:
        tail = tests.log_tail.strip().splitlines()[-1:] or ["no output"]
        reason = f"tests failed: {tail[0][:200]}"
    return CheckResult("tests", tests.ok and not failed, reason, tests.duration_s,
                       {"cases": [dataclasses.asdict(c) for c in tests.cases], "log_tail": tests.log_tail[-3000:]})


def parse_bench_json(text: str, *, options: BenchOptions, config: BuildConfig, model: str) -> BenchResult:
    """llama-bench's JSON as a BenchResult. Whatever the file holds (a patched build writes it), a shape that is
    not llama-bench's is a SandboxError, which discards the candidate, never another exception."""
    try:
        rows = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise SandboxError(f"llama-bench wrote no valid JSON: {str(e)[:200]}") from None
    try:
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise TypeError("not a list of objects")
        samples = []
        for row in rows:
            n_prompt, n_gen = int(row.get("n_prompt", 0)), int(row.get("n_gen", 0))
            test = f"pp{n_prompt}" if n_gen == 0 else (f"tg{n_gen}" if n_prompt == 0 else f"pp{n_prompt}+tg{n_gen}")
            values = [float(x) for x in row.get("samples_ts", [])]
            mean, sd = float(row.get("avg_ts", 0.0)), float(row.get("stddev_ts", 0.0))
            if not all(math.isfinite(v) for v in [*values, mean, sd]):
                raise ValueError("a throughput that is not a finite number")
            # The verdict reads the mean, the host's clock check reads the samples (their seconds): llama-bench
            # writes one sample per repetition and their mean, so a file where they disagree was rewritten.
            if len(values) != options.repetitions or not all(v > 0 for v in values):
                raise ValueError(f"{test}: {len(values)} positive samples for {options.repetitions} repetitions")
            if abs(mean - sum(values) / len(values)) > 1e-3 * mean:
                raise ValueError(f"{test}: avg_ts {mean:g} is not the mean of its samples "
                                 f"({sum(values) / len(values):g})")
            samples.append(BenchSample(test=test, n_prompt=n_prompt, n_gen=n_gen, samples_ts=values, mean_ts=mean,
                                       stddev_ts=sd))
        first = rows[0] if rows else {}
        return BenchResult(samples=samples, threads=options.threads, flash_attn=options.flash_attn,
                           cpu=str(first.get("cpu_info") or cpu_model()),
                           build_commit=str(first.get("build_commit", "")), config=config, model=model, raw=rows)
    except (TypeError, ValueError, AttributeError, OverflowError) as e:
        raise SandboxError(f"llama-bench's JSON is not of its usual shape ({str(e)[:200]})") from None


def _parse_junit(text: str) -> list[TestCase]:
    root = ET.fromstring(text)
    cases = []
    for tc in root.iter("testcase"):
        failed = tc.find("failure") is not None or tc.find("error") is not None or tc.get("status") == "fail"
        skipped = tc.find("skipped") is not None
        cases.append(TestCase(tc.get("name", "?"), not failed and not skipped, float(tc.get("time", 0) or 0)))
    return cases
