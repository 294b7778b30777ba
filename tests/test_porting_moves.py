"""A fork that moved a hot function into a file of its own, on the pinned llama.cpp: the move is understood as a
move. The function is ported from where the fork keeps it now into the file where the tree defines it, with
what it needs resolved in that file first and brought from any file of the fork after; the hunk that deletes it
from the old file is dropped with the reason "moved", never proposed (it failed at the link:
"undefined reference to `ggml_gemv_q4_0_8x8_q8_0`"). Both fork shapes: a vendored directory and a git commit."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from readfirst.agents import porting
from readfirst.agents.offline_policy import ForkSources, propose
from readfirst.knowledge_base.forks import ScratchRepo, Side, commit_units, tree_units
from readfirst.knowledge_base.chunking import Unit
from readfirst.sources import GitTree, merge_file, prepare_source
from readfirst.targets.llama_cpp.target import HOT_PATHS

OLD = "ggml/src/ggml-cpu/arch/x86/repack.cpp"
NEW = "ggml/src/ggml-cpu/arch/x86/repack-q4_0.cpp"
MOVED = "ggml_gemv_q4_0_8x8_q8_0"
# The fork's fix: the LUT path only for shapes it handles, decided by a helper the fork keeps in the OLD file
# (its new file declares it), and a macro of the new file. The LUT kernel itself stays in the old file, where the
# tree's destination file has it too: it must not come along a second time.
HELPER = ("bool ggml_q4_0_8x8_lut_ok(int n, int nc) {\n"
          "    return n % QK8_0 == 0 && nc % 8 == 0;\n}\n\n")
LUT_CALL = "gemv_q4_b32_8x8_q8_0_lut_avx<block_q4_0x8>(n, s, bs, vx, vy, nr, nc, signextendlut);"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def upstream(shared_cache, tmp_path_factory) -> GitTree:
    from readfirst.config import Paths
    paths = Paths(home=tmp_path_factory.mktemp("home"), cache=shared_cache)
    source = prepare_source("llama.cpp", paths.sources, paths.sdists)
    return GitTree("llama.cpp", source.path, source.baseline)


def move(root: Path) -> None:
    """In a checkout of the baseline: the kernel moved, with the fix, into NEW; OLD keeps a comment."""
    text = (root / OLD).read_text()
    start, end = text.index(f"void {MOVED}("), text.index("void ggml_gemv_q4_K_8x8_q8_K(")
    func = text[start:end]
    assert LUT_CALL in func, "llama.cpp changed: the test's kernel is gone"
    fixed = func.replace("    {\n        // Lookup table", "    if (ggml_q4_0_8x8_lut_ok(n, nc)) {\n        // Lookup table"
                         ).replace(", signextendlut, 0);", ", signextendlut, Q4_0_LUT_LANES);")
    assert fixed.count("ggml_q4_0_8x8_lut_ok") == 1 and "Q4_0_LUT_LANES" in fixed
    head = text[:text.index("#define UNUSED")]
    helpers_at = text.index("// GEMV/GEMM templates")
    (root / OLD).write_text(text[:helpers_at] + HELPER + text[helpers_at:start]
                            + f"// {MOVED} lives in repack-q4_0.cpp\n\n" + text[end:])
    (root / NEW).write_text(head + "bool ggml_q4_0_8x8_lut_ok(int n, int nc);\n\n#define Q4_0_LUT_LANES 0\n\n"
                            + fixed)


def vendored(tmp: Path, upstream: GitTree) -> tuple[GitTree, list[dict]]:
    """A plain directory (only ggml/, as a vendored copy), prepared as readfirst prepares a --fork path."""
    folder = tmp / "vendored-fork"
    folder.mkdir()
    subprocess.run(f"git -C {upstream.repo} archive {upstream.revision} ggml | tar -x -C {folder}", shell=True,
                   check=True)
    move(folder)
    source = prepare_source(str(folder), tmp / "sources", tmp / "sdists")
    fork = GitTree("vendored-fork", source.path, source.baseline)
    scratch = ScratchRepo(tmp / "scratch", Side(fork.name, fork.repo, fork.revision),
                          Side(upstream.name, upstream.repo, upstream.revision))
    return fork, hunks_of(tree_units(scratch, source="vendored-fork"))


def git_fork(tmp: Path, upstream: GitTree) -> tuple[GitTree, list[dict]]:
    """A clone of the tree with the move as one commit."""
    clone = tmp / "git-fork"
    git(tmp, "clone", "-q", "--shared", str(upstream.repo), str(clone))
    git(clone, "checkout", "-q", upstream.revision)
    move(clone)
    git(clone, "add", "-A")
    git(clone, "commit", "-q", "-m", "move the q4_0 8x8 GEMV into its own file, LUT path only where it applies")
    fork = GitTree("git-fork", clone, git(clone, "rev-parse", "HEAD"))
    scratch = ScratchRepo(tmp / "scratch", Side(fork.name, fork.repo, fork.revision),
                          Side(upstream.name, upstream.repo, upstream.revision))
    return fork, hunks_of(commit_units(scratch, upstream.revision, source="git-fork"))


def hunks_of(units) -> list[dict]:
    """The fork-diff chunks as the competitor analyst hands them to the porting engine."""
    out = []
    for unit in units:
        for c in unit.chunks if isinstance(unit, Unit) else ():
            if c.kind == "fork-diff" and c.origin.get("path"):
                out.append({"id": c.id, "text": c.text, **{k: c.origin.get(k, "") for k in
                                                           ("repo", "revision", "commit", "path", "symbol")}})
    return out


@pytest.fixture(scope="module", params=["vendored", "git"])
def moved(request, upstream, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    fork, hunks = (vendored if request.param == "vendored" else git_fork)(tmp, upstream)
    assert any(h["path"] == OLD for h in hunks)
    sources = ForkSources(current=upstream, base=upstream, forks={fork.name: fork}, hot_paths=HOT_PATHS,
                          merge_file=merge_file)
    finding = {"id": "Ffork", "claim": "The fork differs from upstream here.", "fork_hunks": hunks}
    return fork, hunks, sources, propose([finding], variants=[], tried=set(), profile_finding="Fprof",
                                         forks=sources)


def defined(text: str, path: str) -> set[str]:
    return {d.name for d in porting.definitions(text, path) if d.kind == "function"}


def test_the_moved_function_is_ported_from_its_new_file_into_the_trees_file(moved, upstream, tmp_path):
    fork, _, sources, proposal = moved
    ports = porting.function_ports(upstream, [fork], hot_paths=HOT_PATHS)
    [port] = [c for c in ports.candidates if c.symbol == MOVED]
    assert (port.path, port.fork_path) == (OLD, NEW)
    # Needed names where the port lands: the LUT kernel is the destination file's own; the fork's helper comes
    # from the fork's old file (its body, not the prototype of the new file), the macro from the new one.
    assert set(port.helpers) == {"ggml_q4_0_8x8_lut_ok", "Q4_0_LUT_LANES"}
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", "--shared", str(upstream.repo), str(work))
    git(work, "checkout", "-q", upstream.revision)
    subprocess.run(["git", "-C", str(work), "apply", "-"], input=port.patch, text=True, check=True)
    after = (work / OLD).read_text()
    assert MOVED in defined(after, OLD) and "ggml_q4_0_8x8_lut_ok" in defined(after, OLD)
    assert after.count("static void gemv_q4_b32_8x8_q8_0_lut_avx(") == 1
    assert after.count("bool ggml_q4_0_8x8_lut_ok(int n, int nc)") == 1  # the body only, no stray prototype
    assert any(h["title"].startswith(f"port {fork.name}'s {MOVED}") for h in proposal.hypotheses)


def test_no_candidate_deletes_a_function_the_fork_still_defines(moved, upstream, tmp_path):
    fork, hunks, sources, proposal = moved
    fork_defines = set().union(*(defined(fork.read(p) or "", p) for p in (OLD, NEW)))
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", "--shared", str(upstream.repo), str(work))
    git(work, "checkout", "-q", upstream.revision)
    before = defined(upstream.read(OLD), OLD)
    patches = [h for h in proposal.hypotheses if f"a/{OLD}" in h["change"].get("patch", "")]
    assert patches
    for h in patches:
        subprocess.run(["git", "-C", str(work), "apply", "-"], input=h["change"]["patch"], text=True, check=True)
        gone = (before - defined((work / OLD).read_text(), OLD)) & fork_defines
        assert not gone, f"{h['title']} deletes {gone}, which the fork still defines"
        git(work, "checkout", "-q", "--", ".")


def test_the_hunk_deleting_the_moved_function_is_dropped_as_moved_and_named_after_it(moved):
    fork, hunks, sources, proposal = moved
    drops = [d for d in proposal.dropped if d["reason"] == "moved"]
    assert drops, proposal.dropped
    [drop] = [d for d in drops if MOVED in d["what"]]
    assert f"moved to {NEW}" in drop["detail"]
    assert "gemm_q4_b32_8x8_q8_0_lut_avx" not in drop["what"]  # the neighbour the fork's file shows there
    # Paired with the function port that is proposed instead.
    assert "function port is proposed" in drop["detail"]
    # Visible per function, with its rule, in the stats the summary reads.
    stats = proposal.stats()
    assert stats["dropped"].get("moved", 0) >= 1
    [item] = [d for d in stats["dropped_candidates"] if MOVED in d["what"] and d["reason"] == "moved"]
    assert f"moved to {NEW}" in item["detail"]
    # And no function of the tree is dropped as ambiguous because other CPUs' files define it too.
    assert not [d for d in proposal.dropped if d["reason"] == "ambiguous" and MOVED in d["what"]]


def test_each_drop_reaches_the_runs_summary_json_and_page_by_function(moved, tmp_path):
    from rich.console import Console

    from readfirst.config import Paths
    from readfirst.graph import cli_run, report_html
    from readfirst.graph.cli_common import AppContext
    from readfirst.graph.runner import attribution
    *_, proposal = moved
    # Over the run: a later wave that drops nothing forgets nothing.
    stats = propose([], variants=[], tried=set(), profile_finding="Fprof").stats(proposal.stats())
    summary = {"run_id": "r1", "stop_reason": "budget", "experiments": 0, "kept": [], "best_speedup": None,
               "results_tsv": str(tmp_path / "results.tsv"), "report": None, **attribution([], [], stats)}
    [item] = [d for d in summary["dropped_candidates"] if d["reason"] == "moved" and MOVED in d["what"]]
    assert item["symbol"] == MOVED and f"moved to {NEW}" in item["detail"]
    app = AppContext(Paths.resolve(), console=Console(record=True, width=400))
    cli_run._print_summary(app, summary, [])
    printed = app.console.export_text()
    assert f"dropped {item['what']}: moved ({MOVED} moved to {NEW}" in printed
    run = tmp_path / "run"
    run.mkdir()
    (run / "meta.json").write_text(json.dumps({"run_id": "r1", "status": "finished", "summary": summary}))
    page = report_html.write_html_report(run).read_text()
    assert re.search(rf"dropped candidates.*{re.escape(item['what'])}: moved \({MOVED} moved to {re.escape(NEW)}",
                     page, re.S)


@pytest.mark.skipif(shutil.which("g++") is None or porting._HOST != "x86", reason="needs g++ on x86-64")
def test_the_port_compiles_and_its_object_defines_the_moved_function(moved, upstream, tmp_path):
    # The file as the tree's build compiles it (its real headers, AVX2 on): the port builds, and the object
    # defines the kernel and the helper that came along, where the deleting hunk left "undefined reference".
    fork, *_ = moved
    [port] = [c for c in porting.function_ports(upstream, [fork], hot_paths=HOT_PATHS).candidates
              if c.symbol == MOVED]
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", "--shared", str(upstream.repo), str(work))
    git(work, "checkout", "-q", upstream.revision)
    subprocess.run(["git", "-C", str(work), "apply", "-"], input=port.patch, text=True, check=True)
    obj = tmp_path / "repack.o"
    built = subprocess.run(["g++", "-std=c++17", "-O1", "-march=haswell", "-Wall", "-c", "-Iggml/include",
                            "-Iggml/src", "-Iggml/src/ggml-cpu", "-o", str(obj), OLD], cwd=work, capture_output=True,
                           text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    symbols = subprocess.run(["nm", "--defined-only", str(obj)], capture_output=True, text=True).stdout
    assert re.search(rf"\bT {MOVED}$", symbols, re.M) and re.search(r"\bT _Z\w*ggml_q4_0_8x8_lut_ok", symbols)
