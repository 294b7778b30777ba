"""Knowledge-base benchmark: ingestion throughput, query latency (at the corpus size and at 100k chunks) and
retrieval quality (recall@5, MRR) of dense-only, lexical-only and combined search on labelled queries.

    python bench/kb_bench.py [--home DIR] [--reuse] [--whole-tree] [--synthetic 100000]

The corpus: ik_llama.cpp's ggml/src/iqk against upstream (fork-only code, chunked by function), upstream's CPU
backend files, the backend-gap documents of upstream's ggml tree, and the reading list. Writes its section of
docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402
from kb_queries import QUERIES, relevant  # noqa: E402

from readfirst.config import Paths  # noqa: E402
from readfirst.knowledge_base.chunking import Chunk, Unit  # noqa: E402
from readfirst.knowledge_base.embedder import SentenceTransformerEmbedder  # noqa: E402
from readfirst.knowledge_base.ingest import fork_recipe, recipe_units, run_recipe  # noqa: E402
from readfirst.knowledge_base.store import MODES, KnowledgeBase  # noqa: E402
from readfirst.sources import prepare_source  # noqa: E402

UPSTREAM_CPU_FILES = ["ggml-cpu.c", "ops.cpp", "vec.cpp", "vec.h", "binary-ops.cpp", "unary-ops.cpp", "quants.c",
                      "repack.cpp", "llamafile/sgemm.cpp", "ggml-cpu.cpp", "simd-mappings.h"]


def corpus_recipes(upstream: Path) -> list[dict]:
    return [
        fork_recipe("ik_llama.cpp", "llama.cpp", subdirs=["ggml/src/iqk"]),
        *[{"kind": "path", "path": str(upstream / "ggml/src/ggml-cpu" / f)} for f in UPSTREAM_CPU_FILES],
        {"kind": "backends", "target": "llama.cpp"},
        {"kind": "papers", "item": "reading-list"},
    ]


def build(kb: KnowledgeBase, recipes: list[dict], paths: Paths) -> dict:
    chunks, seconds = 0, 0.0
    for recipe in recipes:
        started = time.perf_counter()
        source, summary = run_recipe(kb, recipe, paths)
        elapsed = time.perf_counter() - started
        chunks += summary.chunks_added
        seconds += elapsed
        print(f"ingest: {source}: {summary.chunks_added} chunks in {elapsed:.1f} s", flush=True)
    return {"chunks": chunks, "seconds": seconds}


def whole_tree_chunking(paths: Paths) -> dict:
    """The whole ik_llama.cpp tree against upstream, read and chunked (everything but embedding and writing)."""
    started = time.perf_counter()
    units = skipped = chunks = 0
    for item in recipe_units(fork_recipe("ik_llama.cpp", "llama.cpp"), paths):
        if isinstance(item, Unit):
            units += 1
            chunks += len(item.chunks)
        else:
            skipped += 1
    return {"units": units, "skipped": skipped, "chunks": chunks, "seconds": time.perf_counter() - started}


def quality(kb: KnowledgeBase) -> dict:
    out = {}
    for mode in MODES:
        rows = []
        for label in QUERIES:
            results = kb.query(label["q"], k=10, mode=mode)
            ranks = [i + 1 for i, r in enumerate(results) if relevant(r, label)]
            rows.append((label.get("exact", False), ranks[0] if ranks else None))
        out[mode] = {}
        for group, keep in (("all", lambda e: True), ("identifiers", lambda e: e), ("natural", lambda e: not e)):
            firsts = [first for exact, first in rows if keep(exact)]
            out[mode][group] = {
                "n": len(firsts),
                "recall@5": sum(1 for f in firsts if f and f <= 5) / len(firsts),
                "mrr@10": sum(1 / f for f in firsts if f) / len(firsts),
            }
    return out


def latency(kb: KnowledgeBase, repeats: int = 3) -> dict:
    out = {}
    for mode in MODES:
        times = []
        for label in QUERIES[:3]:
            kb.query(label["q"], k=10, mode=mode)  # warm-up: model load, caches
        for _ in range(repeats):
            for label in QUERIES:
                started = time.perf_counter()
                kb.query(label["q"], k=10, mode=mode)
                times.append((time.perf_counter() - started) * 1000)
        times.sort()
        out[mode] = {"p50_ms": statistics.median(times), "p95_ms": times[int(0.95 * (len(times) - 1))],
                     "n": len(times)}
    return out


class PrecomputedEmbedder:
    """Vectors looked up by text (for synthetic copies of real chunks); anything else goes to the real model."""

    def __init__(self, real: SentenceTransformerEmbedder, table: dict[str, list[float]]):
        self.name, self.real, self.table = real.name, real, table

    def embed(self, texts):
        missing = [t for t in texts if t not in self.table]
        fresh = dict(zip(missing, self.real.embed(missing))) if missing else {}
        return [self.table.get(t) or fresh[t] for t in texts]


def synthetic(kb: KnowledgeBase, directory: Path, real: SentenceTransformerEmbedder, n: int) -> dict:
    """A store of n chunks: copies of the corpus's chunks, each with its own text and a perturbed vector."""
    rows = list(kb.chunks(vectors=True))
    rng = np.random.default_rng(0)
    table: dict[str, list[float]] = {}
    units, batch = [], []
    for i in range(n):
        cid, text, meta, vector = rows[i % len(rows)]
        copy_text = f"{text}\n// synthetic copy {i}"
        v = np.asarray(vector) + rng.normal(0, 0.02, len(vector))
        table[copy_text] = (v / np.linalg.norm(v)).tolist()
        origin = {k: meta[k] for k in ("repo", "path", "start_line", "end_line", "symbol", "paper_id", "title",
                                       "section") if k in meta}
        batch.append(Chunk(copy_text, meta["kind"], f"synthetic::{i // 500}", {**origin, "copy": i}))
        if len(batch) == 500:
            units.append(Unit(f"synthetic::{i // 500}", batch))
            batch = []
    if batch:
        units.append(Unit(f"synthetic::{n // 500}", batch))
    big = KnowledgeBase(directory, PrecomputedEmbedder(real, table), writable=True, batch_size=2000)
    started = time.perf_counter()
    write_s = None
    if big.count() < n:  # a store written by an earlier run is reused as it is
        big.ingest("synthetic", units)
        write_s = time.perf_counter() - started
    try:
        return {"chunks": big.count(), "write_s": write_s, "latency": latency(big, repeats=2)}
    finally:
        big.close()


def fmt_quality(q: dict) -> str:
    lines = ["| search | recall@5 (all) | MRR@10 (all) | recall@5 identifiers | MRR identifiers | "
             "recall@5 natural language | MRR natural language |", "|---|---|---|---|---|---|---|"]
    for mode in MODES:
        a, i, n = q[mode]["all"], q[mode]["identifiers"], q[mode]["natural"]
        lines.append(f"| {mode} | {a['recall@5']:.2f} | {a['mrr@10']:.2f} | {i['recall@5']:.2f} | {i['mrr@10']:.2f} "
                     f"| {n['recall@5']:.2f} | {n['mrr@10']:.2f} |")
    return "\n".join(lines)


def fmt_latency(lat: dict) -> str:
    return ", ".join(f"{m} p50 {v['p50_ms']:.0f} ms / p95 {v['p95_ms']:.0f} ms" for m, v in lat.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("/tmp/readfirst-kb-bench"))
    parser.add_argument("--reuse", action="store_true", help="Query an already built corpus store.")
    parser.add_argument("--synthetic", type=int, default=100_000, help="Chunks of the large store (0: skip).")
    args = parser.parse_args()
    paths = Paths.resolve(home=args.home, cache=Paths.resolve().cache)
    upstream = prepare_source("llama.cpp", paths.sources, paths.sdists)
    prepare_source("ik_llama.cpp", paths.sources, paths.sdists)
    embedder = SentenceTransformerEmbedder()

    cached = args.home / "ingestion.json"  # what --reuse reports for the ingestion it does not repeat
    if args.reuse and cached.exists():
        tree, built = json.loads(cached.read_text())
    else:
        tree = whole_tree_chunking(paths)
    print(f"whole_tree: {tree}", flush=True)
    with KnowledgeBase(paths.knowledge_base, embedder, writable=True) as kb:
        if not (args.reuse and cached.exists()):
            built = build(kb, corpus_recipes(upstream.path), paths)
            cached.write_text(json.dumps([tree, built]))
        print(f"corpus: {built}", flush=True)
        q = quality(kb)
        print(f"quality: {q}", flush=True)
        lat = latency(kb)
        print(f"latency: {lat}", flush=True)
        size = kb.count()
        big = synthetic(kb, args.home / "synthetic", embedder, args.synthetic) if args.synthetic else None
        print(f"synthetic: {big}", flush=True)

    rate = built["chunks"] / built["seconds"] if built.get("seconds") else None
    body = [f"Corpus: ik_llama.cpp `ggml/src/iqk` (fork-only code, by function), upstream llama.cpp's CPU backend "
            f"files ({', '.join(UPSTREAM_CPU_FILES)}), backend-gap documents of upstream's ggml tree, the reading "
            f"list: **{size} chunks**. Model all-MiniLM-L6-v2 on the CPU (max 256 word pieces per chunk).", ""]
    if rate:
        body.append(f"- ingestion (read, chunk, embed, write Chroma + FTS5): {built['chunks']} chunks in "
                    f"{built['seconds']:.0f} s = **{rate:.1f} chunks/s**; embedding is nearly all of it.")
    body.append(f"- whole ik_llama.cpp tree against upstream (every file; tree mode): {tree['units']} units, "
                f"{tree['chunks']} chunks, {tree['skipped']} skipped, read and chunked in {tree['seconds']:.0f} s "
                f"({tree['chunks'] / tree['seconds']:.0f} chunks/s without embedding); its ingestion with "
                f"embedding is not measured yet.")
    body.append(f"- query latency at {size} chunks (k=10, {lat['hybrid']['n']} queries each): {fmt_latency(lat)}.")
    if big:
        body.append(f"- query latency at {big['chunks']} chunks: {fmt_latency(big['latency'])}. The large store holds "
                    f"copies of the corpus chunks with perturbed vectors (embedding 100k chunks is not "
                    f"measured)" + (f"; writing them (Chroma + FTS5, no embedding) took {big['write_s']:.0f} s"
                                if big["write_s"] else "") + ".")
    body += ["", f"Retrieval quality on {len(QUERIES)} labelled queries (bench/kb_queries.py: "
                 f"{sum(1 for x in QUERIES if x.get('exact'))} name an identifier, the rest are natural language); "
                 "recall@5 = share of queries with a relevant chunk in the top 5, MRR over the top 10:", "",
             fmt_quality(q)]
    body.append(f"\nLoad average at the end of the run: {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
                "(this machine is shared; latencies under load spread wide).")
    write_section("kb", "Knowledge base: ingestion, query latency, retrieval quality", "\n".join(body))
    print("\n".join(body))


if __name__ == "__main__":
    main()
