"""End to end on the pinned trees: a knowledge base built from the llama.cpp and ik_llama.cpp sdists finds
ik_llama.cpp's CPU flash-attention code for "flash attention kernel for the CPU".

Scoped to run in a few minutes on 2 cores (about 600 chunks; the whole ggml/src comparison is about 7,000): the
fork's flash-attention files under ggml/src/iqk (fork-only code, chunked by function), and as competition
upstream's own CPU ops (ggml-cpu/ops.cpp, which holds its CPU flash attention), its CUDA flash-attention files,
and the backend-gap documents of the whole ggml tree.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from readfirst.graph.cli import app

pytestmark = [pytest.mark.slow, pytest.mark.chroma]

IK_FLASH = ["ggml/src/iqk/fa", "ggml/src/iqk/iqk_flash_attn.cpp", "ggml/src/iqk/iqk_flash_impl.h",
            "ggml/src/iqk/iqk_cpu_ops.cpp"]
UPSTREAM_FILES = ["ggml/src/ggml-cpu/ops.cpp", "ggml/src/ggml-cuda/fattn.cu", "ggml/src/ggml-cuda/fattn-common.cuh",
                  "ggml/src/ggml-cuda/fattn-tile.cuh", "ggml/src/ggml-cuda/fattn-vec.cuh"]


def test_flash_attention_for_the_cpu_finds_ik_llama_cpp_code(shared_cache):
    from readfirst.sources import prepare_source
    upstream = prepare_source("llama.cpp", shared_cache / "sources", shared_cache / "sdists")
    runner = CliRunner()

    def ok(*args: str) -> str:
        result = runner.invoke(app, ["kb", *args])
        assert result.exit_code == 0, result.output
        return result.stdout

    subdirs = [arg for d in IK_FLASH for arg in ("--subdir", d)]
    fork = json.loads(ok("ingest", "fork", "ik_llama.cpp", *subdirs, "--json"))[0]
    assert fork["added"] >= 10 and fork["chunks_added"] > 50
    ok("ingest", "path", *[str(upstream.path / f) for f in UPSTREAM_FILES])
    ok("ingest", "backends", "llama.cpp")

    hits = json.loads(ok("query", "flash attention kernel for the CPU", "-k", "5", "--json"))
    ik_flash = [h for h in hits if h["repo"] == "ik_llama.cpp" and h["path"].startswith("ggml/src/iqk/")
                and ("flash" in h["path"] or "/fa/" in h["path"] or "flash" in (h["symbol"] or ""))]
    assert ik_flash, f"top 5: {[(h['repo'], h['path'], h['symbol']) for h in hits]}"
    assert ik_flash[0]["revision"] and ik_flash[0]["start_line"] >= 1

    again = json.loads(ok("ingest", "fork", "ik_llama.cpp", *subdirs, "--json"))[0]
    assert again["added"] == again["replaced"] == again["chunks_added"] == 0 and again["unchanged"] == fork["added"]
