"""Papers: arXiv search and fetch (the `arxiv` package), local PDF, markdown and text, chunked along sections.

The arXiv endpoint is configurable (`base_url`), which is how tests point the real client at a local server. A
paper whose PDF cannot be had is still ingested from its abstract, and the summary says so.
"""

from __future__ import annotations

import io
import re
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .chunking import Chunk, Skipped, Unit, chunk_text, read_text_file

ARXIV_ID = re.compile(r"^(?:arxiv:)?(\d{4}\.\d{4,5}(?:v\d+)?|[a-z-]+(?:\.[A-Z]{2})?/\d{7}(?:v\d+)?)$", re.I)
_SECTION = re.compile(r"^(?:(\d+(?:\.\d+)*)\.?\s+([A-Z][^\n]{2,80})|(Abstract|Introduction|Background|Related Work|"
                      r"Conclusions?|Discussion|Evaluation|Experiments|Method|Methods|Results|Appendix))\s*$")
_END = re.compile(r"^(References|Bibliography|Acknowledge?ments)\s*$", re.I)
MAX_PDF_BYTES = 50 * 1024 * 1024
MAX_TEXT_CHARS = 4_000_000  # about 1,500 pages of prose: more is no paper, and would fill the store
CHUNK_CHARS = 1200   # about the 256 word pieces MiniLM reads


@dataclass(frozen=True)
class Paper:
    paper_id: str
    title: str
    abstract: str = ""
    url: str = ""
    pdf_url: str = ""


def pdf_text(data: bytes, *, max_chars: int = MAX_TEXT_CHARS) -> str | Skipped:
    """The text of a PDF, page by page, or why it cannot be read (encrypted, damaged, no text layer, too much
    text). A PDF is hostile input: whatever its parser raises (pypdf's LimitReachedError for a decompression bomb
    or a huge /Length, a RecursionError on nesting, a bug of its own) skips this document, not the ingestion."""
    from pypdf import PdfReader
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            return Skipped("", "encrypted PDF")
        pages: list[str] = []
        total = 0
        for page in reader.pages:
            pages.append(page.extract_text() or "")
            total += len(pages[-1])
            if total > max_chars:
                return Skipped("", f"more than {max_chars:,} characters of text")
    except Exception as e:  # noqa: BLE001 - see above; KeyboardInterrupt still ends the ingestion
        return Skipped("", f"unreadable PDF ({type(e).__name__}: {str(e)[:120]})")
    text = "\n".join(pages)
    if not text.strip():
        return Skipped("", "PDF has no text layer (scanned?)")
    return text


def sections(text: str) -> list[tuple[str, str]]:
    """(section title, body) pairs along numbered or named headings; the reference list is dropped."""
    current, body, out = "front matter", [], []
    for line in text.splitlines():
        stripped = line.strip()
        if _END.match(stripped):
            break
        m = _SECTION.match(stripped)
        if m:
            if "".join(body).strip():
                out.append((current, "\n".join(body)))
            current = stripped if m.group(1) is None else f"{m.group(1)} {m.group(2)}"
            body = []
        else:
            body.append(line)
    if "".join(body).strip():
        out.append((current, "\n".join(body)))
    return out


def paper_chunks(text: str, *, paper_id: str, title: str, unit: str, url: str = "", path: str = "") -> list[Chunk]:
    """Section by section, each cut into paragraphs of about CHUNK_CHARS; every chunk names paper and section."""
    chunks = []
    for section, body in sections(text):
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", body) if p.strip()] or [body]
        piece = ""
        part = 0
        for para in paragraphs + [None]:
            if para is not None and len(piece) + len(para) < CHUNK_CHARS:
                piece = f"{piece}\n{para}" if piece else para
                continue
            if piece.strip():
                part += 1
                origin = {"paper_id": paper_id, "title": title, "section": section, "part": part,
                          "url": url, "path": path}
                chunks.append(Chunk(f"{title} — {section}\n{piece.strip()}", "paper", unit, origin))
            piece = para or ""
            while len(piece) > CHUNK_CHARS * 2:  # a wall of text without blank lines
                part += 1
                origin = {"paper_id": paper_id, "title": title, "section": section, "part": part,
                          "url": url, "path": path}
                chunks.append(Chunk(f"{title} — {section}\n{piece[:CHUNK_CHARS]}", "paper", unit, origin))
                piece = piece[CHUNK_CHARS:]
    return chunks


# -- arXiv -----------------------------------------------------------------------------------------------------

def arxiv_client(base_url: str | None = None, *, delay_seconds: float = 3.0):
    """The real arxiv client; `base_url` (e.g. http://127.0.0.1:PORT) replaces export.arxiv.org."""
    import arxiv
    client = arxiv.Client(page_size=50, delay_seconds=delay_seconds, num_retries=1)
    if base_url:
        client.query_url_format = base_url.rstrip("/") + "/api/query?{}"
    return client


DOCUMENT_SUFFIXES = (".pdf", ".md", ".markdown", ".txt", ".rst")


def missing_document(item: str) -> str | None:
    """Why a papers item that reads as a file path (absolute, ./, ../, ~, or a document suffix) cannot be read,
    when it does not exist: searching arXiv for it would only report a connection error. None otherwise (an
    existing file, an arXiv id such as hep-th/9901001, a query)."""
    named_file = item.lower().endswith(DOCUMENT_SUFFIXES) and not any(c.isspace() for c in item)
    if not (item.startswith(("/", "./", "../", "~")) or named_file) or ARXIV_ID.match(item):
        return None
    local = Path(item).expanduser()
    if local.is_file():
        return None
    return f"no such file: {item}" if not local.exists() else f"{item} is not a file"


def find_papers(client, *, query: str | None = None, ids: list[str] | None = None,
                max_results: int = 5) -> list[Paper]:
    import arxiv
    search = arxiv.Search(query=query or "", id_list=ids or [], max_results=max_results if query else None)
    return [Paper(r.get_short_id(), " ".join(r.title.split()), r.summary.strip(), r.entry_id, r.pdf_url or "")
            for r in client.results(search)]


def download(url: str, *, timeout: float = 60) -> bytes | Skipped:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data = resp.read(MAX_PDF_BYTES + 1)
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        return Skipped(url, f"PDF download failed ({e})")
    if len(data) > MAX_PDF_BYTES:
        return Skipped(url, f"PDF larger than {MAX_PDF_BYTES // 2**20} MiB")
    return data


def arxiv_units(papers: list[Paper], *, source: str, fetch_pdf: bool = True) -> Iterator[Unit | Skipped]:
    """A unit per paper: its full text when the PDF reads, else its abstract (and a skip note saying why)."""
    for paper in papers:
        bare_id = re.sub(r"v\d+$", "", paper.paper_id)
        unit = f"{source}::arxiv:{bare_id}"  # without the version: a new version replaces the old
        text: str | Skipped = Skipped(unit, "no PDF link")
        if fetch_pdf and paper.pdf_url:
            data = download(paper.pdf_url)
            text = data if isinstance(data, Skipped) else pdf_text(data)
        if isinstance(text, Skipped):
            yield Skipped(f"{unit} (full text)", f"{text.reason}; the abstract is indexed instead")
            text = f"Abstract\n{paper.abstract}"
        yield Unit(unit, paper_chunks(text, paper_id=paper.paper_id, title=paper.title, unit=unit, url=paper.url))


# -- local documents and the reading list ------------------------------------------------------------------

def document_unit(path: Path, *, source: str) -> Unit | Skipped:
    """A local PDF, markdown or text file as a unit (kind `paper` for PDFs, `doc` otherwise)."""
    unit = f"{source}::file:{path.resolve()}"
    if not path.is_file():
        return Skipped(unit, "no such file")
    if path.suffix.lower() == ".pdf":
        return _pdf_unit(path, unit)
    text = read_text_file(path)
    if isinstance(text, Skipped):
        return Skipped(unit, text.reason)
    return Unit(unit, chunk_text(text, path=str(path.resolve()), kind="doc", unit=unit,
                                 markdown=path.suffix.lower() == ".md"))


def _pdf_unit(path: Path, unit: str) -> Unit | Skipped:
    try:
        with open(path, "rb") as f:  # one byte past the cap at most, even if the file grows while it is read
            data = f.read(MAX_PDF_BYTES + 1)
    except OSError as e:
        return Skipped(unit, f"unreadable: {e.strerror}")
    if len(data) > MAX_PDF_BYTES:
        return Skipped(unit, f"PDF larger than {MAX_PDF_BYTES // 2**20} MiB")
    text = pdf_text(data)
    if isinstance(text, Skipped):
        return Skipped(unit, text.reason)
    return Unit(unit, paper_chunks(text, paper_id="", title=path.stem, unit=unit, path=str(path.resolve())))


def reading_list() -> list[dict]:
    """The curated reading list shipped with readfirst (knowledge_base/reading_list.toml)."""
    data = tomllib.loads((Path(__file__).parent / "reading_list.toml").read_text())
    return data["paper"]


def reading_list_units(*, source: str) -> Iterator[Unit]:
    """The list's own notes, searchable offline: why each paper matters for CPU inference."""
    for entry in reading_list():
        pid = entry.get("arxiv", "") or entry["title"]
        unit = f"{source}::note:{pid}"
        text = (f"{entry['title']} ({'arXiv ' + entry['arxiv'] if entry.get('arxiv') else entry.get('url', '')})"
                f"\nTopics: {', '.join(entry.get('topics', []))}\n{entry['why']}")
        origin = {"paper_id": entry.get("arxiv", ""), "title": entry["title"], "section": "reading-list note",
                  "url": entry.get("url") or (f"https://arxiv.org/abs/{entry['arxiv']}" if entry.get("arxiv") else "")}
        yield Unit(unit, [Chunk(text, "paper", unit, origin)])
