"""Chunks: the unit the knowledge base stores, and how files become chunks.

A chunk's id derives from its origin and its text, so ingesting the same thing twice yields the same ids (nothing
added) and a changed file yields new ids (its old chunks are replaced). Source code is cut along functions with
tree-sitter: a function is one chunk (long ones are split into parts), and the code between functions (types,
macros, globals) is grouped into windows. C and C++ use their own grammars; the other languages (GRAMMARS) use
tree-sitter-language-pack; a language without a grammar is cut into line windows, never dropped. Markdown is cut
along headings, other text into line windows.
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
    """Every function definition in a source, in order: C/C++ (also inside namespaces, classes, #ifdefs), and
    every language of GRAMMARS (methods named by their class, nested functions by their enclosing one). A suffix
    without a grammar has no spans: its file is cut into line windows."""
    if suffix.lower() not in C_EXTENSIONS | CPP_EXTENSIONS:
        grammar = GRAMMARS.get(suffix.lower())
        return _grammar_spans(text, grammar) if grammar else []
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


# -- other languages: tree-sitter-language-pack --------------------------------------------------------------

@dataclass(frozen=True)
class Grammar:
    """How to find functions in one language: the grammar's name in tree-sitter-language-pack, the node types
    that define a function, those whose name qualifies the functions inside (classes, impls), and those that
    wrap a definition and belong to its span (decorators, `export`)."""
    name: str
    functions: frozenset[str]
    containers: frozenset[str] = frozenset()
    wrappers: frozenset[str] = frozenset()


def _grammar(name: str, functions: str, containers: str = "", wrappers: str = "") -> Grammar:
    return Grammar(name, frozenset(functions.split()), frozenset(containers.split()), frozenset(wrappers.split()))


# `variable_declarator` is a function only when it holds one (`const f = () => ...`): see _function_name.
_JS = ("function_declaration generator_function_declaration method_definition variable_declarator",
       "class_declaration class abstract_class_declaration", "export_statement")
_PYTHON = _grammar("python", "function_definition", "class_definition", "decorated_definition")
_RUST = _grammar("rust", "function_item", "impl_item trait_item")
_GO = _grammar("go", "function_declaration method_declaration")
_JAVA = _grammar("java", "method_declaration constructor_declaration",
                 "class_declaration interface_declaration enum_declaration record_declaration")
GRAMMARS: dict[str, Grammar] = {
    ".py": _PYTHON, ".pyi": _PYTHON, ".rs": _RUST, ".go": _GO, ".java": _JAVA,
    ".js": _grammar("javascript", *_JS), ".mjs": _grammar("javascript", *_JS), ".cjs": _grammar("javascript", *_JS),
    ".jsx": _grammar("javascript", *_JS), ".ts": _grammar("typescript", *_JS), ".tsx": _grammar("tsx", *_JS),
}
_FUNCTION_VALUES = {"arrow_function", "function_expression", "function", "generator_function"}


def has_grammar(suffix: str) -> bool:
    """Whether files with this suffix are cut along their functions (else into line windows)."""
    return suffix.lower() in CODE_EXTENSIONS or suffix.lower() in GRAMMARS


@lru_cache(maxsize=16)
def grammar_parser(name: str):
    """A tree-sitter parser for one language of tree-sitter-language-pack (grammars ship compiled in the wheel:
    nothing is downloaded); None when the pack cannot give it, and the file is then cut into line windows."""
    try:
        from tree_sitter_language_pack import get_parser
        return get_parser(name)
    except (ImportError, LookupError, ValueError, OSError):
        return None


def _node_text(node) -> str:
    return node.text.decode("utf-8", "replace") if node is not None else ""


def _bare_type(text: str) -> str:
    """`*Foo[T]`, `Foo<T>`, `&mut Foo` -> `Foo`: the type a method belongs to."""
    text = text.split("<")[0].split("[")[0]
    return text.replace("&", " ").replace("*", " ").replace("mut ", " ").split()[-1] if text.strip() else ""


def _function_name(node) -> str | None:
    """The name of the function `node` defines, or None when it defines none (a variable holding no function)."""
    if node.type == "variable_declarator":
        value = node.child_by_field_name("value")
        return _node_text(node.child_by_field_name("name")) if value is not None and \
            value.type in _FUNCTION_VALUES else None
    name = _node_text(node.child_by_field_name("name"))
    receiver = node.child_by_field_name("receiver")  # Go: func (r *Foo) M() is Foo.M
    if receiver is not None:
        param = next((c for c in receiver.named_children if c.type == "parameter_declaration"), None)
        owner = _bare_type(_node_text(param.child_by_field_name("type"))) if param is not None else ""
        return f"{owner}.{name}" if owner else name
    return name


def _container_name(node) -> str:
    named = node.child_by_field_name("name") or node.child_by_field_name("type")
    return _bare_type(_node_text(named)) if named is not None else ""


def _outer(node, grammar: Grammar):
    """The node whose lines a definition spans: with its decorators or `export`, and a `const f = () => ...`
    with its `const`."""
    outer = node
    if node.type == "variable_declarator" and node.parent is not None and len(node.parent.named_children) == 1:
        outer = node.parent
    while outer.parent is not None and outer.parent.type in grammar.wrappers:
        outer = outer.parent
    return outer


def _grammar_spans(text: str, grammar: Grammar) -> list[FunctionSpan]:
    parser = grammar_parser(grammar.name)
    if parser is None:
        return []
    tree = parser.parse(text.encode("utf-8", "replace"))
    spans: list[FunctionSpan] = []
    stack: list[tuple[Any, str]] = [(tree.root_node, "")]
    while stack:
        node, prefix = stack.pop()
        inner = prefix
        if node.type in grammar.functions:
            name = _function_name(node)
            if name is not None:
                outer = _outer(node, grammar)
                inner = f"{prefix}{name or '<anonymous>'}."
                spans.append(FunctionSpan(inner[:-1], outer.start_point[0] + 1, outer.end_point[0] + 1))
        elif node.type in grammar.containers:
            owner = _container_name(node)
            inner = f"{prefix}{owner}." if owner else prefix
        stack.extend((child, inner) for child in reversed(node.children))
    spans.sort(key=lambda s: s.start_line)
    return spans


def symbol_at(spans: list[FunctionSpan], line: int) -> str:
    """The innermost function holding `line` (spans are sorted by start: the last that holds it)."""
    name = ""
    for span in spans:
        if span.start_line > line:
            break
        if line <= span.end_line:
            name = span.name
    return name


def _header(origin: dict[str, Any]) -> str:
    """A first line naming repo, path, lines and symbol: both the embedder and the lexical index see it."""
    where = f"{origin.get('path', '')}:{origin.get('start_line', '')}-{origin.get('end_line', '')}"
    symbol = f" {origin['symbol']}" if origin.get("symbol") else ""
    return f"// {origin.get('repo', '')} {where}{symbol}\n"


def _line_pieces(start: int, end: int, max_lines: int) -> list[tuple[int, int]]:
    return [(s, min(s + max_lines - 1, end)) for s in range(start, end + 1, max_lines)]


def chunk_code(text: str, *, path: str, kind: str, unit: str, repo: str = "", revision: str = "",
               max_lines: int = MAX_CHUNK_LINES) -> list[Chunk]:
    """A source file as chunks: one per function (long ones in parts), the rest in windows between them (the
    whole file in windows when its language has no grammar)."""
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
    if not has_grammar(suffix) and suffix not in TEXT_EXTENSIONS:
        return Skipped(unit, f"not a source or text file ({suffix or 'no extension'})")
    text = read_text_file(path)
    if isinstance(text, Skipped):
        return Skipped(unit, text.reason)
    if has_grammar(suffix):
        chunks = chunk_code(text, path=rel, kind=kind, unit=unit, repo=repo, revision=revision)
    else:
        chunks = chunk_text(text, path=rel, kind=kind, unit=unit, repo=repo, revision=revision)
    return Unit(unit, chunks)
