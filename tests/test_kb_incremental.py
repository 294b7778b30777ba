"""What makes the knowledge base fit a whole fork: the int8 ONNX embedder, the embedding cache, re-reading a tree
comparison only where it changed, interruption and progress, and the lexical query's bounded work."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from kb_conftest_helpers import commit, embedder, git, make_repo  # noqa: E402,F401  (embedder: a fixture)

from readfirst.errors import KnowledgeBaseError  # noqa: E402
from readfirst.knowledge_base.chunking import Unit, chunk_code  # noqa: E402
from readfirst.knowledge_base.embedder import make_embedder  # noqa: E402
from readfirst.knowledge_base.ingest import fork_recipe, run_recipe  # noqa: E402
from readfirst.knowledge_base.lexical import LexicalIndex  # noqa: E402
from readfirst.knowledge_base.store import KnowledgeBase  # noqa: E402

pytestmark = pytest.mark.chroma


class Counting:
    """The real embedder under the same name, counting what it is asked to embed."""

    def __init__(self, inner):
        self.inner, self.name, self.texts = inner, inner.name, []

    def embed(self, texts):
        self.texts += list(texts)
        return self.inner.embed(texts)


def function(name: str, body: str = "return x * 2;") -> str:
    return f"static int {name}(int x) {{\n    int y = x;\n    {body}\n}}\n\n"


UPSTREAM = {"ggml/src/ops.c": function("ggml_op_add") + function("ggml_op_mul"),
            "ggml/src/shared.c": function("ggml_shared_helper")}
FORK = {"ggml/src/ops.c": function("ggml_op_add", "return x + 1;") + function("ggml_op_mul"),
        "ggml/src/shared.c": function("ggml_shared_helper"),
        "ggml/src/iqk/fast.cpp": function("iqk_fast_mul") + function("iqk_fast_add") + function("iqk_fast_dot"),
        "ggml/src/iqk/other.cpp": function("iqk_other_kernel")}


def test_the_onnx_int8_embedder_agrees_with_torch_and_says_what_it_is(embedder):
    texts = ["flash attention kernel for the CPU", function("ggml_compute_forward_rms_norm_f32") * 3,
             "# Threads\nPin one thread per physical core.", "x"]
    torch = make_embedder(backend="torch", max_tokens=128)
    ours, theirs = np.array(embedder.embed(texts)), np.array(torch.embed(texts))
    assert ours.shape == theirs.shape == (4, 384)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert (ours * theirs).sum(axis=1).min() > 0.95, "the int8 export computes the same embedding"
    assert embedder.embed(texts[:1]) == embedder.embed(texts[:1]), "deterministic"
    assert embedder.name == "all-MiniLM-L6-v2 (onnx-int8, 128 tokens)" != torch.name
    assert make_embedder(backend="torch").name == "all-MiniLM-L6-v2", "what stores built before recorded"
    with pytest.raises(KnowledgeBaseError, match="unknown embedding backend 'gpu'"):
        make_embedder(backend="gpu", export_dir=Path("/nonexistent"))


def test_the_same_text_is_embedded_once_and_a_change_embeds_only_what_changed(tmp_path, embedder):
    counting = Counting(embedder)
    chunks = chunk_code(FORK["ggml/src/iqk/fast.cpp"], path="a.cpp", kind="doc", unit="s::a", repo="r")
    with KnowledgeBase(tmp_path / "kb", counting, writable=True) as kb:
        first = kb.ingest("s", [Unit("s::a", chunks)])
        assert first.chunks_embedded == len(chunks) == 3 and len(counting.texts) == 3
        # Another source with the same texts (upstream and fork sharing code): nothing is embedded.
        same = [chunk_code(FORK["ggml/src/iqk/fast.cpp"], path="a.cpp", kind="doc", unit="t::a", repo="r")]
        shared = kb.ingest("t", [Unit("t::a", same[0])])
        assert shared.chunks_added == 3 and shared.chunks_embedded == 0 and len(counting.texts) == 3
        edited = FORK["ggml/src/iqk/fast.cpp"].replace("return x * 2;", "return x * 3;", 1)
        changed = kb.ingest("s", [Unit("s::a", chunk_code(edited, path="a.cpp", kind="doc", unit="s::a",
                                                          repo="r"))])
        assert changed.replaced == 1 and changed.chunks_embedded == 1
        assert "return x * 3;" in counting.texts[-1] and len(counting.texts) == 4
    # A rebuilt store (emptied, read again) embeds nothing: the cache outlives `kb reset`.
    with KnowledgeBase(tmp_path / "kb", counting, writable=True) as kb:
        kb.reset()
        again = kb.ingest("s", [Unit("s::a", chunks)])
        assert again.chunks_added == 3 and again.chunks_embedded == 0 and kb.count() == 3


def trees(tmp_path: Path) -> tuple[Path, Path]:
    return make_repo(tmp_path / "upstream", UPSTREAM), make_repo(tmp_path / "fork", FORK)


def content(kb: KnowledgeBase) -> set[tuple]:
    return {(m["unit"], m.get("path"), m.get("symbol"), text) for _, text, m in kb.chunks()}


def test_a_tree_comparison_is_read_again_only_where_it_changed(tmp_path, paths, embedder):
    upstream, fork = trees(tmp_path)
    recipe = fork_recipe(str(fork), str(upstream), as_trees=True)
    counting = Counting(embedder)
    with KnowledgeBase(paths.knowledge_base, counting, writable=True) as kb:
        _, first = run_recipe(kb, recipe, paths)
        assert (first.added, first.skipped) == (3, [])  # ops.c's diff, the two fork-only files; shared.c is equal
        again_source, again = run_recipe(kb, recipe, paths)
        assert (again.added, again.replaced, again.unchanged, again.chunks_embedded) == (0, 0, 3, 0)

        commit(fork, {"ggml/src/iqk/fast.cpp": FORK["ggml/src/iqk/fast.cpp"] + function("iqk_fast_new")},
               "one more kernel")
        git(fork, "rm", "-q", "ggml/src/iqk/other.cpp")
        git(fork, "commit", "-qm", "drop other")
        embedded_before = len(counting.texts)
        _, changed = run_recipe(kb, recipe, paths)
        assert (changed.added, changed.replaced, changed.removed, changed.unchanged) == (0, 1, 1, 1)
        assert changed.chunks_embedded == 1 and "iqk_fast_new" in counting.texts[embedded_before]
        incremental = content(kb)

    # The same store read whole, from nothing, holds the same chunks.
    with KnowledgeBase(tmp_path / "whole", embedder, writable=True) as whole:
        run_recipe(whole, recipe, paths)
        assert {c[1:] for c in content(whole)} == {c[1:] for c in incremental}
    assert not any(c[1] == "ggml/src/iqk/other.cpp" for c in incremental)


def test_an_interrupted_ingestion_continues_and_embeds_nothing_twice(tmp_path, paths, embedder):
    upstream, fork = trees(tmp_path)
    recipe = fork_recipe(str(fork), str(upstream), as_trees=True)
    counting = Counting(embedder)
    seen: list[tuple[str, int, int | None]] = []

    def interrupt(phase: str, done: int, total: int | None) -> None:
        seen.append((phase, done, total))
        if phase == "writing":
            raise KeyboardInterrupt  # ^C after the first unit was written

    with KnowledgeBase(paths.knowledge_base, counting, writable=True, batch_size=1) as kb:
        with pytest.raises(KeyboardInterrupt):
            run_recipe(kb, recipe, paths, progress=interrupt)
        assert [p for p, _, _ in seen[:-1]] == ["reading"] * 3 and seen[-1][0] == "writing"
        assert seen[-1][2] == 5, "the writing phase knows how many chunks it has: a rate and an ETA"
        written = kb.count()
        assert 0 < written < 5 and kb.query("iqk_fast_mul", k=1), "what was written is searchable"

        steps: list[tuple[str, int, int | None]] = []
        _, rerun = run_recipe(kb, recipe, paths, progress=lambda *step: steps.append(step))
        assert rerun.unchanged >= 1 and kb.count() == 5 == kb.lexical.count()
        ingested = [t for t in counting.texts if t != "iqk_fast_mul"]  # the query above is embedded too
        assert len(ingested) == len(set(ingested)) == 5, "no chunk embedded twice"
        assert steps[-1] == ("writing", 5, 5)


def test_a_query_leaves_out_terms_most_chunks_contain(tmp_path):
    index = LexicalIndex(tmp_path / "lexical.sqlite")
    rows = [(f"c{i}", f"ggml_tensor op {i} copies data", {"kind": "doc"}) for i in range(40)]
    rows.append(("barrier", "ggml_barrier waits for every worker thread", {"kind": "doc"}))
    index.add(rows)
    assert index.selective_terms(["ggml", "barrier"]) == ["barrier"], "a term in every row has no weight"
    assert index.selective_terms(["ggml", "tensor"]) == ["tensor"], "all common: the rarest stays"
    assert index.search("ggml barrier", k=3)[0][0] == "barrier"
    assert len(index.search("ggml", k=100)) == 41, "a query of one term keeps it"
    index.close()


def test_a_source_recorded_under_an_older_key_is_replaced_not_doubled(tmp_path, paths, embedder, monkeypatch):
    # A store written by a version that named fork sources `fork:A..B`: the same recipe read by this version is
    # one source, not two answering every query twice.
    from readfirst.knowledge_base import ingest
    upstream, fork = trees(tmp_path)
    recipe = fork_recipe(str(fork), str(upstream), as_trees=True)
    with KnowledgeBase(paths.knowledge_base, embedder, writable=True) as kb:
        with monkeypatch.context() as m:
            m.setattr(ingest, "source_key", lambda r: f"fork:{r['fork']}..{r['upstream']}")
            old_key, _ = run_recipe(kb, recipe, paths)
        count = kb.count()
        new_key, _ = run_recipe(kb, recipe, paths)
        assert new_key != old_key and list(kb.sources()) == [new_key]
        assert kb.count() == count and not kb.has_source(old_key)
