"""Tokens and dollars per experiment in LLM mode: the real graph, the real prompts and the real `anthropic`
client against the scripted Messages-API server of the tests, with replies of realistic size.

The target is llama.cpp's real source tree (a local clone of the pinned source; the implementer's tools read
its real files) behind a scripted build and benchmark: every third experiment's first patch does not build (a
realistic compiler error, one repair), every fourth is 3% faster (kept, so the next wave builds on it), the rest
are no faster. The knowledge base serves 3,000-character excerpts of real llama.cpp files. So the prompt side is
what the code really sends (briefing, ledger, findings, tool outputs), and the reply side is scripted at the
sizes a model writes (a plan of two hypotheses and questions, tool calls, a 40-line edit, short summaries).

Usage is counted as the API would bill it: input tokens from the request's size (3.5 characters per token, the
tokenizer's typical ratio for C and English; no tokenizer is available offline), cache reads for the prefix a
marked request shares with the same conversation's previous request, cache writes for the rest.

Writes the section `llm-cost` of docs/PERFORMANCE.md.

    python bench/llm_cost.py [--experiments 12] [--model claude-sonnet-4-6]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _report import write_section  # noqa: E402
from fake_anthropic import FakeAnthropic  # noqa: E402

from readfirst.agents.llm import (DEFAULT_MODEL, AnthropicLLM, Budget, make_client, message_json,  # noqa: E402
                                  price_for, text_block, tool_use_block)
from readfirst.config import Paths  # noqa: E402
from readfirst.graph.deps import llm_roles  # noqa: E402
from readfirst.graph.ledger import Ledger  # noqa: E402
from readfirst.graph.runner import execute, write_meta  # noqa: E402
from readfirst.graph.workflow import RunDeps, RunOptions  # noqa: E402
from readfirst.records import (Baseline, BuildConfig, BuildResult, CheckResult, Checks, Measurement,  # noqa: E402
                               Objective, Profile)
from readfirst.sandbox.machine_lock import machine_lock  # noqa: E402
from readfirst.sources import git, prepare_source  # noqa: E402

CHARS_PER_TOKEN = 3.5
OPS = "ggml/src/ggml-cpu/ops.cpp"
ANCHOR = "static void ggml_compute_forward_rms_norm_f32("
READ_FILES = ("ggml/src/ggml-cpu/ops.cpp", "ggml/src/ggml-cpu/vec.h", "ggml/src/ggml-cpu/ggml-cpu.c",
              "ggml/src/ggml-cpu/quants.c", "ggml/src/ggml-cpu/simd-mappings.h")
COMPILER_ERROR = ("[ 41%] Building CXX object ggml/src/CMakeFiles/ggml-cpu.dir/ggml-cpu/ops.cpp.o\n"
                  "/src/ggml/src/ggml-cpu/ops.cpp:3378:5: error: 'BENCH_BREAK' was not declared in this scope\n"
                  " 3378 |     BENCH_BREAK;\n      |     ^~~~~~~~~~~\n")


def tokens(text: str) -> int:
    return max(1, int(len(text) / CHARS_PER_TOKEN))


class ScriptedLlamaCpp:
    """llama.cpp's tree, a scripted build and benchmark (see the module's docstring)."""
    name = "llama.cpp"
    objective = Objective(metric="tg", direction="higher", guards=None, unit="t/s")
    hot_paths = ("ggml/src/ggml-cpu/*",)
    protected = ("tests/*", "tools/llama-bench/*")

    def __init__(self, repo: Path):
        self.repository = repo
        self.base = git(repo, "rev-parse", "HEAD").stdout.strip()
        self.runs = 0

    def _diff(self, commit: str) -> str:
        return git(self.repository, "diff", self.base, commit).stdout

    def prepare(self) -> Baseline:
        return Baseline(self.base, {"threads": 2}, Checks([CheckResult("tests", True)]))

    def commit_patch(self, patch: str, *, base: str, message: str = "") -> str:
        from readfirst.sandbox.patch import commit_patch
        return commit_patch(self.repository, patch, base=base, message=message, protected=self.protected)

    def build(self, commit: str, variant: dict[str, Any], *, worker: int = 0) -> BuildResult:
        broken = "+    BENCH_BREAK;" in self._diff(commit)
        log = ("".join(f"[{i:3d}%] Building C object ggml/src/unit{i}.c.o\n" for i in range(40))
               + (COMPILER_ERROR + "make[2]: *** Error 1\n" if broken else "[100%] Built target llama-bench\n"))
        return BuildResult(not broken, "compile" if broken else "ok", 1.0, log, BuildConfig(), commit)

    def clean(self, variant: dict[str, Any]) -> dict[str, Any]:
        return dict(variant)  # a scripted build has no stale objects

    def checks(self, commit: str, variant: dict[str, Any], *, baseline: Baseline, worker: int = 0) -> Checks:
        return Checks([CheckResult("tests", True), CheckResult("logits", True, "", 0.1, {"kld_mean": 0.0002})])

    def measure(self, commit: str, variant: dict[str, Any], metrics=None) -> Measurement:
        self.runs += 1
        fast = 1 + 0.03 * self._diff(commit).count("BENCH_FAST")
        wobble = 1 + 0.004 * math.sin(self.runs)
        return Measurement({"tg128": 40.0 * fast * wobble, "pp512": 200.0 * wobble}, {"cpu": "scripted"}, 2.0)

    def profile(self, baseline: Baseline) -> Profile:
        facts = ["Machine: AMD EPYC (scripted), 2 threads; read bandwidth measured in the sandbox: 14.2 GB/s.",
                 "One generated token reads 606 MiB of weights, so generation is bounded at 22.4 t/s; the baseline "
                 "generates 17.8 t/s = 79% of that limit.",
                 "Generation is memory-bound: faster arithmetic (SIMD micro-tuning) will not move it; read fewer "
                 "bytes or make fewer passes over activations (operator fusion, fewer graph nodes, less "
                 "synchronization between threads).",
                 "Prompt processing runs 61.3 t/s and is compute-bound (weights are reused across the batch): "
                 "matmul kernels, repacking and tiling decide it."]
        queries = {"research": ["operator fusion memory-bound decoding", "quantized matrix-vector product bandwidth",
                                "thread synchronization barrier overhead", "activation quantization q8_0 cost",
                                "cache blocking for prompt processing"],
                   "competitors": ["fused rms_norm mul", "q4_0 q8_0 dot product AVX2", "ggml barrier spin",
                                   "flash attention CPU tiling", "repack q4_0 interleaved"]}
        raw = [{"model_type": "llama 1B Q4_0", "model_n_params": 1.1e9, "model_size": 635_000_000, "n_ubatch": 512}]
        return Profile(facts, {"tg128": 17.8, "pp512": 61.3}, queries, {"bench": {"raw": raw}},
                       hot_symbols=["vec_dot_q4_0", "quantize_row_q8_0", "mul_mat", "rms_norm", "rope"])

    def variants(self, variant: dict[str, Any]) -> list[dict[str, Any]]:
        return []

    def apply(self, variant: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
        return {**variant, **change}

    def readings(self) -> list[dict[str, Any]]:
        return []

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "repository": str(self.repository), "baseline": self.base}


class ExcerptKnowledgeBase:
    """Real text: 3,000-character excerpts of llama.cpp's CPU backend, as chunks of the kind asked for."""

    def __init__(self, repo: Path):
        text = "".join(git(repo, "show", f"HEAD:{p}").stdout for p in READ_FILES)
        self.excerpts = [text[i:i + 3000] for i in range(0, len(text) - 3000, 3000)]

    def _chunk(self, n: int, kind: str) -> dict[str, Any]:
        return {"id": f"c{n}-{kind}", "kind": kind, "repo": "ik_llama.cpp" if kind.startswith("fork") else "",
                "path": OPS, "start_line": 1, "end_line": 80, "symbol": "", "title": f"excerpt {n}",
                "text": self.excerpts[n % len(self.excerpts)], "snippet": self.excerpts[n % len(self.excerpts)][:300]}

    def query(self, text: str, k: int = 8, where: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        kinds = (where or {}).get("kind") or "paper"
        kind = kinds[0] if isinstance(kinds, list) else kinds
        seed = int(hashlib.sha1(text.encode()).hexdigest()[:6], 16)
        # fork chunks cite hot paths, so the competitor analyst keeps them
        return [{**self._chunk(seed + i, kind), "path": OPS} for i in range(k)]

    def get(self, ids: Any) -> list[dict[str, Any]]:
        return [self._chunk(int(re.match(r"c(\d+)", i).group(1)), i.split("-", 1)[1]) for i in ids]

    def count(self) -> int:
        return len(self.excerpts)


class Billing:
    """Usage as the API bills it (see the module's docstring), per conversation for the cache."""

    def __init__(self):
        self.cached: dict[str, int] = {}

    def usage(self, body: dict[str, Any], reply_text: str) -> dict[str, int]:
        sent = json.dumps({k: body.get(k) for k in ("system", "messages", "tools")})
        total = tokens(sent)
        marked = "cache_control" in sent
        key = hashlib.sha1(json.dumps(body["messages"][0]).encode()).hexdigest()
        out = {"input_tokens": total, "output_tokens": tokens(reply_text)}
        if marked:
            read = min(self.cached.get(key, 0), total)
            out.update(input_tokens=0, cache_read_input_tokens=read, cache_creation_input_tokens=total - read)
            self.cached[key] = total
        return out


def responder(billing: Billing, repo: Path):
    ops_lines = len(git(repo, "show", f"HEAD:{OPS}").stdout.splitlines())

    def reply(body: dict[str, Any]) -> dict[str, Any]:
        system = json.dumps(body.get("system", ""))
        messages = body["messages"]
        first = messages[0]["content"]
        first = first if isinstance(first, str) else " ".join(b.get("text", "") for b in first)
        if "You plan performance experiments" in system:
            fids = re.findall(r"- (F[0-9a-f]{10}):", first)[:3]
            n = len(re.findall(r"^- E\d+ ", first, flags=re.M)) + len(re.findall(r"queued", first))
            plan = {"hypotheses": [{
                "title": f"Bench idea {n + i}: fuse the rms_norm pass with the following multiply, variant {n + i}",
                "rationale": "Generation is memory-bound; the norm and the multiply each read the activations. "
                             "Fusing them saves one pass over a row per layer and one barrier between the ops. "
                             "The fork implements the fused kernel for CPU; CUDA has it as a fusion.",
                "files": [OPS, "ggml/src/ggml-cpu/ggml-cpu.c"], "functions": [f"ggml_compute_forward_bench_{n + i}"],
                "findings": fids, "expected_gain": "2-4% tg"} for i in range(2)],
                "questions": ["fused rms_norm mul CPU kernel", "graph node fusion in ggml-cpu scheduler",
                              "barrier cost per op in ggml_graph_compute_thread"]}
            text = json.dumps(plan, indent=1)
            return {**message_json(text), "usage": billing.usage(body, text)}
        if "You are the implementer" in system:
            blocks = implementer_step(messages, first, ops_lines)
            text = json.dumps(blocks)
            return {**message_json(blocks), "usage": billing.usage(body, text)}
        # a summary of excerpts: three claims citing the first chunks
        ids = re.findall(r'<untrusted-source id="([^"]+)"', first)[:3]
        claims = [{"claim": f"The excerpt shows how the CPU backend computes this op row by row, with one pass "
                            f"over the activations per op and a barrier between ops; claim {i}.", "citations": [c]}
                  for i, c in enumerate(ids)]
        text = json.dumps(claims, indent=1)
        return {**message_json(text), "usage": billing.usage(body, text)}
    return reply


def implementer_step(messages: list[dict[str, Any]], first: str, ops_lines: int) -> list[dict[str, Any]]:
    """The conversation of one experiment: read around, edit, summarize; a repair: read, fix, summarize."""
    number = int(re.search(r"Bench idea (\d+)", first).group(1))

    def text_of(content: Any) -> str:
        return content if isinstance(content, str) else " ".join(b.get("text", "") for b in content
                                                                  if b.get("type") == "text")
    # the last user turn that carries text (the task, or a failure's evidence), and the steps taken since
    last = max(i for i, m in enumerate(messages) if m["role"] == "user" and text_of(m["content"]))
    since = sum(1 for m in messages[last + 1:] if m["role"] == "assistant")
    repairing = "does not build" in text_of(messages[last]["content"])
    mid = max(1, ops_lines // 2)
    if not repairing:
        plan = [tool_use_block("list_dir", {"path": "ggml/src/ggml-cpu"}),
                tool_use_block("search", {"pattern": "ggml_compute_forward_rms_norm_f32",
                                          "path_glob": "ggml/src/ggml-cpu/*"}),
                tool_use_block("read_file", {"path": OPS, "start_line": mid, "end_line": mid + 299}),
                tool_use_block("read_file", {"path": OPS, "start_line": mid + 300, "end_line": mid + 599}),
                tool_use_block("read_file", {"path": "ggml/src/ggml-cpu/vec.h", "start_line": 1, "end_line": 300})]
        if since < len(plan):
            return ([text_block("Reading the code around the op.")] if since == 0 else []) + [plan[since]]
        if since == len(plan):
            body = "".join(f"    // step {i} of the fused row loop of idea {number}: scale and multiply in one pass\n"
                           for i in range(36))
            marker = "    BENCH_BREAK;\n" if number % 3 == 0 else ""
            fast = "    /* BENCH_FAST */\n" if number % 4 == 1 else ""
            new = (f"static void ggml_compute_forward_bench_{number}(void) {{\n{body}{marker}{fast}}}\n\n{ANCHOR}")
            return [tool_use_block("replace_in_file", {"path": OPS, "old": ANCHOR, "new": new})]
        return [text_block(f"Added ggml_compute_forward_bench_{number} to {OPS}: one pass over each row instead of "
                           "two, so one read of the activations is saved per layer. Numerics are unchanged: the "
                           "same operations in the same order. Risk: the fused path must keep the existing "
                           "ISA guards.")]
    if since == 0:
        return [tool_use_block("read_file", {"path": OPS, "start_line": mid, "end_line": mid + 120})]
    if since == 1:
        return [tool_use_block("replace_in_file", {"path": OPS, "old": "    BENCH_BREAK;\n", "new": ""})]
    return [text_block("Removed the undeclared identifier; the fused loop is unchanged.")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", type=int, default=12, help="experiments in the run (default 12)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"prices of this model (default {DEFAULT_MODEL})")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/PERFORMANCE.md alone")
    args = parser.parse_args()
    paths = Paths.resolve()
    upstream = prepare_source("llama.cpp", paths.sources, paths.sdists)
    with tempfile.TemporaryDirectory(prefix="readfirst-llm-cost-") as scratch_name:
        scratch = Path(scratch_name)
        repo = scratch / "llama.cpp"
        subprocess.run(["git", "clone", "-q", "--shared", str(upstream.path), str(repo)], check=True)
        subprocess.run(["git", "-C", str(repo), "checkout", "-q", "baseline"], check=True)
        target = ScriptedLlamaCpp(repo)
        billing = Billing()
        directory = scratch / "run"
        directory.mkdir()
        meta = {"run_id": "llm-cost", "created_at": time.time(), "source": str(repo), "status": "starting"}
        options = RunOptions(budget_experiments=args.experiments, budget_usd=1000.0, workers=1, offline=False,
                             calibration_pairs=0, max_runs=16, max_research_rounds=args.experiments + 1,
                             kinds=("llm",))
        meta["options"] = asdict(options)
        write_meta(directory, meta)
        budget = Budget(options.budget_usd)
        with FakeAnthropic([responder(billing, repo)] * 2000) as fake:
            llm = AnthropicLLM(make_client("sk-bench", base_url=fake.url, max_retries=0), model=args.model,
                               budget=budget)
            ledger = Ledger(directory / "ledger.sqlite")
            deps = RunDeps(target=target, ledger=ledger, run_dir=directory, kb=ExcerptKnowledgeBase(repo), llm=llm,
                           spent_usd=lambda: budget.spent_usd, **llm_roles(llm, target))
            started = time.monotonic()
            # Not a timing measurement (tokens are counted), but it runs git and the graph: nothing beside a
            # benchmark of someone else's.
            with machine_lock(paths.cache, exclusive=True):
                summary = execute(deps, directory, "llm-cost", options=options, meta=meta)
            wall = time.monotonic() - started
            rows = ledger.rows()
            ledger.close()
            requests = fake.count
    n = len(rows)
    snapshot = budget.snapshot()
    total = snapshot["total"]
    kept = len(summary["kept"])
    p_in, p_out = price_for(args.model)
    lines = [f"{n} experiments ({kept} kept, {sum(1 for r in rows if 'repair_1' in (r.get('llm') or {}))} repaired "
             f"after a failed build), {requests} model calls, {wall:.0f} s; model prices: {args.model} "
             f"(${p_in:g} / ${p_out:g} per Mtok in/out, cache writes 1.25x, reads 0.1x).", "",
             "| | calls | input tokens (incl. cache) | output tokens | USD | USD per experiment |",
             "|---|---:|---:|---:|---:|---:|"]
    for agent, v in sorted(snapshot["by_agent"].items()):
        lines.append(f"| {agent} | {v['calls']:.0f} | {v['input_tokens']:,.0f} | {v['output_tokens']:,.0f} | "
                     f"{v['cost_usd']:.3f} | {v['cost_usd'] / n:.3f} |")
    lines.append(f"| **all** | {total['calls']:.0f} | {total['input_tokens']:,.0f} | {total['output_tokens']:,.0f} | "
                 f"{total['cost_usd']:.3f} | **{total['cost_usd'] / n:.3f}** |")
    lines += ["", f"Per experiment: {(total['input_tokens'] + total['output_tokens']) / n:,.0f} tokens, "
                  f"${total['cost_usd'] / n:.3f}" + (f"; per kept win: ${total['cost_usd'] / kept:.2f}." if kept
                                                     else "."),
              "Token counts are the request's characters / 3.5 (no tokenizer offline); the replies are scripted at "
              "the sizes a model writes, the prompts are the code's own."]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("llm-cost", "LLM mode: tokens and dollars per experiment (scripted server)", body)


if __name__ == "__main__":
    main()
