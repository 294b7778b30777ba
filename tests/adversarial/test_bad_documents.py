"""Issue 28 item 7: one bad PDF must not end an ingestion. A folder given to `kb ingest path` holds two good text
files, a good PDF and hostile ones (a FlateDecode stream that inflates past pypdf's limit, a stream declaring an
enormous /Length, arrays nested deeper than Python recurses, a truncated PDF, garbage); the real CLI must ingest the
good ones, name each bad one as skipped with its reason, and print no traceback."""

from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kb_conftest_helpers import PAPER_PAGES, make_pdf, pdf_bytes  # noqa: E402

from readfirst.knowledge_base.chunking import Skipped  # noqa: E402
from readfirst.knowledge_base.papers import pdf_text  # noqa: E402

from .helpers import readfirst_cli  # noqa: E402


def _one_page(stream_dict: bytes, content: bytes) -> bytes:
    return pdf_bytes([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>",
                       b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
                       b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 5 0 R "
                       b"/Resources << /Font << /F1 3 0 R >> >> >>",
                       stream_dict + b"\nstream\n" + content + b"\nendstream"])


def _bomb() -> bytes:
    """About 100 KB that inflate to 100 MB of page content."""
    packed = zlib.compress(b"BT /F1 10 Tf 40 760 Td (boom) Tj ET " + b" " * 100_000_000, 9)
    return _one_page(f"<< /Length {len(packed)} /Filter /FlateDecode >>".encode(), packed)


def _nested() -> bytes:
    content = b"BT /F1 10 Tf 40 760 Td " + b"[" * 50_000 + b"(x)" + b"]" * 50_000 + b" TJ ET"
    return _one_page(f"<< /Length {len(content)} >>".encode(), content)


BAD = {
    "bomb.pdf": _bomb,
    "huge-length.pdf": lambda: _one_page(b"<< /Length 99999999999 >>", b"BT /F1 10 Tf 40 760 Td (big) Tj ET"),
    "nested.pdf": _nested,
    "truncated.pdf": lambda: _one_page(b"<< /Length 34 >>", b"BT /F1 10 Tf 40 760 Td (cut) Tj ET")[:300],
    "garbage.pdf": lambda: b"%PDF-1.7\n" + bytes(range(256)) * 40,
}


def _folder(root: Path) -> Path:
    folder = root / "papers"
    folder.mkdir()
    (folder / "tiling.md").write_text("# Tiling\n\nKeep the score tile resident in L2 across the key loop.\n")
    (folder / "threads.txt").write_text("Pin one worker per physical core; hyper-threads share the FMA units.\n")
    make_pdf(folder / "good.pdf", PAPER_PAGES)
    for name, make in BAD.items():
        (folder / name).write_bytes(make())
    return folder


@pytest.mark.chroma
def test_bad_pdfs_are_skipped_with_reasons_and_the_rest_is_ingested(attack):
    folder = _folder(attack.root)
    home = attack.root / "home"
    proc = readfirst_cli(home, "kb", "ingest", "path", str(folder), "--json")
    if proc.returncode != 0 or "Traceback" in proc.stderr:
        attack.escaped(f"one bad PDF ended the ingestion:\n{proc.stderr[-2500:]}")
    [result] = json.loads(proc.stdout)
    skipped = {s["unit"].rsplit("/", 1)[-1]: s["reason"] for s in result["skipped"]}
    assert set(skipped) == set(BAD), skipped
    assert "limit" in skipped["bomb.pdf"].lower() and "length" in skipped["huge-length.pdf"].lower(), skipped
    assert all(reason.startswith("unreadable PDF (") for reason in skipped.values()), skipped
    assert result["added"] == 3, result
    hits = json.loads(readfirst_cli(home, "kb", "query", "score tile resident in L2", "--json").stdout)
    assert any(h["path"].endswith("tiling.md") for h in hits), hits


def test_extracted_text_is_capped(tmp_path):
    data = make_pdf(tmp_path / "good.pdf", PAPER_PAGES).read_bytes()
    assert isinstance(pdf_text(data), str)
    capped = pdf_text(data, max_chars=100)
    assert isinstance(capped, Skipped) and "more than 100 characters" in capped.reason, capped
