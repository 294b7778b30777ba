"""Knowledge-base benchmark: the whole ik_llama.cpp tree ingested cold and re-ingested after one file changed,
query latency (at the whole-tree size and at 100k chunks), and retrieval quality (recall@5, MRR) of hybrid,
dense-only and lexical-only search on labelled queries, for the embedder that ships and the ones it replaced.

    python bench/kb_bench.py [--home DIR] [--synthetic 100000] [--reuse-large]

Stores (all under --home, made anew each run except the large one with --reuse-large):
- tree: the whole ik_llama.cpp tree against upstream (every file, as trees), then upstream's CPU backend files,
  the backend-gap documents and the reading list: what the tree queries and the latency are measured on;
- corpus-*: the small corpus of earlier runs (ggml/src/iqk, the same upstream files, gaps, reading list) and the
  files of the tree queries, once per embedder compared: quality on the same ground as the figures before (their
  36 queries), and on all queries;
- synthetic: 100k chunks, copies of the tree store's chunks with perturbed vectors, for latency at that size.
Holds the machine's lock exclusively while it measures. Writes its section of docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402
from kb_queries import QUERIES, TREE_QUERIES, relevant  # noqa: E402

from readfirst.config import Paths  # noqa: E402
from readfirst.knowledge_base.chunking import Chunk, Unit  # noqa: E402
from readfirst.knowledge_base.embedder import make_embedder  # noqa: E402
from readfirst.knowledge_base.ingest import fork_recipe, run_recipe  # noqa: E402
from readfirst.knowledge_base.store import MODES, KnowledgeBase  # noqa: E402
from readfirst.sandbox.machine_lock import machine_lock  # noqa: E402
from readfirst.sources import prepare_source  # noqa: E402

UPSTREAM_CPU_FILES = ["ggml-cpu.c", "ops.cpp", "vec.cpp", "vec.h", "binary-ops.cpp", "unary-ops.cpp", "quants.c",
                      "repack.cpp", "llamafile/sgemm.cpp", "ggml-cpu.cpp", "simd-mappings.h"]
SHIPPED = ("onnx-int8", None)                         # backend, max tokens (None: the backend's default)
COMPARED = [("torch", None), ("onnx-int8", 256), SHIPPED]   # torch at 256 tokens is what shipped before
CHANGED_FILE = "src/llama-sampling.cpp"
# The files the tree queries are about (their labels' paths): with the small corpus, a store every embedder compared
# can be built in minutes that answers all the queries.
TREE_QUERY_FILES = ["src/llama-sampling.cpp", "src/llama-delta-net.cpp", "ggml/src/ggml-cuda/multiadd.cu",
                    "ggml/src/ggml-aarch64.c", "common/speculative.cpp", "src/llama-load-tensors.cpp",
                    "src/llama-build-context.cpp", "ggml/src/ggml-cuda/fattn-new-mma.cu", "examples/llama-bench",
                    "src/llama.cpp",
                    "github-data/pull_requests/5 - Fusing a mat mul op followed by a scale op on the CPU.md",
                    "github-data/pull_requests/235 - Option to use MLA without a transposed cache.md"]


class TimedEmbedder:
    """The same embedder (same name), counting the texts it embeds and the seconds it takes."""

    def __init__(self, inner):
        self.inner, self.name = inner, inner.name
        self.seconds, self.texts = 0.0, 0

    def embed(self, texts):
        started = time.perf_counter()
        try:
            return self.inner.embed(texts)
        finally:
            self.seconds += time.perf_counter() - started
            self.texts += len(texts)


def other_recipes(upstream: Path) -> list[dict]:
    return [*[{"kind": "path", "path": str(upstream / "ggml/src/ggml-cpu" / f)} for f in UPSTREAM_CPU_FILES],
            {"kind": "backends", "target": "llama.cpp"}, {"kind": "papers", "item": "reading-list"}]


def timed_ingest(kb: KnowledgeBase, recipe: dict, paths: Paths, embedder: TimedEmbedder) -> dict:
    marks = {"read": None}

    def progress(phase: str, done: int, total) -> None:
        if phase == "reading":
            marks["read"] = time.perf_counter()
    before_s, before_n = embedder.seconds, embedder.texts
    started = time.perf_counter()
    source, summary = run_recipe(kb, recipe, paths, progress=progress)
    total = time.perf_counter() - started
    reading = (marks["read"] or started) - started
    embedding = embedder.seconds - before_s
    return {"source": source, "seconds": total, "reading_s": reading, "embedding_s": embedding,
            "writing_s": total - reading - embedding, "embedded": embedder.texts - before_n,
            **summary.as_dict(), "skipped": len(summary.skipped)}


def tree_store(paths: Paths, home: Path, upstream: Path, embedder: TimedEmbedder) -> dict:
    """Cold ingestion of the whole tree, then one fork file changed and the tree ingested again."""
    ik = prepare_source("ik_llama.cpp", paths.sources, paths.sdists)
    clone = home / "fork" / "ik_llama.cpp"  # the fork as a user's checkout: one commit changes one file
    shutil.rmtree(clone.parent, ignore_errors=True)
    clone.parent.mkdir(parents=True)
    subprocess.run(["git", "clone", "-q", str(ik.path), str(clone)], check=True)
    recipe = fork_recipe(str(clone), "llama.cpp", as_trees=True)
    out = {}
    with KnowledgeBase(paths.knowledge_base, embedder, writable=True) as kb:
        out["cold"] = timed_ingest(kb, recipe, paths, embedder)
        out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"cold: {out['cold']}, peak {out['peak_rss_mib']:.0f} MiB", flush=True)
        target = clone / CHANGED_FILE
        target.write_text(target.read_text() + "\n// readfirst benchmark: one changed fork file\n"
                          "static int kb_bench_marker(int x) {\n    return x + 1;\n}\n")
        env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
               "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}
        subprocess.run(["git", "-C", str(clone), "commit", "-qam", "one changed file"], check=True, env=env)
        out["again"] = timed_ingest(kb, recipe, paths, embedder)
        print(f"again: {out['again']}", flush=True)
        out["others"] = [timed_ingest(kb, r, paths, embedder) for r in other_recipes(upstream)]
        out["size"] = kb.count()
    return out


def corpus_store(paths: Paths, directory: Path, upstream: Path, embedder: TimedEmbedder) -> dict:
    shutil.rmtree(directory, ignore_errors=True)
    recipes = [fork_recipe("ik_llama.cpp", "llama.cpp", subdirs=["ggml/src/iqk"]), *other_recipes(upstream)]
    with KnowledgeBase(directory, embedder, writable=True) as kb:
        runs = [timed_ingest(kb, r, paths, embedder) for r in recipes]
        small = {"size": kb.count(), "quality": quality(kb, QUERIES)}
        runs.append(timed_ingest(kb, fork_recipe("ik_llama.cpp", "llama.cpp", subdirs=TREE_QUERY_FILES), paths,
                                 embedder))
        return {**small, "seconds": sum(r["seconds"] for r in runs), "size_all": kb.count(),
                "embedded": sum(r["embedded"] for r in runs), "embedding_s": sum(r["embedding_s"] for r in runs),
                "quality_all": quality(kb, QUERIES + TREE_QUERIES),
                "unanswerable": unanswerable(kb, QUERIES + TREE_QUERIES)}


def quality(kb: KnowledgeBase, queries: list[dict]) -> dict:
    out = {}
    for mode in MODES:
        rows = []
        for label in queries:
            results = kb.query(label["q"], k=10, mode=mode)
            ranks = [i + 1 for i, r in enumerate(results) if relevant(r, label)]
            rows.append((label.get("exact", False), ranks[0] if ranks else None))
        out[mode] = {}
        for group, keep in (("all", lambda e: True), ("identifiers", lambda e: e), ("natural", lambda e: not e)):
            firsts = [first for exact, first in rows if keep(exact)]
            out[mode][group] = {"n": len(firsts),
                                "recall@5": sum(1 for f in firsts if f and f <= 5) / len(firsts),
                                "mrr@10": sum(1 / f for f in firsts if f) / len(firsts)}
    return out


def unanswerable(kb: KnowledgeBase, queries: list[dict]) -> list[str]:
    """Labels no chunk of the store satisfies (a label that cannot be met would only measure itself)."""
    metas = [{**meta} for _, _, meta in kb.chunks()]
    return [q["q"] for q in queries if not any(relevant(m, q) for m in metas)]


def latency(kb: KnowledgeBase, queries: list[dict], repeats: int = 3) -> dict:
    out = {}
    for mode in MODES:
        times = []
        for label in queries[:3]:
            kb.query(label["q"], k=10, mode=mode)  # warm-up: model load, caches
        for _ in range(repeats):
            for label in queries:
                started = time.perf_counter()
                kb.query(label["q"], k=10, mode=mode)
                times.append((time.perf_counter() - started) * 1000)
        times.sort()
        out[mode] = {"p50_ms": statistics.median(times), "p95_ms": times[int(0.95 * (len(times) - 1))],
                     "n": len(times)}
    return out


def query_profile(kb: KnowledgeBase, queries: list[dict]) -> dict[str, float]:
    """Milliseconds per hybrid query by where they go, from cProfile over every labelled query."""
    profile = cProfile.Profile()
    profile.enable()
    for label in queries:
        kb.query(label["q"], k=10, mode="hybrid")
    profile.disable()
    buckets = {"embed the query (ONNX Runtime)": ("onnxruntime", "run"),
               "vector search (Chroma query)": ("'query' of 'builtins.Bindings'",),
               "read the k chunks (Chroma get)": ("'get' of 'builtins.Bindings'",),
               "FTS5 (SQLite)": ("sqlite3.",)}
    out = {name: 0.0 for name in buckets}
    stats = pstats.Stats(profile).stats
    total = sum(tt for (_, _, tt, _, _) in stats.values())
    for (_, _, func), (_, _, tt, _, _) in stats.items():
        for name, needles in buckets.items():
            if func.startswith("<") and all(n in func for n in needles):
                out[name] += tt
                break
    out["everything else (Python: fusion, filters, results)"] = total - sum(out.values())
    return {k: v * 1000 / len(queries) for k, v in out.items()}


class PrecomputedEmbedder:
    """Vectors looked up by text (for synthetic copies of real chunks); anything else goes to the real model."""

    def __init__(self, real, table: dict[str, list[float]]):
        self.name, self.real, self.table = real.name, real, table

    def embed(self, texts):
        missing = [t for t in texts if t not in self.table]
        fresh = dict(zip(missing, self.real.embed(missing))) if missing else {}
        return [self.table[t].tolist() if t in self.table else fresh[t] for t in texts]


def synthetic(kb: KnowledgeBase, directory: Path, real, n: int, reuse: bool) -> dict:
    """A store of n chunks: copies of the tree store's chunks, each with its own text and a perturbed vector."""
    if not reuse:
        shutil.rmtree(directory, ignore_errors=True)
    big = KnowledgeBase(directory, real, writable=True, batch_size=2000)
    write_s = None
    try:
        if big.count() < n:
            rows = list(kb.chunks(vectors=True))
            rng = np.random.default_rng(0)
            table: dict[str, list[float]] = {}
            units, batch = [], []
            for i in range(n):
                cid, text, meta, vector = rows[i % len(rows)]
                copy_text = f"{text}\n// synthetic copy {i}"
                v = np.asarray(vector) + rng.normal(0, 0.02, len(vector))
                table[copy_text] = (v / np.linalg.norm(v)).astype(np.float32)
                origin = {k: meta[k] for k in ("repo", "path", "start_line", "end_line", "symbol", "paper_id",
                                               "title", "section") if k in meta}
                batch.append(Chunk(copy_text, meta["kind"], f"synthetic::{i // 500}", {**origin, "copy": i}))
                if len(batch) == 500:
                    units.append(Unit(f"synthetic::{i // 500}", batch))
                    batch = []
            if batch:
                units.append(Unit(f"synthetic::{n // 500}", batch))
            big.embedder = PrecomputedEmbedder(real, table)
            started = time.perf_counter()
            big.ingest("synthetic", units)
            write_s = time.perf_counter() - started
            big.embedder = real
        queries = QUERIES + TREE_QUERIES
        return {"chunks": big.count(), "write_s": write_s, "latency": latency(big, queries, repeats=2),
                "profile": query_profile(big, queries)}
    finally:
        big.close()


def fmt_quality(rows: list[tuple[str, dict]]) -> str:
    lines = ["| store, embedder | search | recall@5 (all) | MRR@10 (all) | recall@5 identifiers | MRR identifiers | "
             "recall@5 natural language | MRR natural language |", "|---|---|---|---|---|---|---|---|"]
    for label, q in rows:
        for mode in MODES:
            a, i, n = q[mode]["all"], q[mode]["identifiers"], q[mode]["natural"]
            lines.append(f"| {label} | {mode} | {a['recall@5']:.2f} | {a['mrr@10']:.2f} | {i['recall@5']:.2f} | "
                         f"{i['mrr@10']:.2f} | {n['recall@5']:.2f} | {n['mrr@10']:.2f} |")
    return "\n".join(lines)


def fmt_latency(lat: dict) -> str:
    return ", ".join(f"{m} p50 {v['p50_ms']:.0f} ms / p95 {v['p95_ms']:.0f} ms" for m, v in lat.items())


def fmt_ingest(r: dict) -> str:
    return (f"{r['seconds']:.0f} s (reading and chunking {r['reading_s']:.0f} s, embedding {r['embedding_s']:.0f} s "
            f"for {r['embedded']} chunks, writing Chroma + FTS5 + cache {r['writing_s']:.0f} s); {r['added']} units "
            f"added, {r['replaced']} replaced, {r['unchanged']} unchanged, {r['skipped']} skipped; "
            f"{r['chunks_added']} chunks written, {r['chunks_embedded']} embedded")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("/tmp/readfirst-kb-bench"))
    parser.add_argument("--synthetic", type=int, default=100_000, help="Chunks of the large store (0: skip).")
    parser.add_argument("--reuse-large", action="store_true", help="Query the large store an earlier run wrote.")
    args = parser.parse_args()
    shared = Paths.resolve()
    paths = Paths.resolve(home=args.home, cache=shared.cache)
    shutil.rmtree(paths.knowledge_base, ignore_errors=True)
    upstream = prepare_source("llama.cpp", paths.sources, paths.sdists).path
    export_dir = paths.models / "embeddings"

    prepared_before = set(paths.sources.glob("ik_llama.cpp-*"))
    with machine_lock(paths.cache, exclusive=True):
        shipped = TimedEmbedder(make_embedder(backend=SHIPPED[0], max_tokens=SHIPPED[1], export_dir=export_dir))
        tree = tree_store(paths, args.home, upstream, shipped)  # first: the peak memory is the ingestion's
        for prepared in set(paths.sources.glob("ik_llama.cpp-*")) - prepared_before:
            shutil.rmtree(prepared, ignore_errors=True)  # the bench's checkouts, prepared as sources
        started = time.perf_counter()
        make_embedder(backend=SHIPPED[0], export_dir=args.home / "export-check").embed(["warm"])
        export_s = time.perf_counter() - started  # the one-time export on a machine (kept in the cache after)
        shutil.rmtree(args.home / "export-check", ignore_errors=True)
        with KnowledgeBase(paths.knowledge_base, shipped.inner) as kb:
            missing = unanswerable(kb, QUERIES + TREE_QUERIES)
            tree_quality = quality(kb, QUERIES + TREE_QUERIES)
            tree_only = quality(kb, TREE_QUERIES)
            tree_latency = latency(kb, QUERIES + TREE_QUERIES)
            print(f"tree: quality {tree_quality}, latency {tree_latency}, unanswerable {missing}", flush=True)
            big = synthetic(kb, args.home / "synthetic", shipped.inner, args.synthetic,
                            args.reuse_large) if args.synthetic else None
            print(f"synthetic: {big}", flush=True)
        corpora = []
        for backend, tokens in COMPARED:
            embedder = TimedEmbedder(make_embedder(backend=backend, max_tokens=tokens, export_dir=export_dir))
            result = corpus_store(paths, args.home / f"corpus-{backend}-{tokens}", upstream, embedder)
            corpora.append((embedder.name, result))
            print(f"corpus {embedder.name}: {result}", flush=True)

    cold, again = tree["cold"], tree["again"]
    missing = list(dict.fromkeys(missing + [q for _, r in corpora for q in r["unanswerable"]]))
    body = [f"Model all-MiniLM-L6-v2 through `{shipped.name}` (what ships; the export from the packaged weights "
            f"took {export_s:.0f} s, once per machine). The fork is a git checkout of the ik_llama.cpp sdist's "
            f"tree, compared with upstream llama.cpp's as trees, every file (`readfirst kb ingest fork "
            f"PATH --as-trees`, in process).", "",
            f"- **whole ik_llama.cpp tree, cold** (empty store, empty embedding cache): {fmt_ingest(cold)}. "
            f"Rate {cold['chunks_added'] / cold['seconds']:.0f} chunks/s end to end, embedding "
            f"{cold['embedded'] / max(cold['embedding_s'], 1e-9):.0f} chunks/s.",
            f"- **peak memory** of the process during it: {tree['peak_rss_mib']:.0f} MiB (max RSS).",
            f"- **re-ingestion after one fork file changed** (a commit to `{CHANGED_FILE}`; the source is prepared "
            f"again, only the paths whose blobs changed are read): {fmt_ingest(again)}.",
            "- then upstream's CPU files, the backend gaps and the reading list into the same store: "
            + "; ".join(f"{r['source']} {r['seconds']:.0f} s, {r['embedded']} embedded" for r in tree["others"]),
            f"- **query latency at the whole-tree size** ({tree['size']} chunks, k=10, "
            f"{tree_latency['hybrid']['n']} queries each): {fmt_latency(tree_latency)}."]
    if big:
        body.append(f"- **query latency at {big['chunks']} chunks**: {fmt_latency(big['latency'])}. The large store "
                    f"holds copies of the tree store's chunks with perturbed vectors (its chunks are written for "
                    f"real, their vectors are not computed)" +
                    (f"; writing them (Chroma + FTS5) took {big['write_s']:.0f} s" if big["write_s"] else "") + ".")
        body += ["", f"Where one hybrid query's time goes at {big['chunks']} chunks (cProfile over the "
                 f"{len(QUERIES) + len(TREE_QUERIES)} labelled queries, ms per query):", "",
                 "| part | ms |", "|---|---|", *[f"| {k} | {v:.1f} |" for k, v in big["profile"].items()]]
    body += ["", "Per embedder compared: the small corpus of earlier runs (ggml/src/iqk against upstream, upstream's "
             "CPU files, backend gaps, reading list), then the files the tree queries are about (`TREE_QUERY_FILES` "
             "in bench/kb_bench.py, compared as trees): " +
             "; ".join(f"`{name}` {r['size']} + {r['size_all'] - r['size']} chunks in {r['seconds']:.0f} s "
                       f"({r['embedded']} embedded in {r['embedding_s']:.0f} s = "
                       f"{r['embedded'] / max(r['embedding_s'], 1e-9):.0f} chunks/s)" for name, r in corpora) + "."]
    body += ["", f"Retrieval quality. Small corpus: the {len(QUERIES)} queries of earlier runs. Whole tree: those "
             f"and {len(TREE_QUERIES)} about the rest of the tree ({len(QUERIES) + len(TREE_QUERIES)} in all, "
             f"{sum(1 for x in QUERIES + TREE_QUERIES if x.get('exact'))} naming an identifier; "
             f"bench/kb_queries.py). recall@5 = share of queries with a relevant chunk in the top 5, MRR over the "
             f"top 10." + (f" Labels no chunk satisfies: {missing}." if missing else ""), "",
             fmt_quality([*[(f"small corpus, {len(QUERIES)} queries, `{name}`", r["quality"]) for name, r in corpora],
                          *[(f"small corpus + tree query files, {len(QUERIES) + len(TREE_QUERIES)} queries, "
                             f"`{name}`", r["quality_all"]) for name, r in corpora],
                          (f"whole tree, all queries, `{shipped.name}`", tree_quality),
                          (f"whole tree, tree queries only, `{shipped.name}`", tree_only)])]
    body.append(f"\nLoad average at the end of the run: {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
                "(this machine is shared; latencies under load spread wide).")
    write_section("kb", "Knowledge base: ingestion, query latency, retrieval quality", "\n".join(body))
    print("\n".join(body))


if __name__ == "__main__":
    main()
