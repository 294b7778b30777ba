"""`readfirst kb ...` end to end on small inputs: ingest, query, stats, reset, rebuild, and errors as sentences."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from kb_conftest_helpers import commit, embedder, git, make_repo, write_files  # noqa: E402,F401

from readfirst.config import Paths  # noqa: E402
from readfirst.graph.cli import app  # noqa: E402
from readfirst.knowledge_base.store import KnowledgeBase  # noqa: E402

pytestmark = pytest.mark.chroma
READFIRST = str(Path(sys.executable).parent / "readfirst")

DOCS = {
    "kernels/softmax.c": """
void softmax_online(const float * x, float * y, int n) {
    float m = -1e30f, s = 0.0f;
    for (int i = 0; i < n; i++) { float m2 = x[i] > m ? x[i] : m; s = s * expf(m - m2) + expf(x[i] - m2); m = m2; }
    for (int i = 0; i < n; i++) y[i] = expf(x[i] - m) / s;
}
""",
    "notes/tuning.md": "# Threads\nPin one thread per physical core; hyper-threads share the FMA units.\n",
}


def kb(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([READFIRST, "kb", *args], capture_output=True, text=True, timeout=300, env=os.environ)


@pytest.fixture
def docs(tmp_path) -> Path:
    root = tmp_path / "docs"
    write_files(root, DOCS)
    (root / "weights.bin").write_bytes(b"\0" * 64)
    return root


def test_ingest_query_stats_reset(docs):
    runner = CliRunner()
    result = runner.invoke(app, ["kb", "ingest", "path", str(docs)])
    assert result.exit_code == 0, result.output
    assert f"path:{docs}: 2 added, 0 unchanged, 0 replaced, 0 removed, 1 skipped" in " ".join(result.stdout.split())
    assert "not a source, text or PDF file (.bin)" in result.stdout

    result = runner.invoke(app, ["kb", "query", "softmax_online", "-k", "2", "--json"])
    hits = json.loads(result.stdout)
    assert hits[0]["symbol"] == "softmax_online" and hits[0]["path"] == "kernels/softmax.c"
    assert hits[0]["start_line"] == 2 and hits[0]["kind"] == "doc" and "snippet" in hits[0]
    text = runner.invoke(app, ["kb", "query", "which cores should threads run on", "-k", "1"]).stdout
    assert "tuning.md" in text and "Threads" in text

    stats = json.loads(runner.invoke(app, ["kb", "stats", "--json"]).stdout)
    assert stats["chunks"] == stats["lexical_chunks"] == 2 and stats["by_kind"] == {"doc": 2}
    assert stats["sources"] == {f"path:{docs}": {"kind": "path", "path": str(docs)}}

    assert runner.invoke(app, ["kb", "reset", "--yes"]).exit_code == 0
    assert json.loads(runner.invoke(app, ["kb", "stats", "--json"]).stdout)["chunks"] == 0
    bad = runner.invoke(app, ["kb", "query", "x", "--kind", "novel"])
    assert bad.exit_code != 0 and "unknown kind 'novel'" in bad.output


def test_rebuild_recreates_a_store_that_no_longer_opens(docs):
    runner = CliRunner()
    assert runner.invoke(app, ["kb", "ingest", "path", str(docs)]).exit_code == 0
    store = Paths.resolve().knowledge_base
    (store / "chroma" / "chroma.sqlite3").write_bytes(b"this is not a database" * 100)

    broken = kb("query", "softmax")
    assert broken.returncode == 2
    message = " ".join(broken.stderr.split())  # rich wraps at the terminal's width
    assert message.startswith("error:") and "`readfirst kb rebuild` re-creates it" in message
    assert "Traceback" not in broken.stderr

    result = runner.invoke(app, ["kb", "rebuild"])
    assert result.exit_code == 0, result.output
    assert "2 added" in result.stdout
    assert json.loads(runner.invoke(app, ["kb", "query", "softmax_online", "--json"]).stdout)[0]["symbol"] == \
        "softmax_online"


def test_a_second_writer_gets_a_clear_message_at_once_while_queries_work(docs, embedder):
    runner = CliRunner()
    assert runner.invoke(app, ["kb", "ingest", "path", str(docs)]).exit_code == 0
    with KnowledgeBase(Paths.resolve().knowledge_base, embedder, writable=True):
        started = time.monotonic()
        second = kb("ingest", "path", str(docs))
        assert second.returncode == 2
        assert f"another process (pid {os.getpid()}) is writing to the knowledge base" in second.stderr
        assert time.monotonic() - started < 60, "refused at once, not after waiting for the lock"
        reader = kb("query", "softmax_online", "--json")
        assert reader.returncode == 0 and json.loads(reader.stdout)[0]["symbol"] == "softmax_online"


def test_fork_ingestion_from_paths_and_its_errors(tmp_path):
    upstream = make_repo(tmp_path / "upstream", {"src/gemv.c": "int gemv(int n) {\n    return n;\n}\n"})
    fork = tmp_path / "myfork"
    git(tmp_path, "clone", "-q", str(upstream), str(fork))
    commit(fork, {"src/gemv.c": "int gemv(int n) {\n    // unrolled by four for the AVX2 path\n    return n * 4;\n}\n"},
           "Unroll gemv by four on AVX2")
    runner = CliRunner()
    result = runner.invoke(app, ["kb", "ingest", "fork", str(fork), "--upstream", str(upstream), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["added"] == 1
    hits = json.loads(runner.invoke(app, ["kb", "query", "unroll gemv avx2", "--kind", "fork-diff", "--json"]).stdout)
    assert hits[0]["repo"] == "myfork" and hits[0]["symbol"] in ("gemv", None)

    unrelated = make_repo(tmp_path / "unrelated", {"a.c": "int a(void) {\n    return 0;\n}\n"})
    refused = kb("ingest", "fork", str(unrelated), "--upstream", str(upstream))
    assert refused.returncode == 2 and "share no git history" in refused.stderr and "Traceback" not in refused.stderr


def test_files_inside_a_git_repository_are_cited_from_its_top_level(tmp_path):
    repo = make_repo(tmp_path / "proj", {"ggml/src/cpu/ops.c": "void ggml_op_tanh(float * x) {\n    *x = 0;\n}\n"})
    head = git(repo, "rev-parse", "HEAD")
    runner = CliRunner()
    assert runner.invoke(app, ["kb", "ingest", "path", str(repo / "ggml/src/cpu/ops.c")]).exit_code == 0
    hit = json.loads(runner.invoke(app, ["kb", "query", "ggml_op_tanh", "--json"]).stdout)[0]
    assert (hit["repo"], hit["path"], hit["revision"], hit["symbol"]) == ("proj", "ggml/src/cpu/ops.c", head,
                                                                         "ggml_op_tanh")
