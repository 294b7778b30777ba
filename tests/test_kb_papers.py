"""Papers: the real arxiv client against a local arXiv server, local PDFs (good, encrypted, broken), the list."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from kb_conftest_helpers import PAPER_PAGES, FakeArxiv, FakePaper, encrypt_pdf, make_pdf  # noqa: E402

from readfirst.knowledge_base.chunking import Skipped, Unit  # noqa: E402
from readfirst.knowledge_base.papers import (arxiv_client, arxiv_units, document_unit, find_papers,  # noqa: E402
                                             reading_list)


@pytest.fixture
def pdf(tmp_path) -> Path:
    return make_pdf(tmp_path / "tiled.pdf", PAPER_PAGES)


@pytest.fixture
def arxiv(pdf):
    papers = [FakePaper("2401.00001v2", "Tiled attention for CPU caches", "Attention tiles sized for L2.",
                        pdf.read_bytes()),
              FakePaper("2401.00002v1", "Lookup-table GEMV for low-bit weights", "Tables replace multiplies.")]
    with FakeArxiv(papers) as server:
        yield server


def test_search_and_fetch_through_the_real_client(arxiv):
    client = arxiv_client(arxiv.url, delay_seconds=0)
    found = find_papers(client, query="attention")
    assert [p.paper_id for p in found] == ["2401.00001v2"]
    assert found[0].pdf_url == f"{arxiv.url}/pdf/2401.00001v2"
    assert [p.title for p in find_papers(client, ids=["2401.00002"])] == ["Lookup-table GEMV for low-bit weights"]
    assert any("search_query=attention" in r for r in arxiv.requests)
    assert any("id_list=2401.00002" in r for r in arxiv.requests)


def test_a_paper_is_chunked_along_its_sections_and_cites_id_title_section(arxiv):
    papers = find_papers(arxiv_client(arxiv.url, delay_seconds=0), query="attention tables")
    items = list(arxiv_units(papers, source="papers:q"))
    full = next(i for i in items if isinstance(i, Unit) and i.key.endswith("2401.00001"))
    sections = [c.origin["section"] for c in full.chunks]
    assert sections[-3:] == ["1 Introduction", "2 Method", "3 Evaluation"]
    method = next(c for c in full.chunks if c.origin["section"] == "2 Method")
    assert method.origin["paper_id"] == "2401.00001v2" and method.origin["title"] == "Tiled attention for CPU caches"
    assert "running maximum and running sum" in method.text
    assert not any("must not be indexed" in c.text for c in full.chunks), "the reference list is dropped"
    # No PDF for the second one: its abstract is indexed, and the summary says why.
    skip = next(i for i in items if isinstance(i, Skipped))
    assert "2401.00002" in skip.unit and "404" in skip.reason and "abstract is indexed" in skip.reason
    abstract = next(i for i in items if isinstance(i, Unit) and i.key.endswith("2401.00002"))
    assert abstract.chunks[0].origin["section"] == "Abstract"


def test_local_documents_good_encrypted_and_broken(tmp_path, pdf):
    good = document_unit(pdf, source="s")
    assert isinstance(good, Unit) and good.chunks[0].kind == "paper"
    assert good.chunks[0].origin["path"] == str(pdf.resolve())
    locked = document_unit(encrypt_pdf(pdf, tmp_path / "locked.pdf"), source="s")
    assert isinstance(locked, Skipped) and locked.reason == "encrypted PDF"
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not really a pdf")
    broken = document_unit(tmp_path / "broken.pdf", source="s")
    assert isinstance(broken, Skipped) and broken.reason.startswith("unreadable PDF")
    (tmp_path / "notes.md").write_text("# Notes\nfused kernels keep data in cache between ops\n")
    notes = document_unit(tmp_path / "notes.md", source="s")
    assert isinstance(notes, Unit) and notes.chunks[0].kind == "doc" and notes.chunks[0].origin["section"] == "Notes"


def test_the_reading_list_is_ours_and_well_formed():
    entries = reading_list()
    assert len(entries) >= 12
    ids = [e["arxiv"] for e in entries if e.get("arxiv")]
    assert len(ids) == len(set(ids)) and all(re.fullmatch(r"\d{4}\.\d{4,5}", i) for i in ids)
    titles = " ".join(e["title"] for e in entries)
    for topic in ("FlashAttention", "Online normalizer", "Data Movement", "tinyBLAS", "Roofline"):
        assert topic in titles
    assert all(len(e["why"].split()) >= 20 for e in entries), "each entry says why it matters"


@pytest.mark.chroma
def test_cli_ingests_papers_from_arxiv_and_files_then_finds_them(arxiv, tmp_path, pdf):
    from readfirst.graph.cli import app
    locked = encrypt_pdf(pdf, tmp_path / "locked.pdf")
    runner = CliRunner()
    result = runner.invoke(app, ["kb", "ingest", "papers", "attention", str(locked), "reading-list",
                                 "--arxiv-url", arxiv.url, "--json"])
    assert result.exit_code == 0, result.output
    summaries = {s["source"]: s for s in json.loads(result.stdout)}
    assert summaries["papers:attention"]["added"] == 1
    assert summaries[f"papers:{locked.resolve()}"]["skipped"][0]["reason"] == "encrypted PDF"
    assert summaries["papers:reading-list"]["added"] == len(reading_list())

    result = runner.invoke(app, ["kb", "query", "running maximum and running sum per thread", "-k", "3",
                                 "--kind", "paper", "--json"])
    assert result.exit_code == 0, result.output
    top = json.loads(result.stdout)[0]
    assert (top["paper_id"], top["section"]) == ("2401.00001v2", "2 Method")

    again = runner.invoke(app, ["kb", "ingest", "papers", "attention", "--arxiv-url", arxiv.url, "--json"])
    assert json.loads(again.stdout)[0]["unchanged"] == 1
