"""Chunking, ids, the lexical index and rank fusion: no model, no Chroma."""

from __future__ import annotations

from pathlib import Path

from readfirst.knowledge_base.chunking import Chunk, Skipped, Unit, chunk_code, chunk_file, chunk_text, \
    function_spans
from readfirst.knowledge_base.lexical import LexicalIndex, identifier_parts, match_expression
from readfirst.knowledge_base.papers import paper_chunks, sections
from readfirst.knowledge_base.search import fuse, lexical_weight, to_chroma_where

C_SOURCE = """#include <math.h>

#define UNUSED(x) (void)(x)

struct ggml_tensor { int ne[4]; };

static void ggml_compute_forward_rms_norm_f32(const struct ggml_tensor * src, float * dst) {
    float sum = 0.0f;
    for (int i = 0; i < src->ne[0]; i++) {
        sum += dst[i] * dst[i];
    }
}

#if defined(__AVX2__)
static inline float * vec_dot_avx2(int n, const float * x) {
    return (float *) x;
}
#endif
"""

CPP_SOURCE = """namespace iqk {
template <typename T>
void flash_attn_tile(const T * q, int n) {
    for (int i = 0; i < n; ++i) {
        (void) q[i];
    }
}

struct Kernel {
    int run(int x) const {
        return x + 1;
    }
};
}
extern "C" int iqk_flash_attn_noalibi(int a) {
    return a;
}
"""


def test_functions_are_found_wherever_they_are_defined():
    c = function_spans(C_SOURCE, ".c")
    assert [s.name for s in c] == ["ggml_compute_forward_rms_norm_f32", "vec_dot_avx2"]
    assert (c[0].start_line, c[0].end_line) == (7, 12)
    cpp = function_spans(CPP_SOURCE, ".cpp")
    names = [s.name for s in cpp]
    assert names == ["flash_attn_tile", "run", "iqk_flash_attn_noalibi"]
    assert cpp[0].start_line == 2, "a template's chunk starts at its template line"


def test_code_chunks_carry_symbol_and_lines_and_cover_the_rest():
    chunks = chunk_code(C_SOURCE, path="ggml/src/ggml-cpu/ops.c", kind="fork-code", unit="u", repo="ik",
                        revision="abc")
    by_symbol = {c.origin["symbol"]: c for c in chunks}
    rms = by_symbol["ggml_compute_forward_rms_norm_f32"]
    assert (rms.origin["start_line"], rms.origin["end_line"]) == (7, 12)
    assert rms.origin["repo"] == "ik" and rms.origin["revision"] == "abc"
    assert rms.text.splitlines()[0] == "// ik ggml/src/ggml-cpu/ops.c:7-12 ggml_compute_forward_rms_norm_f32"
    assert "sum += dst[i] * dst[i];" in rms.text
    preamble = [c for c in chunks if not c.origin["symbol"]]
    assert preamble and "struct ggml_tensor" in preamble[0].text, "code between functions is kept too"


def test_long_functions_are_split_into_numbered_parts():
    body = "\n".join(f"    x += {i};" for i in range(300))
    text = f"int long_one(int x) {{\n{body}\n    return x;\n}}\n"
    chunks = chunk_code(text, path="a.c", kind="doc", unit="u", max_lines=120)
    assert len(chunks) == 3
    assert all(c.origin["symbol"] == "long_one" for c in chunks)
    assert [c.origin["part"] for c in chunks] == ["long_one (part 1/3)", "long_one (part 2/3)",
                                                  "long_one (part 3/3)"]
    assert chunks[1].origin["start_line"] == 121


def test_ids_derive_from_content_and_origin():
    a = Chunk("int f(void) { return 1; }", "doc", "u", {"path": "a.c", "start_line": 1})
    same = Chunk("int f(void) { return 1; }", "doc", "u", {"path": "a.c", "start_line": 1})
    edited = Chunk("int f(void) { return 2; }", "doc", "u", {"path": "a.c", "start_line": 1})
    moved = Chunk("int f(void) { return 1; }", "doc", "u", {"path": "b.c", "start_line": 1})
    assert a.id == same.id
    assert len({a.id, edited.id, moved.id}) == 3


def test_binary_and_huge_and_foreign_files_are_skipped_with_a_reason(tmp_path):
    (tmp_path / "blob.c").write_bytes(b"int x;\0\0\0binary")
    (tmp_path / "huge.c").write_text("int x;\n" * 400_000)
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    results = {p: chunk_file(tmp_path / p, p, kind="doc", unit=p) for p in ("blob.c", "huge.c", "model.gguf")}
    assert all(isinstance(r, Skipped) for r in results.values())
    assert results["blob.c"].reason == "binary file"
    assert "larger than 2 MiB" in results["huge.c"].reason
    assert "not a source or text file" in results["model.gguf"].reason


def test_markdown_is_cut_along_headings():
    md = "# Title\nintro text that is long enough\n## Build\nrun cmake with -DGGML_NATIVE=ON please\n"
    chunks = chunk_text(md, path="README.md", kind="doc", unit="u")
    assert [c.origin["section"] for c in chunks] == ["Title", "Build"]
    assert chunks[1].text.startswith("README.md — Build")


def test_paper_sections_drop_references():
    text = "Abstract\nshort summary of the work\n1 Introduction\nwhy it matters\n2 Method\nhow it works\n" \
           "References\n[1] someone else's paper"
    assert [s for s, _ in sections(text)] == ["Abstract", "1 Introduction", "2 Method"]
    chunks = paper_chunks(text, paper_id="2401.00001", title="T", unit="u")
    assert all("someone else" not in c.text for c in chunks)
    assert chunks[1].origin["section"] == "1 Introduction"


def test_identifiers_match_whole_and_by_parts(tmp_path):
    assert identifier_parts("ggml_compute_forward_rms_norm GGML_OP_SOFT_MAX iqkFlashAttn") == [
        "ggml", "compute", "forward", "rms", "norm", "GGML", "OP", "SOFT", "MAX", "iqk", "Flash", "Attn"]
    assert match_expression('the "rms" norm (x)') == '"rms" OR "norm" OR "x"', "no FTS syntax leaks through"
    index = LexicalIndex(tmp_path / "lex.sqlite")
    index.add([
        ("a", "static void ggml_compute_forward_rms_norm(...) {}", {"kind": "doc", "repo": "r", "path": "x/a.c"}),
        ("b", "static void ggml_compute_forward_norm(...) {}", {"kind": "doc", "repo": "r", "path": "x/b.c"}),
        ("c", "case GGML_OP_SOFT_MAX: softmax", {"kind": "backend-gap", "repo": "q", "path": "y/c.cu"}),
    ])
    assert index.search("ggml_compute_forward_rms_norm")[0][0] == "a"
    assert index.search("rms norm")[0][0] == "a"
    assert index.search("GGML_OP_SOFT_MAX")[0][0] == "c"
    assert index.search("norm", kinds=["backend-gap"]) == []
    assert {i for i, _ in index.search("ggml compute", path_globs=["x/b*"])} == {"b"}
    index.add([("a", "replaced text", {"kind": "doc"})])
    assert index.count() == 3, "adding an id again replaces it"
    index.delete(["a", "b"])
    assert index.ids() == {"c"}


def test_rank_fusion_rewards_agreement_and_weights_identifier_queries():
    dense = [("x", 0.9), ("y", 0.8), ("z", 0.7)]
    lexical = [("z", 10.0), ("w", 5.0)]
    fused = [cid for cid, _ in fuse(dense, lexical, k=3)]
    assert fused[0] == "z", "found by both lists beats first in one"
    assert lexical_weight("ggml_cpu_try_fuse_ops") > lexical_weight("fuse rms norm with a multiply")
    weighted = fuse([("x", 1)], [("w", 1)], k=2, weights=(1.0, 3.0))
    assert weighted[0][0] == "w"


def test_filters_become_chroma_where_clauses():
    assert to_chroma_where({}) is None
    assert to_chroma_where({"kind": ["paper"], "repo": None}) == {"kind": "paper"}
    assert to_chroma_where({"kind": ["paper", "doc"], "repo": "ik"}) == {
        "$and": [{"kind": {"$in": ["paper", "doc"]}}, {"repo": "ik"}]}


def test_units_and_skips_are_plain_records():
    unit = Unit("k", [])
    assert unit.chunks == [] and Skipped("k", "why").reason == "why"
    assert Path(__file__).exists()


# -- other languages (tree-sitter-language-pack) -----------------------------------------------------------------

PYTHON_SOURCE = '''import functools


def slow_sum(rows):
    def add(a, b):
        return a + b
    return functools.reduce(add, rows, 0)


class Table:
    """Rows."""

    @functools.lru_cache(maxsize=None)
    def lookup(self, key):
        return key * 2

    @staticmethod
    def build(rows):
        return Table()
'''

RUST_SOURCE = '''pub struct Matrix<T> { data: Vec<T> }

impl<T: Copy> Matrix<T> {
    pub fn get(&self, i: usize) -> T {
        self.data[i]
    }
}

trait Dot {
    fn dot(&self) -> f32 { 0.0 }
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
'''

GO_SOURCE = '''package vec

func (v *Vector[T]) Dot(w *Vector[T]) float64 {
\treturn 0
}

func Sum(xs []float64) float64 {
\ts := 0.0
\tfor _, x := range xs {
\t\ts += x
\t}
\treturn s
}
'''

TS_SOURCE = '''export const sum = (xs: number[]): number => {
  return xs.reduce((a, b) => a + b, 0);
};

export function mean(xs: number[]): number {
  return sum(xs) / xs.length;
}

class Stats {
  variance(xs: number[]): number {
    return 0;
  }
}

const limit = 10;
'''

JAVA_SOURCE = '''public class Kernel {
    public Kernel() {
    }

    public int dot(int[] a, int[] b) {
        int s = 0;
        for (int i = 0; i < a.length; i++) s += a[i] * b[i];
        return s;
    }
}
'''


def _spans(text: str, suffix: str) -> list[tuple[str, int, int]]:
    return [(s.name, s.start_line, s.end_line) for s in function_spans(text, suffix)]


def test_python_functions_methods_decorated_and_nested():
    assert _spans(PYTHON_SOURCE, ".py") == [("slow_sum", 4, 7), ("slow_sum.add", 5, 6),
                                            ("Table.lookup", 13, 15), ("Table.build", 17, 19)]


def test_rust_functions_and_impl_methods_named_by_their_type():
    assert _spans(RUST_SOURCE, ".rs") == [("Matrix.get", 4, 6), ("Dot.dot", 10, 10), ("dot", 13, 15)]


def test_go_functions_and_methods_named_by_their_receiver():
    assert _spans(GO_SOURCE, ".go") == [("Vector.Dot", 3, 5), ("Sum", 7, 13)]


def test_javascript_and_typescript_declarations_methods_and_arrow_functions():
    expected = [("sum", 1, 3), ("mean", 5, 7), ("Stats.variance", 10, 12)]
    assert _spans(TS_SOURCE, ".ts") == expected
    plain_js = TS_SOURCE.replace(": number[]", "").replace("): number", ")")
    assert _spans(plain_js, ".js") == expected


def test_java_methods_and_constructors():
    assert _spans(JAVA_SOURCE, ".java") == [("Kernel.Kernel", 2, 3), ("Kernel.dot", 5, 9)]


def test_a_python_file_is_chunked_by_function_with_qualified_names():
    chunks = chunk_code(PYTHON_SOURCE, path="pkg/table.py", kind="fork-code", unit="u")
    assert [c.origin["symbol"] for c in chunks if c.origin["symbol"]] == ["slow_sum", "Table.lookup",
                                                                         "Table.build"]
    lookup = next(c for c in chunks if c.origin["symbol"] == "Table.lookup")
    assert "@functools.lru_cache(maxsize=None)" in lookup.text, "a decorator belongs to its function"


def test_a_language_without_a_grammar_is_cut_into_line_windows_never_dropped():
    zig = "".join(f"pub fn add{i}(a: u32) u32 {{\n    return a + {i};\n}}\n" for i in range(30))
    assert function_spans(zig, ".zig") == []
    chunks = chunk_code(zig, path="src/add.zig", kind="fork-code", unit="u")
    assert chunks and "return a + 29;" in chunks[-1].text and all(c.origin["symbol"] == "" for c in chunks)


def test_c_and_cpp_spans_are_unchanged_by_the_other_languages():
    assert [s.name for s in function_spans(C_SOURCE, ".h")] == ["ggml_compute_forward_rms_norm_f32", "vec_dot_avx2"]
    assert [s.name for s in function_spans(CPP_SOURCE, ".cu")][0] == "flash_attn_tile"
