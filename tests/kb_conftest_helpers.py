"""Helpers for the knowledge-base tests: small git repositories, small PDFs, and a local arXiv API server.

Test modules import these (their directory is put on sys.path by each module). Everything here is real except
arXiv, which is a local HTTP server on 127.0.0.1 speaking arXiv's Atom API, for the real `arxiv` client.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlparse
from xml.sax.saxutils import escape

import pytest

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@localhost"}


@pytest.fixture(scope="session")
def embedder():
    """The embedder that ships (all-MiniLM-L6-v2, ONNX int8), loaded once per session; its export lives in the
    shared cache (made once, in seconds), as the CLI's does."""
    from readfirst.config import Paths
    from readfirst.knowledge_base.embedder import make_embedder
    cache = Paths.resolve(environ={k: v for k, v in os.environ.items() if k != "READFIRST_HOME"}).cache
    return make_embedder(export_dir=cache / "models" / "embeddings")


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=GIT_ENV)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def write_files(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def make_repo(root: Path, files: dict[str, str], message: str = "initial") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "-b", "main")
    write_files(root, files)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)
    return root


def commit(root: Path, files: dict[str, str], message: str) -> str:
    write_files(root, files)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)
    return git(root, "rev-parse", "HEAD")


# -- PDFs ------------------------------------------------------------------------------------------------------

def _pdf_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(path: Path, pages: list[list[str]]) -> Path:
    """A minimal valid PDF with one text line per entry (Helvetica), built by hand: no PDF library writes text."""
    objects: list[bytes] = []
    n_pages = len(pages)
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(n_pages))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n_pages} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for i, lines in enumerate(pages):
        body = "BT /F1 10 Tf 40 760 Td 13 TL " + " ".join(f"({_pdf_escape(ln)}) Tj T*" for ln in lines) + " ET"
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {5 + 2 * i} 0 R "
                       f"/Resources << /Font << /F1 3 0 R >> >> >>".encode())
        objects.append(f"<< /Length {len(body)} >>\nstream\n{body}\nendstream".encode())
    path.write_bytes(pdf_bytes(objects))
    return path


def pdf_bytes(objects: list[bytes]) -> bytes:
    """A PDF file of these objects (numbered from 1; the first is the catalog), with its xref table and trailer."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + obj + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def encrypt_pdf(src: Path, dst: Path, password: str = "secret") -> Path:
    from pypdf import PdfReader, PdfWriter
    writer = PdfWriter(clone_from=PdfReader(src))
    writer.encrypt(password, algorithm="RC4-128")
    with open(dst, "wb") as f:
        writer.write(f)
    return dst


PAPER_PAGES = [
    ["Tiled Attention for Small Caches", "Abstract",
     "We compute attention in tiles that stay resident in the L2 cache of a CPU core.", "",
     "1 Introduction", "Decoding one token at a time reads every weight once, so it is limited by memory bandwidth.",
     "Keeping the score matrix out of main memory removes a second stream of traffic."],
    ["2 Method", "Each thread owns a slice of the key sequence and keeps a running maximum and running sum.",
     "The partial results are merged at the end with a rescaling step, so softmax needs a single pass.", "",
     "3 Evaluation", "On two cores the tiled kernel is faster than the reference kernel for long contexts.",
     "References", "[1] A reference that must not be indexed."],
]


# -- a local arXiv ---------------------------------------------------------------------------------------------

@dataclass
class FakePaper:
    arxiv_id: str       # with version, e.g. 2401.00001v1
    title: str
    summary: str
    pdf: bytes | None = None


@dataclass
class FakeArxiv:
    """arXiv's query API (Atom) and PDF downloads on 127.0.0.1; records the requests it served."""
    papers: list[FakePaper]
    requests: list[str] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def feed(self, query: dict[str, list[str]]) -> str:
        ids = [i for v in query.get("id_list", []) for i in v.split(",") if i]
        words = [w.lower() for w in " ".join(query.get("search_query", [])).replace("all:", " ").split()
                 if w.upper() not in ("AND", "OR")]
        if ids:
            hits = [p for p in self.papers if p.arxiv_id.split("v")[0] in [i.split("v")[0] for i in ids]]
        else:
            hits = [p for p in self.papers if any(w in (p.title + " " + p.summary).lower() for w in words)]
        start = int(query.get("start", ["0"])[0])
        page = hits[start:start + int(query.get("max_results", ["10"])[0])]
        entries = "".join(f"""
  <entry>
    <id>http://arxiv.org/abs/{p.arxiv_id}</id>
    <updated>2024-01-02T00:00:00Z</updated>
    <published>2024-01-01T00:00:00Z</published>
    <title>{escape(p.title)}</title>
    <summary>{escape(p.summary)}</summary>
    <author><name>Test Author</name></author>
    <link href="http://arxiv.org/abs/{p.arxiv_id}" rel="alternate" type="text/html"/>
    <link title="pdf" href="{self.url}/pdf/{p.arxiv_id}" rel="related" type="application/pdf"/>
    <arxiv:primary_category xmlns:arxiv="http://arxiv.org/schemas/atom" term="cs.LG"/>
    <category term="cs.LG" scheme="http://arxiv.org/schemas/atom"/>
  </entry>""" for p in page)
        return f"""<?xml version="1.0" encoding="UTF-8"?>
<feed xmlns="http://www.w3.org/2005/Atom" xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/">
  <id>http://arxiv.org/api/fake</id>
  <title>arXiv Query</title>
  <updated>2024-01-02T00:00:00Z</updated>
  <opensearch:totalResults>{len(hits)}</opensearch:totalResults>
  <opensearch:startIndex>{start}</opensearch:startIndex>
  <opensearch:itemsPerPage>{len(page)}</opensearch:itemsPerPage>{entries}
</feed>"""

    def __enter__(self) -> "FakeArxiv":
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                fake.requests.append(self.path)
                url = urlparse(self.path)
                if url.path == "/api/query":
                    body, ctype, status = fake.feed(parse_qs(url.query)).encode(), "application/atom+xml", 200
                elif url.path.startswith("/pdf/"):
                    paper = next((p for p in fake.papers if p.arxiv_id == url.path[5:]), None)
                    if paper is None or paper.pdf is None:
                        body, ctype, status = b"not found", "text/plain", 404
                    else:
                        body, ctype, status = paper.pdf, "application/pdf", 200
                else:
                    body, ctype, status = b"not found", "text/plain", 404
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
