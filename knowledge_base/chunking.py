"""Chunks: the unit the knowledge base stores, and how files become chunks.

A chunk's id derives from its origin and its text, so ingesting the same thing twice yields the same ids (nothing
added) and a changed file yields new ids (its old chunks are replaced). C and C++ are cut along functions with
tree-sitter: a function is one chunk (long ones are split into parts), and the code between functions (types,
macros, globals) is grouped into windows. Markdown is cut along headings, other text into line windows.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..sources import MAX_FILE_BYTES

KINDS = ("paper", "fork-diff", "fork-code", "backend-gap", "doc")

# tree-sitter grammar per extension. CUDA, Metal and GLSL parse well enough as C++/C for finding functions.
C_EXTENSIONS = {".c", ".h", ".m", ".comp", ".glsl"}
CPP_EXTENSIONS = {".cpp", ".cc", ".cxx", ".hpp", ".hh", ".hxx", ".cu", ".cuh", ".metal", ".inc", ".mm"}
CODE_EXTENSIONS = C_EXTENSIONS | CPP_EXTENSIONS
TEXT_EXTENSIONS = {".md", ".txt", ".rst", ".py", ".cmake", ".sh", ".toml", ".yaml", ".yml"}
MAX_CHUNK_LINES = 120   # a function longer than this is split; MiniLM reads only the first ~256 tokens anyway
WINDOW_LINES = 60


@dataclass(frozen=True)
class Chunk:
    """One searchable piece, with where it came from (precise enough to cite and open)."""
    text: str
    kind: str
    unit: str                     # the replaceable unit it belongs to: one file, diff, commit or paper
    origin: dict[str, Any] = field(default_factory=dict)  # repo, revision, path, start_line, end_line, symbol...

    @property
    def id(self) -> str:
        key = json.dumps({"unit": self.unit, "kind": self.kind, "origin": self.origin}, sort_keys=True)
        return hashlib.sha256(f"{key}\0{self.text}".encode()).hexdigest()[:32]

    def metadata(self, source: str) -> dict[str, Any]:
        # Chroma accepts only scalar metadata and no None.
        meta = {"kind": self.kind, "unit": self.unit, "source": source}
        meta.update({k: v for k, v in self.origin.items() if v is not None and v != ""})
        return meta


@dataclass(frozen=True)
class Skipped:
    """A file or item that was not ingested, and why (reported in the summary)."""
    unit: str
    reason: str


@dataclass(frozen=True)
class Unit:
    """All chunks of one replaceable unit; ingesting it replaces whatever that unit held before."""
    key: str
    chunks: list[Chunk]


def read_text_file(path: Path, max_bytes: int = MAX_FILE_BYTES) -> str | Skipped:
    """The file's text, or why it is skipped (binary, too large, unreadable, not a regular file)."""
    try:
        # Non-blocking, and checked on the open file: a FIFO or device named like a source never hangs or
        # streams, and a file grown since any earlier look is still read no further than the cap.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                return Skipped(str(path), "not a regular file")
            if st.st_size > max_bytes:
                return Skipped(str(path), f"larger than {max_bytes // 2**20} MiB ({st.st_size / 2**20:.1f} MiB)")
            data = f.read(max_bytes + 1)
    except OSError as e:
        return Skipped(str(path), f"unreadable: {e.strerror or e}")
    if len(data) > max_bytes:
        return Skipped(str(path), f"larger than {max_bytes // (1024 * 1024)} MiB")
    if b"\0" in data[:8192]:
        return Skipped(str(path), "binary file")
    return data.decode("utf-8", errors="replace")


# -- C / C++ ---------------------------------------------------------------------------------------------------

@lru_cache(maxsize=2)
def c_parser(cpp: bool):
    # Imported here: nothing loads a grammar at import time.
    import tree_sitter
    import tree_sitter_c
    import tree_sitter_cpp
    lang = tree_sitter.Language(tree_sitter_cpp.language() if cpp else tree_sitter_c.language())
    return tree_sitter.Parser(lang)


@dataclass(frozen=True)
class FunctionSpan:
    name: str
    start_line: int  # 1-based, inclusive
    end_line: int


def declarator_name(node, *, types: bool = False) -> str:
    """The declared name under a declarator (through pointers, references, arrays, qualifiers); `types` also
    takes a type name (a typedef's, a struct's), as the porting engine needs for the tables it brings along."""
    kinds = ("identifier", "field_identifier", "qualified_identifier", "destructor_name", "operator_name",
             "template_function") + (("type_identifier",) if types else ())
    leaves = ("identifier", "qualified_identifier", "field_identifier") + (("type_identifier",) if types else ())
    while node is not None:
        if node.type in kinds:
            return node.text.decode("utf-8", "replace")
        inner = node.child_by_field_name("declarator")
        if inner is None:
            for child in node.children:
                if child.type in leaves:
                    return child.text.decode("utf-8", "replace")
            return ""
        node = inner
    return ""


def function_spans(text: str, suffix: str) -> list[FunctionSpan]:
    """Every function definition in a C/C++ source, in order (also those inside namespaces, classes, #ifdefs)."""
    parser = c_parser(suffix.lower() in CPP_EXTENSIONS)
    tree = parser.parse(text.encode("utf-8", "replace"))
    spans: list[FunctionSpan] = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == "function_definition":
            outer = node.parent if node.parent is not None and node.parent.type == "template_declaration" else node
            name = declarator_name(node.child_by_field_name("declarator"))
            spans.append(FunctionSpan(name or "<anonymous>", outer.start_point[0] + 1, outer.end_point[0] + 1))
            continue  # lambdas and local classes stay inside their function's chunk
        stack.extend(reversed(node.children))
    spans.sort(key=lambda s: s.start_line)
    return spans


def symbol_at(spans: list[FunctionSpan], line: int) -> str:
    for span in spans:
        if span.start_line <= line <= span.end_line:
            return span.name
    return ""


def _header(origin: dict[str, Any]) -> str:
    """A first line naming repo, path, lines and symbol: both the embedder and the lexical index see it."""
    where = f"{origin.get('path', '')}:{origin.get('start_line', '')}-{origin.get('end_line', '')}"
    symbol = f" {origin['symbol']}" if origin.get("symbol") else ""
    return f"// {origin.get('repo', '')} {where}{symbol}\n"


def _line_pieces(start: int, end: int, max_lines: int) -> list[tuple[int, int]]:
    return [(s, min(s + max_lines - 1, end)) for s in range(start, end + 1, max_lines)]


def chunk_code(text: str, *, path: str, kind: str, unit: str, repo: str = "", revision: str = "",
               max_lines: int = MAX_CHUNK_LINES) -> list[Chunk]:
    """A C/C++ file as chunks: one per function (long ones in parts), the rest in windows between them."""
    lines = text.splitlines()
    spans = function_spans(text, Path(path).suffix)
    pieces: list[tuple[int, int, str]] = []
    cursor = 1
    for span in spans:
        if span.start_line < cursor:  # a nested definition already covered (e.g. inside a class body)
            continue
        if span.end_line - span.start_line < 2:
            continue  # one-liners (and GLSL blocks that parse as functions) read better with their neighbours
        if span.start_line > cursor:
            pieces += [(s, e, "") for s, e in _line_pieces(cursor, span.start_line - 1, WINDOW_LINES)]
        parts = _line_pieces(span.start_line, span.end_line, max_lines)
        for i, (s, e) in enumerate(parts):
            pieces.append((s, e, span.name if len(parts) == 1 else f"{span.name} (part {i + 1}/{len(parts)})"))
        cursor = span.end_line + 1
    if cursor <= len(lines):
        pieces += [(s, e, "") for s, e in _line_pieces(cursor, len(lines), WINDOW_LINES)]
    chunks = []
    for start, end, symbol in pieces:
        body = "\n".join(lines[start - 1:end])
        if not symbol and sum(1 for ln in lines[start - 1:end] if ln.strip()) < 3:
            continue  # blank lines and lone includes between functions say nothing on their own
        origin = {"repo": repo, "revision": revision, "path": path, "start_line": start, "end_line": end,
                  "symbol": symbol.split(" (part")[0] if symbol else "", "part": symbol if "(part" in symbol else ""}
        chunks.append(Chunk(_header({**origin, "symbol": symbol}) + body, kind, unit, origin))
    return chunks


# -- text ------------------------------------------------------------------------------------------------------

_MD_HEADING = re.compile(r"^#{1,4}\s+\S")


def chunk_text(text: str, *, path: str, kind: str, unit: str, repo: str = "", revision: str = "",
               extra: dict[str, Any] | None = None, markdown: bool | None = None) -> list[Chunk]:
    """Markdown along its headings; other text in line windows. Each chunk names its section."""
    lines = text.splitlines()
    is_md = path.lower().endswith(".md") if markdown is None else markdown
    sections: list[tuple[int, int, str]] = []
    if is_md:
        starts = [i for i, ln in enumerate(lines) if _MD_HEADING.match(ln)] or [0]
        if starts[0] != 0:
            starts.insert(0, 0)
        for a, b in zip(starts, starts[1:] + [len(lines)]):
            title = lines[a].lstrip("#").strip() if _MD_HEADING.match(lines[a]) else ""
            for s, e in _line_pieces(a + 1, b, WINDOW_LINES):
                sections.append((s, e, title))
    else:
        sections = [(s, e, "") for s, e in _line_pieces(1, len(lines), WINDOW_LINES)]
    chunks = []
    for start, end, section in sections:
        body = "\n".join(lines[start - 1:end]).strip()
        if len(body) < 20:
            continue
        origin = {"repo": repo, "revision": revision, "path": path, "start_line": start, "end_line": end,
                  "section": section, **(extra or {})}
        head = f"{path} — {section}\n" if section else f"{path}\n"
        chunks.append(Chunk(head + body, kind, unit, origin))
    return chunks


def chunk_file(path: Path, rel: str, *, kind: str, unit: str, repo: str = "", revision: str = "") -> Unit | Skipped:
    """One file as a unit: code by function, text by section; anything else is skipped with its reason."""
    suffix = path.suffix.lower()
    if suffix not in CODE_EXTENSIONS and suffix not in TEXT_EXTENSIONS:
        return Skipped(unit, f"not a source or text file ({suffix or 'no extension'})")
    text = read_text_file(path)
    if isinstance(text, Skipped):
        return Skipped(unit, text.reason)
    if suffix in CODE_EXTENSIONS:
        chunks = chunk_code(text, path=rel, kind=kind, unit=unit, repo=repo, revision=revision)
    else:
        chunks = chunk_text(text, path=rel, kind=kind, unit=unit, repo=repo, revision=revision)
    return Unit(unit, chunks)
