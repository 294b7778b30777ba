"""The knowledge base on a real Chroma server (`chroma run` on 127.0.0.1), and what a down server looks like."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from kb_conftest_helpers import embedder, write_files  # noqa: E402,F401

from readfirst.errors import KnowledgeBaseError  # noqa: E402
from readfirst.graph.cli import app  # noqa: E402
from readfirst.knowledge_base.chunking import Unit, chunk_code  # noqa: E402
from readfirst.knowledge_base.store import KnowledgeBase  # noqa: E402

pytestmark = pytest.mark.chroma
CHROMA = Path(sys.executable).parent / "chroma"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def chroma_server(tmp_path):
    port = free_port()
    log = open(tmp_path / "chroma.log", "wb")
    proc = subprocess.Popen([str(CHROMA), "run", "--path", str(tmp_path / "server-data"), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"chroma run did not start: {(tmp_path / 'chroma.log').read_text()[-500:]}")
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


CODE = """
void ggml_vec_dot_q4_0_q8_0(int n, float * s, const void * vx, const void * vy) {
    // dot product of a 4-bit quantized row with an 8-bit quantized row
    *s = 0.0f;
}
"""


def test_the_store_works_the_same_on_a_server(chroma_server, tmp_path, embedder):
    unit = Unit("s::q.c", chunk_code(CODE, path="ggml/src/q.c", kind="fork-code", unit="s::q.c", repo="ik"))
    with KnowledgeBase(tmp_path / "kb", embedder, chroma_url=chroma_server, writable=True) as kb:
        assert kb.ingest("s", [unit]).added == 1
        assert kb.ingest("s", [unit]).unchanged == 1
        hit = kb.query("quantized dot product 4-bit", k=1)[0]
        assert hit["symbol"] == "ggml_vec_dot_q4_0_q8_0" and hit["repo"] == "ik"
        assert kb.query("ggml_vec_dot_q4_0_q8_0", k=1, mode="lexical")[0]["symbol"] == "ggml_vec_dot_q4_0_q8_0"
    assert not (tmp_path / "kb" / "chroma").exists(), "nothing went to the embedded store"
    # The data lives in the server: a second client (another directory, same server) sees it.
    with KnowledgeBase(tmp_path / "elsewhere", embedder, chroma_url=chroma_server) as reader:
        assert reader.count() == 1
        assert reader.query("ggml_vec_dot_q4_0_q8_0", k=1, mode="lexical"), "its lexical index is built from the server"


def test_cli_with_chroma_url(chroma_server, tmp_path):
    docs = tmp_path / "docs"
    write_files(docs, {"q.c": CODE})
    runner = CliRunner()
    result = runner.invoke(app, ["kb", "--chroma-url", chroma_server, "ingest", "path", str(docs), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["added"] == 1
    stats = json.loads(runner.invoke(app, ["kb", "--chroma-url", chroma_server, "stats", "--json"]).stdout)
    assert stats["location"] == chroma_server and stats["chunks"] == 1


def test_a_server_that_is_down_is_one_clear_sentence(tmp_path, embedder):
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(KnowledgeBaseError, match=f"no Chroma server answers at {url}"):
        KnowledgeBase(tmp_path / "kb", embedder, chroma_url=url, writable=True)
    assert not (tmp_path / "kb" / "write.lock").exists() or not (tmp_path / "kb" / "write.pid").exists(), \
        "a failed open releases the writer's lock"
    proc = subprocess.run([str(Path(sys.executable).parent / "readfirst"), "kb", "--chroma-url", url, "query", "x"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no Chroma server answers" in proc.stderr and "Traceback" not in proc.stderr
