"""The porting engine on real git trees: tolerant hunks, three-way merges, function ports with their helpers, and
the drops that say why. The ports are compiled with the host's C compiler: a candidate that would not build is
the engine's fault when the reason was knowable from the text."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from readfirst.agents import porting
from readfirst.agents.offline_policy import ForkSources, propose
from readfirst.sources import GitTree, merge_file


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def make_tree(path: Path, files: dict[str, str], name: str | None = None) -> GitTree:
    path.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    if not (path / ".git").exists():
        git(path, "init", "-q")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "tree")
    return GitTree(name or path.name, path, git(path, "rev-parse", "HEAD"))


UPSTREAM_C = """#include <stddef.h>

static int scale = 3;

int sum(const int * x, size_t n) {
    int s = 0;
    for (size_t i = 0; i < n; i++) {
        s += x[i];
    }
    return s * scale;
}

int other(int a) {
    return a + 1;
}
"""

# The fork moved sum() into another file, reformatted it, and made it use a helper and a macro of its own.
FORK_KERNELS_C = """#include <stddef.h>
#define UNROLL 4

static int scale = 3;

static inline int sum4(const int *x) { return x[0] + x[1] + x[2] + x[3]; }

int sum(const int *x,
        size_t n)
{
  int s = 0; size_t i = 0;
  for (; i + UNROLL <= n; i += UNROLL) s += sum4(x + i);
  for (; i < n; i++) s += x[i];
  return s * scale;
}
"""


def compiles(source: str, tmp: Path) -> subprocess.CompletedProcess:
    f = tmp / "unit.c"
    f.write_text(source)
    return subprocess.run(["gcc", "-c", "-Wall", "-Werror", "-o", str(tmp / "unit.o"), str(f)],
                          capture_output=True, text=True)


def apply(tree: GitTree, patch: str) -> str:
    work = tree.repo
    subprocess.run(["git", "-C", str(work), "apply", "--check", "-"], input=patch, text=True, check=True)
    subprocess.run(["git", "-C", str(work), "apply", "-"], input=patch, text=True, check=True)
    return work


def test_a_function_moved_and_reformatted_in_the_fork_is_ported_with_its_helper_and_builds(tmp_path):
    upstream = make_tree(tmp_path / "up", {"src/math.c": UPSTREAM_C})
    fork = make_tree(tmp_path / "fork", {"src/math.c": UPSTREAM_C.replace(UPSTREAM_C[UPSTREAM_C.index("int sum"):
                                                                                     UPSTREAM_C.index("int other")], ""),
                                         "lib/kernels.c": FORK_KERNELS_C}, name="fork")
    ports = porting.function_ports(upstream, [fork], hot_paths=["src/*"])
    [port] = ports.candidates
    assert port.symbol == "sum" and port.path == "src/math.c" and port.fork_path == "lib/kernels.c"
    assert set(port.helpers) == {"sum4", "UNROLL"}  # `scale` is the tree's own: not brought twice
    apply(upstream, port.patch)
    ported = (upstream.repo / "src/math.c").read_text()
    assert ported.count("static int scale") == 1 and "sum4(x + i)" in ported and "int other(int a)" in ported
    built = compiles(ported, tmp_path)
    assert built.returncode == 0, built.stderr


def test_what_cannot_be_ported_is_dropped_with_its_reason(tmp_path):
    upstream = make_tree(tmp_path / "up", {"a.c": UPSTREAM_C})
    fork_c = (UPSTREAM_C.replace("int sum(const int * x, size_t n)", "int sum(const int * x, size_t n, int k)")
              .replace("return a + 1;", "return fork_only_magic(a);")
              + "#if FORK_ONLY_FEATURE\nint never(void) { return undefined_thing(); }\n#endif\n")
    fork = make_tree(tmp_path / "fork", {"a.c": fork_c})
    ports = porting.function_ports(upstream, [fork], hot_paths=["*"])
    assert ports.candidates == []
    reasons = {d.what.split("'s ")[1]: d.reason for d in ports.dropped}
    assert reasons == {"sum": "signature differs", "other": "unresolved"}
    assert "fork_only_magic" in next(d.detail for d in ports.dropped if d.reason == "unresolved")


def test_code_under_an_if_the_tree_never_defines_does_not_count_as_needed(tmp_path):
    upstream = make_tree(tmp_path / "up", {"a.c": UPSTREAM_C})
    fork_c = UPSTREAM_C.replace("    return a + 1;", "#if GGML_USE_FORK_ONLY\n    return fork_kernel(a);\n"
                                                    "#elif defined(__ARM_NEON)\n    return vaddq_neon_only(a);\n"
                                                    "#else\n    return a + 2;\n#endif")
    fork = make_tree(tmp_path / "fork", {"a.c": fork_c})
    [port] = porting.function_ports(upstream, [fork], hot_paths=["*"]).candidates
    assert port.symbol == "other"
    apply(upstream, port.patch)
    assert compiles((upstream.repo / "a.c").read_text(), tmp_path).returncode == 0


HUNK = """// fork-diff fork vs up: a.c:5-9 sum
@@ -5,5 +5,5 @@ int sum(const int * x, size_t n) {
     int s = 0;
     for (size_t i = 0; i < n; i++) {
-        s += x[i];
+        s += 2 * x[i];
     }
     return s * scale;"""


def test_a_hunk_anchors_ignoring_whitespace_and_with_less_context(tmp_path):
    # The current file was reformatted (tabs, one context line changed): the hunk still finds its one place.
    current = UPSTREAM_C.replace("    int s = 0;", "\tint s = 0;").replace("    return s * scale;",
                                                                           "    return scale * s;")
    tagged = porting.hunk_lines(HUNK)
    out = porting.apply_hunk(current, tagged)
    assert out is not None and "s += 2 * x[i];" in out and "\tint s = 0;" in out  # context keeps its spelling
    assert porting.apply_hunk(current.replace("s += x[i];", "s -= x[i];"), tagged) is None
    assert porting.apply_hunk(current + current, tagged) is None  # twice: ambiguous, no anchor


def test_a_hunk_merges_three_way_onto_a_changed_file_or_reports_the_conflict(tmp_path):
    base = make_tree(tmp_path / "up", {"a.c": UPSTREAM_C})
    # A kept experiment changed another function of the file: the hunk still merges.
    current = make_tree(tmp_path / "up", {"a.c": UPSTREAM_C.replace("return a + 1;", "return a + 10;")})
    base = base.at(base.revision)
    hunk = {"id": "c1", "repo": "fork", "path": "a.c", "symbol": "sum", "text": HUNK}
    made = porting.hunk_port(hunk, current=current, base=base, forks={}, merge_file=merge_file)
    assert isinstance(made, porting.Candidate), made
    assert "+        s += 2 * x[i];" in made.patch and "a + 10" not in made.patch.split("@@")[-1].split("\n+")[0]
    # The kept experiment changed the very line the hunk changes: a conflict, said as such.
    clash = make_tree(tmp_path / "up", {"a.c": UPSTREAM_C.replace("s += x[i];", "s += x[i] + 0;")})
    dropped = porting.hunk_port(hunk, current=clash, base=base, forks={}, merge_file=merge_file)
    assert isinstance(dropped, porting.Dropped) and dropped.reason == "conflict"
    gone = porting.hunk_port({**hunk, "path": "missing.c"}, current=clash, base=base, forks={}, merge_file=merge_file)
    assert isinstance(gone, porting.Dropped) and gone.reason == "no file"


def test_a_git_forks_commit_is_merged_from_its_own_parent(tmp_path):
    up = make_tree(tmp_path / "up", {"a.c": UPSTREAM_C})
    shutil.copytree(tmp_path / "up", tmp_path / "fork")
    fork = make_tree(tmp_path / "fork", {"a.c": UPSTREAM_C.replace("return a + 1;", "return a + 2;")}, name="fork")
    hunk = {"id": "c2", "repo": "fork", "commit": fork.revision, "path": "a.c", "symbol": "other", "text": ""}
    made = porting.hunk_port(hunk, current=up, base=up, forks={"fork": fork}, merge_file=merge_file)
    assert isinstance(made, porting.Candidate) and "+    return a + 2;" in made.patch


def test_propose_alternates_fork_ports_with_the_targets_variants_and_attributes_them(tmp_path):
    upstream = make_tree(tmp_path / "up", {"src/math.c": UPSTREAM_C})
    fork = make_tree(tmp_path / "fork", {"lib/kernels.c": FORK_KERNELS_C,
                                         "lib/other.c": "int other(int a) {\n    return a + 3;\n}\n"}, name="fork")
    variants = [{"kind": "build", "title": f"build {i}", "change": {"build_env": {"O": str(i)}}} for i in range(3)]
    sources = ForkSources(current=upstream, base=upstream, forks={"fork": fork}, hot_paths=["src/*"],
                          merge_file=merge_file, rank=lambda name: 0 if name == "other" else 1)
    gap_finding = {"id": "Fgap", "claim": "CUDA fuses it", "backend_gaps": [
        {"id": "g1", "gap": "fusion", "ops": "GGML_OP_RMS_NORM,GGML_OP_MUL", "backends": "CUDA", "path": "x.cu"}]}
    proposal = propose([gap_finding], variants=variants, tried=set(), profile_finding="Fprof", forks=sources)
    kinds = [h["source_kind"] for h in proposal.hypotheses]
    assert kinds[:4] == ["fork", "profile", "fork", "profile"]
    assert proposal.hypotheses[0]["title"].startswith("port fork's other")  # the profile's rank goes first
    assert proposal.stats()["candidates_by_source"] == {"fork": 2, "profile": 3, "backend-gap": 1}
    # Offline, a backend gap needs an LLM: listed, not queued; with an LLM it joins the queue.
    assert [h["title"] for h in proposal.needs_llm] == ["fuse RMS_NORM + MUL on the CPU, as the CUDA backend does"]
    with_llm = propose([gap_finding], variants=variants, tried=set(), profile_finding="Fprof", forks=sources,
                       llm=True)
    assert "backend-gap" in [h["source_kind"] for h in with_llm.hypotheses]
    # One experiment per wave still alternates: after a fork experiment, the next wave starts with the profile's.
    after_fork = propose([], variants=variants, tried=set(), profile_finding="Fprof", forks=sources,
                         history=["fork"])
    assert after_fork.hypotheses[0]["source_kind"] == "profile"
    # The same port against a newer tree is the same hypothesis: tried once.
    tried = {h["key"] for h in proposal.hypotheses if h["source_kind"] == "fork"}
    again = propose([], variants=variants, tried=tried, profile_finding="Fprof", forks=sources)
    assert [h["source_kind"] for h in again.hypotheses] == ["profile"] * 3
    # Over the run, a candidate counts once even when a later proposal no longer makes it (a kept port).
    later = propose([], variants=variants[:1], tried=tried, profile_finding="Fprof", forks=None)
    assert later.stats(proposal.stats())["candidates_by_source"] == {"fork": 2, "profile": 3, "backend-gap": 1}


@pytest.mark.slow
def test_the_pinned_llama_cpp_and_ik_llama_cpp_give_fork_candidates_in_the_cpu_hot_code(paths):
    from readfirst.sources import prepare_source
    from readfirst.targets.llama_cpp.target import HOT_PATHS, hot_symbols
    up = prepare_source("llama.cpp", paths.sources, paths.sdists)
    ik = prepare_source("ik_llama.cpp", paths.sources, paths.sdists)
    current = GitTree("llama.cpp", up.path, up.baseline)
    fork = GitTree("ik_llama.cpp", ik.path, ik.baseline)
    fragments = hot_symbols("Q4_0", flash_attn=True)
    ports = porting.function_ports(current, [fork], hot_paths=HOT_PATHS)
    hot = [c for c in ports.candidates if any(f in c.symbol for f in fragments)]
    print(f"{len(ports.candidates)} candidates, {len(hot)} in the profile's hot symbols; dropped: "
          f"{porting.reasons(ports.dropped)}")
    for c in sorted(hot, key=lambda c: c.changed_lines)[:8]:
        print(f"  {c.title}: {c.changed_lines} lines")
    assert len(hot) >= 5
    assert all(c.path.startswith("ggml/src/ggml-cpu/") for c in ports.candidates)
    assert any(c.symbol == "ggml_vec_dot_q4_0_q8_0" for c in ports.candidates)
    assert any(c.fork_path == "ggml/src/ggml.c" for c in hot)  # found where ik_llama.cpp keeps it


def test_a_hunk_does_not_anchor_on_braces_alone_nor_outside_the_hot_files(tmp_path):
    thin = "// fork-diff\n@@ -1,3 +1,3 @@\n }\n-    x();\n+    y();\n \n"
    assert porting.apply_hunk("void f() {\n    z();\n}\n\nvoid g() {\n    x();\n}\n", porting.hunk_lines(thin)) is None
    up = make_tree(tmp_path / "up", {"a.c": UPSTREAM_C, "cold/b.c": UPSTREAM_C})
    hunk = {"id": "c1", "repo": "fork", "path": "cold/b.c", "symbol": "sum", "text": HUNK}
    dropped = porting.hunk_port(hunk, current=up, base=up, forks={}, merge_file=merge_file, hot_paths=["a.c"])
    assert isinstance(dropped, porting.Dropped) and dropped.reason == "not hot"


def test_a_c_function_moving_into_cpp_keeps_the_trees_linkage_and_drops_cs_restrict(tmp_path):
    up_cpp = "#include <cstddef>\nfloat dot(const float * x, const float * y, int n);\n\n" \
             "float dot(const float * x, const float * y, int n) {\n    float s = 0;\n" \
             "    for (int i = 0; i < n; i++) s += x[i] * y[i];\n    return s;\n}\n"
    fork_c = "static float dot(const float * restrict x, const float * restrict y, int n) {\n" \
             "    float s0 = 0, s1 = 0; int i = 0;\n    for (; i + 1 < n; i += 2) { s0 += x[i] * y[i]; " \
             "s1 += x[i + 1] * y[i + 1]; }\n    for (; i < n; i++) s0 += x[i] * y[i];\n    return s0 + s1;\n}\n"
    upstream = make_tree(tmp_path / "up", {"vec.cpp": up_cpp})
    fork = make_tree(tmp_path / "fork", {"ggml.c": fork_c}, name="fork")
    [port] = porting.function_ports(upstream, [fork], hot_paths=["*"]).candidates
    apply(upstream, port.patch)
    ported = (upstream.repo / "vec.cpp").read_text()
    assert "__restrict x" in ported and "static float dot" not in ported
    f = tmp_path / "unit.cpp"
    f.write_text(ported)
    built = subprocess.run(["g++", "-c", "-Wall", "-Werror", "-o", str(tmp_path / "u.o"), str(f)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr


def test_a_hunk_port_is_titled_after_the_function_whose_lines_it_changes(tmp_path):
    # The chunk's symbol comes from the fork's file and may name a neighbour: the title reads the current file.
    up = make_tree(tmp_path / "up", {"a.c": UPSTREAM_C})
    hunk = {"id": "c1", "repo": "fork", "path": "a.c", "symbol": "other", "text": HUNK}
    made = porting.hunk_port(hunk, current=up, base=up, forks={}, merge_file=merge_file)
    assert isinstance(made, porting.Candidate) and made.symbol == "sum"
    assert made.title == "port the fork's hunk to sum in a.c"


def test_hunks_into_one_file_read_the_tree_file_once_and_each_merged_file_once(tmp_path, monkeypatch):
    """A 12,000-line file takes 70 ms to parse: the tree's file is read for its functions once for all the hunks
    ported into it, and each merged file is parsed once for both of its checks (moved, parses)."""
    from collections import Counter

    from readfirst.knowledge_base import chunking
    current = UPSTREAM_C + "\n/* this run's copy */\n"  # a text no earlier test cached
    up = make_tree(tmp_path / "up", {"a.c": current})
    fork = make_tree(tmp_path / "fork", {"a.c": current}, name="fork")
    parsed: Counter[bytes] = Counter()
    spans: Counter[str] = Counter()

    class Counting:
        def __init__(self, parser):
            self.parser = parser

        def parse(self, data, *args):
            parsed[data] += 1
            return self.parser.parse(data, *args)

    monkeypatch.setattr(porting, "c_parser", lambda cpp: Counting(chunking.c_parser(cpp)))
    monkeypatch.setattr(porting, "function_spans",
                        lambda text, suffix: spans.update([text]) or chunking.function_spans(text, suffix))
    other = ("// fork-diff fork vs up: a.c:10-14 other\n@@ -10,5 +10,5 @@\n     return s * scale;\n }\n \n"
             " int other(int a) {\n-    return a + 1;\n+    return a + 3;\n }")
    for i, text in enumerate((HUNK, other)):
        hunk = {"id": f"c{i}", "repo": "fork", "path": "a.c", "symbol": "", "text": text}
        made = porting.hunk_port(hunk, current=up, base=up, forks={"fork": fork}, merge_file=merge_file)
        assert isinstance(made, porting.Candidate), made
    assert spans == Counter({current: 1})
    # whole files (the copy's mark at their end): the tree's, and one per hunk; a port's lines are parsed apart
    merged = [data for data in parsed if data.endswith(b"copy */\n") and data != current.encode()]
    assert len(merged) == 2 and all(parsed[m] == 1 for m in merged), parsed.values()


def test_a_name_the_destination_file_cannot_see_comes_along_from_the_fork(tmp_path):
    # `clamp8` is static in another file of the tree: a word of the tree, but not visible in the file the port
    # lands in. The fork's copy comes along, and the file builds.
    up = make_tree(tmp_path / "up", {"src/util.c": "static int clamp8(int x) { return x > 8 ? 8 : x; }\n"
                                                   "int use_util(int x) { return clamp8(x); }\n",
                                     "src/f.c": "int f(int x) {\n    return x + 1;\n}\n"})
    fork = make_tree(tmp_path / "fork", {"src/f.c": "static int clamp8(int x) { return x > 8 ? 8 : x; }\n\n"
                                                    "int f(int x) {\n    return clamp8(x) + 1;\n}\n"}, name="fork")
    [port] = porting.function_ports(up, [fork], hot_paths=["src/*"]).candidates
    assert port.helpers == ("clamp8",)
    apply(up, port.patch)
    built = compiles((up.repo / "src/f.c").read_text(), tmp_path)
    assert built.returncode == 0, built.stderr


def test_a_helper_the_fork_keeps_in_another_file_comes_with_its_body_not_its_prototype(tmp_path):
    # The fork moved f into kernels.c, which declares the helper that stayed in the old file: the port needs the
    # helper's body (a prototype alone builds and fails at the link).
    main = "\nint main(void) { return f(3) == 7 ? 0 : 1; }\n"
    up = make_tree(tmp_path / "up", {"src/f.c": "int f(int x) {\n    return x + 1;\n}\n" + main})
    fork = make_tree(tmp_path / "fork", {
        "src/f.c": "int twice(int x) { return 2 * x; }\n" + main,
        "src/kernels.c": "int twice(int x);\n\nint f(int x) {\n    return twice(x) + 1;\n}\n"}, name="fork")
    [port] = porting.function_ports(up, [fork], hot_paths=["src/*"]).candidates
    assert port.fork_path == "src/kernels.c" and port.helpers == ("twice",)
    apply(up, port.patch)
    exe = tmp_path / "exe"
    built = subprocess.run(["gcc", "-Wall", "-Werror", "-o", str(exe), str(up.repo / "src/f.c")],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    assert subprocess.run([str(exe)]).returncode == 0


# -- a port is parsed before it is built; a port that changes nothing is no candidate (issue 30) -----------------

MIX_UP = "#include <stdint.h>\n\nuint32_t mix(uint32_t x, uint32_t k) {\n    return x * 3u + k;\n}\n"


def test_a_macro_defined_on_the_line_above_the_function_comes_along_once_and_the_port_compiles(tmp_path):
    # A #define ends with its newline: read as ending on the line after it, it took the function's first line
    # along and the port said `uint32_t mix(...) {` twice. The same for a macro closed by the #endif below it.
    fork_c = ("#include <stdint.h>\n\n#ifndef MIX_SHIFT\n#define MIX_SHIFT 5\n#endif\n"
              "#define ROTL(x, r) (((x) << (r)) | ((x) >> (32 - (r))))\n"
              "uint32_t mix(uint32_t x, uint32_t k) {\n    return ROTL(x, MIX_SHIFT) ^ k;\n}\n")
    up = make_tree(tmp_path / "up", {"mix.c": MIX_UP})
    fork = make_tree(tmp_path / "fork", {"mix.c": fork_c}, name="fork")
    ports = porting.function_ports(up, [fork], hot_paths=["*"])
    assert ports.dropped == []
    [port] = ports.candidates
    assert set(port.helpers) == {"ROTL", "MIX_SHIFT"}
    apply(up, port.patch)
    ported = (up.repo / "mix.c").read_text()
    assert ported.count("uint32_t mix(") == 1 and ported.count("#endif") == 0, ported
    built = compiles(ported, tmp_path)
    assert built.returncode == 0, built.stderr


def test_the_parse_check_names_the_line_and_node_of_what_the_port_broke_and_forgives_what_was_there():
    broken = MIX_UP.replace("    return x * 3u + k;\n}\n", "    return x * 3u + k;\n")
    problem = porting.parse_problem("mix.c", MIX_UP, broken)
    assert problem.startswith("line ") and ("missing" in problem or "ERROR" in problem), problem
    assert porting.parse_problem("mix.c", MIX_UP, MIX_UP.replace("3u", "5u")) == ""
    # A construct tree-sitter cannot read that the tree already had (a macro it does not know) is no new error.
    odd = MIX_UP + "int g(int a) { return FANCY_LOOP(a) {} a; }\n"
    assert porting.parse_problem("mix.c", odd, odd.replace("3u", "5u")) == ""
    # ...nor is one the fork's own file has (it is the fork's code as written), from where the port came.
    assert porting.parse_problem("mix.c", MIX_UP, odd, sources=[("fork/mix.c", odd)]) == ""
    assert porting.parse_problem("mix.c", MIX_UP, odd).startswith("line 6: ")


def test_a_function_port_that_would_not_parse_is_dropped_with_the_parsers_reason(tmp_path, monkeypatch):
    # The engine's adaptation is where a port gets mangled (it was the macro's span before): whatever it makes
    # that does not parse never reaches a build.
    up = make_tree(tmp_path / "up", {"mix.c": MIX_UP})
    fork = make_tree(tmp_path / "fork", {"mix.c": MIX_UP.replace("x * 3u", "x * 5u")}, name="fork")
    real = porting.adapt
    monkeypatch.setattr(porting, "adapt", lambda *a, **k: real(*a, **k).rstrip().rstrip("}") + "\n")
    ports = porting.function_ports(up, [fork], hot_paths=["*"])
    assert ports.candidates == []
    [dropped] = ports.dropped
    assert (dropped.reason, dropped.symbol) == ("does not parse", "mix")
    assert dropped.detail.startswith("line "), dropped.detail


def test_a_hunk_port_that_would_not_parse_is_dropped_with_the_parsers_reason(tmp_path):
    up = make_tree(tmp_path / "up", {"a.c": UPSTREAM_C})
    hunk = {"id": "c9", "repo": "fork", "path": "a.c", "symbol": "sum", "text": (
        "// fork-diff fork vs up: a.c:6-10 sum\n@@ -6,5 +6,4 @@ int sum(const int * x, size_t n) {\n"
        "     int s = 0;\n     for (size_t i = 0; i < n; i++) {\n         s += x[i];\n-    }\n"
        "     return s * scale;")}
    made = porting.hunk_port(hunk, current=up, base=up, forks={}, merge_file=merge_file)
    assert isinstance(made, porting.Dropped) and made.reason == "does not parse", made
    assert made.detail.startswith("line ") and made.symbol == "sum"


ACC_UP = """#include <stddef.h>

typedef struct acc { int total; } acc;

int add_all(acc * a, const int * xs, size_t n) {
    for (size_t i = 0; i < n; i++) {
        a->total += xs[i];
    }
    return a->total;
}
"""
# The same function, spelled otherwise: a comment, `struct` before the type, other parameter names, parentheses
# and an empty statement that change nothing.
ACC_RESPELLED = """int add_all(struct acc *out, const int *values, size_t count)
{
    /* accumulate into the caller's total */
    for (size_t i = 0; i < count; i++) {
        out->total += (values[i]);  // one at a time
    };
    return (out->total);
}
"""


def test_a_fork_function_that_differs_only_in_spelling_is_dropped_as_no_change_and_counted(tmp_path):
    up = make_tree(tmp_path / "up", {"acc.c": ACC_UP})
    fork = make_tree(tmp_path / "fork", {"acc.c": ACC_UP[:ACC_UP.index("int add_all")] + ACC_RESPELLED},
                     name="fork")
    ports = porting.function_ports(up, [fork], hot_paths=["*"])
    assert ports.candidates == []
    [dropped] = ports.dropped
    assert (dropped.reason, dropped.symbol) == ("no change", "add_all")
    sources = ForkSources(current=up, base=up, forks={"fork": fork}, hot_paths=["*"], merge_file=merge_file)
    proposal = propose([], variants=[], tried=set(), profile_finding="Fprof", forks=sources)
    assert proposal.stats()["dropped"] == {"no change": 1}
    assert not [h for h in proposal.hypotheses if h["source_kind"] == "fork"]


def test_a_fork_function_that_differs_by_one_real_token_is_still_proposed(tmp_path):
    up = make_tree(tmp_path / "up", {"acc.c": ACC_UP})
    one = ACC_RESPELLED.replace("out->total += (values[i])", "out->total ^= (values[i])")
    fork = make_tree(tmp_path / "fork", {"acc.c": ACC_UP[:ACC_UP.index("int add_all")] + one}, name="fork")
    ports = porting.function_ports(up, [fork], hot_paths=["*"])
    assert ports.dropped == []
    [port] = ports.candidates
    assert port.symbol == "add_all" and "^= (values[i])" in port.patch


def test_a_fork_defining_a_function_twice_is_ambiguous_only_when_the_two_differ_by_more_than_spelling(tmp_path):
    """The same code spelled twice (another file, other parameter names) is one definition: ported. Two
    definitions that differ in a token the compiler reads: which one is compiled here is unknown, dropped."""
    up = make_tree(tmp_path / "up", {"acc.c": ACC_UP})
    one = ACC_RESPELLED.replace("out->total += (values[i])", "out->total ^= (values[i])")
    head = ACC_UP[:ACC_UP.index("int add_all")]
    same_again = head + ACC_UP[ACC_UP.index("int add_all"):].replace("+=", "^=")
    fork = make_tree(tmp_path / "fork", {"acc.c": head + one, "copy/acc.c": same_again}, name="fork")
    ports = porting.function_ports(up, [fork], hot_paths=["*"])
    assert ports.dropped == []
    [port] = ports.candidates
    assert port.symbol == "add_all" and "^= (values[i])" in port.patch
    other = make_tree(tmp_path / "other", {"acc.c": head + one, "copy/acc.c": same_again.replace("^=", "-=")},
                      name="other")
    ports = porting.function_ports(up, [other], hot_paths=["*"])
    assert ports.candidates == [] and [d.reason for d in ports.dropped] == ["ambiguous"]


def test_a_hunk_that_only_changes_comments_or_whitespace_is_dropped_as_no_change(tmp_path):
    up = make_tree(tmp_path / "up", {"a.c": UPSTREAM_C})
    for new in ("+        s += x[i];  // each element", "+        s +=   x[i];"):
        hunk = {"id": "c1", "repo": "fork", "path": "a.c", "symbol": "sum",
                "text": HUNK.replace("+        s += 2 * x[i];", new)}
        made = porting.hunk_port(hunk, current=up, base=up, forks={}, merge_file=merge_file)
        assert isinstance(made, porting.Dropped) and made.reason == "no change", made
        assert made.symbol == "sum"


def test_no_change_reads_only_the_definitions_a_change_touches_and_still_sees_every_real_token():
    renamed = UPSTREAM_C.replace("int other(int a) {\n    return a + 1;", "int other(int b) {\n    return b + 1;")
    assert porting.no_change("a.c", UPSTREAM_C, renamed)  # a parameter's name, read in its whole function
    between = UPSTREAM_C.replace("\nint other", "\n/* the next one */\nint other")
    assert porting.no_change("a.c", UPSTREAM_C, between)
    assert porting.no_change("a.c", UPSTREAM_C, UPSTREAM_C + "\n// end\n")
    assert not porting.no_change("a.c", UPSTREAM_C, UPSTREAM_C.replace("return a + 1;", "return a + 2;"))
    assert not porting.no_change("a.c", UPSTREAM_C, renamed.replace("return b + 1;", "return a + 1;"))
    assert not porting.no_change("a.c", UPSTREAM_C, UPSTREAM_C.replace("static int scale = 3;", "static int scale = 4;"))
    assert not porting.no_change("a.c", UPSTREAM_C, UPSTREAM_C)  # nothing differs: not a port at all


def test_the_printed_drops_put_moves_first_and_changes_that_change_nothing_last():
    from readfirst.agents.offline_policy import dropped_lines
    items = [{"what": f"f{i}", "reason": "no change"} for i in range(9)] + [
        {"what": "ggml_gemv", "reason": "moved", "detail": "moved to b.c"},
        {"what": "g", "reason": "unresolved", "detail": "needs h"}]
    lines = dropped_lines(items, limit=3)
    assert "ggml_gemv" in lines[0] and "unresolved" in lines[1] and "no change" in lines[2]
    assert lines[-1].startswith("  and 8 more")
