"""The store against real embedded Chroma and the real embedding model: idempotence, interruption, lock, search."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from kb_conftest_helpers import embedder  # noqa: E402,F401  (a fixture)

from readfirst.errors import KnowledgeBaseError  # noqa: E402
from readfirst.knowledge_base.chunking import Skipped, Unit, chunk_code  # noqa: E402
from readfirst.knowledge_base.store import KnowledgeBase  # noqa: E402

pytestmark = pytest.mark.chroma

FILES = {
    "ggml/src/ops.c": """
static void ggml_compute_forward_rms_norm_f32(const float * x, float * y, int n) {
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += x[i] * x[i];
    const float scale = 1.0f / sqrtf(sum / n + 1e-6f);
    for (int i = 0; i < n; i++) y[i] = x[i] * scale;
}

static void ggml_compute_forward_soft_max_f32(const float * x, float * y, int n) {
    float max = -INFINITY, sum = 0.0f;
    for (int i = 0; i < n; i++) max = fmaxf(max, x[i]);
    for (int i = 0; i < n; i++) { y[i] = expf(x[i] - max); sum += y[i]; }
    for (int i = 0; i < n; i++) y[i] /= sum;
}
""",
    "ggml/src/iqk/fa.cpp": """
// Flash attention for the CPU: one pass over K and V with a running max and running sum, tile by tile.
void iqk_flash_attn_tile(const float * q, const float * k, const float * v, float * out, int n, int d) {
    float m = -INFINITY, s = 0.0f;
    for (int j = 0; j < n; ++j) {
        float score = 0.0f;
        for (int c = 0; c < d; ++c) score += q[c] * k[j * d + c];
        float m_new = fmaxf(m, score);
        s = s * expf(m - m_new) + expf(score - m_new);
        m = m_new;
    }
    (void) v; (void) out;
}
""",
    "common/log.cpp": """
void common_log_printf(const char * fmt, int level) {
    if (level > 2) {
        fprintf(stderr, "%s", fmt);
    }
}
""",
}


def units(files: dict[str, str], repo: str = "fork") -> list[Unit]:
    return [Unit(f"src::{path}", chunk_code(text, path=path, kind="fork-code", unit=f"src::{path}", repo=repo,
                                            revision="r1")) for path, text in files.items()]


@pytest.fixture
def kb(tmp_path, embedder):
    with KnowledgeBase(tmp_path / "kb", embedder, writable=True, batch_size=2) as store:
        yield store


def test_ingesting_twice_adds_nothing_and_a_change_replaces(kb):
    first = kb.ingest("src", units(FILES))
    assert (first.added, first.unchanged, first.replaced) == (3, 0, 0)
    total = kb.count()
    assert total == first.chunks_added == kb.lexical.count()

    again = kb.ingest("src", units(FILES))
    assert (again.added, again.unchanged, again.replaced, again.chunks_added) == (0, 3, 0, 0)
    assert kb.count() == total

    edited = dict(FILES, **{"common/log.cpp": FILES["common/log.cpp"].replace("level > 2", "level > 3")})
    changed = kb.ingest("src", units(edited))
    assert (changed.unchanged, changed.replaced, changed.chunks_added, changed.chunks_deleted) == (2, 1, 1, 1)
    assert kb.count() == total
    texts = [r["text"] for r in kb.query("common_log_printf", k=3)]
    assert any("level > 3" in t for t in texts) and not any("level > 2" in t for t in texts)

    fewer = {k: v for k, v in edited.items() if k != "common/log.cpp"}
    pruned = kb.ingest("src", units(fewer))
    assert pruned.removed == 1 and kb.count() == total - 1 == kb.lexical.count()


def test_an_interrupted_ingestion_leaves_a_usable_store_and_a_rerun_completes_it(kb):
    def interrupted():
        yield from units(FILES)[:2]
        raise KeyboardInterrupt  # the user pressed ^C while the third file was being read

    with pytest.raises(KeyboardInterrupt):
        kb.ingest("src", interrupted())
    partial = kb.count()
    assert partial > 0
    assert kb.query("soft max", k=1), "what was written is searchable"

    rerun = kb.ingest("src", units(FILES))
    assert rerun.added >= 1 and rerun.chunks_added == sum(len(u.chunks) for u in units(FILES)) - partial
    assert kb.count() == sum(len(u.chunks) for u in units(FILES)) == kb.lexical.count()


def test_a_second_writer_is_refused_at_once_and_readers_keep_working(kb, tmp_path, embedder):
    kb.ingest("src", units(FILES))
    with pytest.raises(KnowledgeBaseError, match="another process .* is writing"):
        KnowledgeBase(tmp_path / "kb", embedder, writable=True)
    with KnowledgeBase(tmp_path / "kb", embedder) as reader:
        assert reader.query("flash attention", k=1)[0]["path"] == "ggml/src/iqk/fa.cpp"
        with pytest.raises(KnowledgeBaseError, match="read-only"):
            reader.ingest("src", [])


def test_the_lexical_index_is_repaired_from_chroma_when_opened(tmp_path, embedder):
    with KnowledgeBase(tmp_path / "kb", embedder, writable=True) as kb:
        kb.ingest("src", units(FILES))
        total = kb.count()
    for f in (tmp_path / "kb").glob("lexical.sqlite*"):
        f.unlink()
    with KnowledgeBase(tmp_path / "kb", embedder, writable=True) as kb:
        assert kb.lexical.count() == total
        hit = kb.query("ggml_compute_forward_soft_max_f32", k=1, mode="lexical")[0]
        assert hit["symbol"] == "ggml_compute_forward_soft_max_f32"


def test_results_cite_their_origin_and_filters_apply(kb):
    kb.ingest("src", units(FILES))
    kb.ingest("other", [Unit("other::x", chunk_code(FILES["ggml/src/ops.c"], path="ggml/src/ops.c",
                                                     kind="doc", unit="other::x", repo="upstream"))])
    top = kb.query("flash attention kernel for the CPU", k=3)
    assert top[0]["symbol"] == "iqk_flash_attn_tile"
    assert {"repo", "revision", "path", "start_line", "end_line", "symbol", "kind", "score", "snippet"} <= set(top[0])
    assert top[0]["repo"] == "fork" and top[0]["start_line"] == 3

    exact = kb.query("ggml_compute_forward_soft_max_f32", k=2, where={"repo": "upstream"})
    assert exact[0]["symbol"] == "ggml_compute_forward_soft_max_f32" and exact[0]["repo"] == "upstream"
    assert all(r["kind"] == "doc" for r in kb.query("norm", k=5, where={"kind": ["doc"]}))
    assert {r["path"] for r in kb.query("function", k=10, where={"path": "ggml/src/iqk/*"})} == {"ggml/src/iqk/fa.cpp"}
    assert kb.query("   ", k=3) == []
    with pytest.raises(KnowledgeBaseError, match="unknown query mode"):
        kb.query("x", mode="sparse")


def test_cited_chunks_are_read_back_whole_by_id(kb):
    kb.ingest("src", units(FILES))
    hit = kb.query("ggml_compute_forward_soft_max_f32", k=1)[0]
    got = kb.get(["no-such-chunk", hit["id"], hit["id"]])  # unknown ids left out, repeats once
    assert [c["id"] for c in got] == [hit["id"]]
    assert got[0]["text"] == hit["text"] and "y[i] /= sum" in got[0]["text"]
    assert (got[0]["path"], got[0]["symbol"], got[0]["start_line"]) == (hit["path"], hit["symbol"], hit["start_line"])
    assert kb.get([]) == []


def test_skips_are_reported_and_keep_what_was_there(kb):
    kb.ingest("src", units(FILES))
    before = kb.count()
    summary = kb.ingest("src", [*units(FILES)[:2], Skipped("src::common/log.cpp", "binary file")])
    assert summary.skipped == [("src::common/log.cpp", "binary file")]
    assert summary.removed == 0 and kb.count() == before, "an unreadable file keeps its last good chunks"


def test_a_store_built_with_another_model_is_refused(tmp_path, embedder):
    with KnowledgeBase(tmp_path / "kb", embedder, writable=True) as kb:
        kb.ingest("src", units(FILES))

    class OtherModel:
        name = "some-other-model"

        def embed(self, texts):
            return embedder.embed(texts)

    with pytest.raises(KnowledgeBaseError, match=r"built with the embedding model 'all-MiniLM-L6-v2 \(onnx-int8, 128 tokens\)'"):
        KnowledgeBase(tmp_path / "kb", OtherModel())


def test_an_empty_store_answers_nothing(tmp_path, embedder):
    with KnowledgeBase(tmp_path / "fresh", embedder) as kb:
        assert kb.query("anything") == [] and kb.count() == 0
