"""Issue 13 item 11: errors that hid now say what is wrong and what to do: a damaged knowledge base is not read
as an empty one, and a baseline that dies of SIGILL is said to have died of SIGILL."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest

from readfirst.config import Paths
from readfirst.errors import BaselineBroken, KnowledgeBaseError
from readfirst.records import CommandResult
from readfirst.sandbox.docker_sandbox import describe_exit
from readfirst.sources import SourceRepo
from readfirst.targets.llama_cpp.baseline import establish_baseline
from readfirst.targets.llama_cpp.target import LlamaCppTarget, fallback_configs, native_config


class _Embedder:
    name = "stand-in embedder"
    dim = 4

    def embed(self, texts):
        return [[1.0, 0.0, 0.0, 0.0] for _ in texts]


def _made_store(directory: Path):
    from readfirst.knowledge_base.store import KnowledgeBase
    KnowledgeBase(directory, _Embedder(), writable=True).close()
    return KnowledgeBase


@pytest.mark.chroma
def test_a_damaged_collection_is_an_error_not_an_empty_store(attack):
    KnowledgeBase = _made_store(attack.root / "kb")
    db = attack.root / "kb" / "chroma" / "chroma.sqlite3"
    with sqlite3.connect(db) as c:  # a store whose collection record is damaged (as a crash mid-write leaves it)
        c.execute("UPDATE collections SET config_json_str = '{not json'")
    with pytest.raises(KnowledgeBaseError, match="unreadable.*kb rebuild"):
        kb = KnowledgeBase(attack.root / "kb", _Embedder())
        attack.escaped(f"a damaged store opened as one with {kb.count()} chunks")


@pytest.mark.chroma
def test_a_store_never_ingested_is_still_empty(attack):
    from readfirst.knowledge_base.store import KnowledgeBase
    assert KnowledgeBase(attack.root / "nothing", _Embedder()).count() == 0


@pytest.mark.chroma
def test_a_damaged_source_record_is_said_not_overwritten(attack):
    KnowledgeBase = _made_store(attack.root / "kb")
    manifest = attack.root / "kb" / "sources.json"
    manifest.write_text('{"fork": {"complete": tr')
    kb = KnowledgeBase(attack.root / "kb", _Embedder(), writable=True)
    try:
        with pytest.raises(KnowledgeBaseError, match="sources.*cannot be read.*ingest the sources again"):
            kb.record_source("other", {"kind": "path"})
    finally:
        kb.close()
    assert manifest.read_text() == '{"fork": {"complete": tr'  # left for the user to restore


def test_an_exit_by_signal_is_named():
    assert describe_exit(132) == "exit 132 (SIGILL: an instruction this CPU does not execute)"
    assert describe_exit(139).startswith("exit 139 (SIGSEGV")
    assert describe_exit(1) == "exit 1"


class _DiesAtStart:
    """A sandbox in which every llama-bench dies as the native build does on this machine: SIGILL at start."""
    limits = SimpleNamespace(cpus=1)

    def run(self, command, **_):
        code = 132 if "llama-bench" in command else 0
        return CommandResult(command, code, 0.1, "Illegal instruction" if code else "", 0, False, False)


def test_the_fallback_says_what_it_observed(attack, monkeypatch):
    monkeypatch.setattr("readfirst.targets.llama_cpp.target.cpu_has_amx", lambda: True)
    paths = Paths(home=attack.root, cache=attack.root / "cache")
    target = LlamaCppTarget(paths, _DiesAtStart(), SourceRepo(attack.root, "b" * 40, "test"))
    monkeypatch.setattr(target, "build_config", lambda commit, **_: SimpleNamespace(ok=True, stage="ok"))
    monkeypatch.setattr(target, "run_tests", lambda commit, **_: SimpleNamespace(ok=True, cases=[]))
    for config in (native_config(), *fallback_configs()):  # every configuration built, each dies at start
        (target.artifact_dir("b" * 40, config) / "bin").mkdir(parents=True)
        (target.artifact_dir("b" * 40, config) / "bin" / "llama-bench").write_bytes(b"")
    paths.models.mkdir(parents=True)
    model = paths.models / "m.gguf"
    model.write_bytes(b"GGUF")
    with pytest.raises(BaselineBroken) as broken:
        establish_baseline(target, model=model)
    said = str(broken.value)
    assert "SIGILL" in said and "#20824" not in said and "AMX matmul" not in said, said
