"""The porting engine: a fork's code moved onto the current best tree, offline, as candidate patches.

Two ways in, both reading the trees themselves (protocols.Tree), not only the knowledge base's snippets:
- **hunks** (fork-diff chunks): anchored in the current file ignoring whitespace, with up to three context lines
  dropped at either end when the whole context does not match (patch's fuzz), and merged three-way with
  `git merge-file` against the tree the hunk was cut from, so that a file changed since (by a kept experiment)
  still takes the hunk, or reports the conflict;
- **functions**: a hot function of the current tree replaced by the fork's definition of the same name, wherever
  the fork keeps it (ik_llama.cpp keeps upstream's `ggml-cpu/ops.cpp` functions in `ggml.c`), with the fork-only
  helpers it needs (static functions, macros, constant tables) brought along: names are resolved where the port
  lands first (the tree's file), then in the fork's file of the definition, then in its other files.

A hunk that deletes a function the fork still defines elsewhere is a move, not a candidate: the function port
stands for it. Every port is parsed once made (tree-sitter): one with a syntax error that neither the tree's file
nor the fork's had is dropped with the parser's line and node, never built. A port whose code, normalized (no
comments, whitespace, parameter names, `struct` before a type...), equals the tree's changes nothing a benchmark
could measure: dropped as "no change". A candidate that cannot be made is a `Dropped` with its reason (no anchor,
conflict, signature differs, needs symbols the tree lacks, moved, does not parse, no change) and the function it
concerns; the run's summary lists them. What can be made may still not build: that is an experiment discarded at
the build gate with the compiler's first error, which costs an incremental rebuild.
"""

from __future__ import annotations

import difflib
import os
import platform
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..knowledge_base.chunking import c_parser, declarator_name, function_spans, symbol_at
from ..protocols import Tree
from ..records import in_paths

CODE_SUFFIXES = {".c", ".h", ".cpp", ".cc", ".hpp", ".cxx", ".inc"}
FORK_SUFFIXES = {".c", ".h", ".cpp", ".cc", ".hpp", ".cxx"}  # CPU code: not CUDA, Metal or shaders
FUZZ = 3                 # context lines that may be dropped at each end of a hunk
MAX_HELPERS = 12         # fork-only definitions one function port may bring along
MAX_PORT_LINES = 1200    # a longer fork function is a rewrite for an LLM, not an offline port
MergeFile = Callable[[str, str, str], tuple[str, int]]

# Names a port may use without the tree defining them: the C library, compiler builtins, SIMD intrinsics and
# predefined macros. Anything else must be in the tree or come along from the fork's file.
_STD = frozenset("""
size_t ssize_t ptrdiff_t intptr_t uintptr_t int8_t int16_t int32_t int64_t uint8_t uint16_t uint32_t uint64_t
bool true false NULL nullptr memcpy memset memmove memcmp malloc calloc realloc free alloca assert abort exit
printf fprintf snprintf sprintf puts stderr stdout fflush strlen strcmp strncmp strcpy strncpy strchr strstr
sqrt sqrtf exp expf exp2f log logf log2f pow powf fabs fabsf fmax fmaxf fmin fminf floor floorf ceil ceilf
round roundf lroundf nearbyintf rintf tanh tanhf erf erff sin sinf cos cosf INFINITY NAN FLT_MAX FLT_MIN
DBL_MAX INT_MAX INT_MIN UINT32_MAX INT32_MAX INT16_MAX INT8_MAX UINT8_MAX UINT16_MAX SIZE_MAX isinf isnan
std min max vector array string atomic_int atomic_fetch_add atomic_load atomic_store thread int_fast32_t
float_t double_t va_list va_start va_end offsetof static_assert _Static_assert alignas alignof restrict
""".split())
_INTRINSIC = re.compile(r"^(_mm\d*_|__m\d+|_cvt|__builtin_|_MM_|__\w+__$|_tzcnt|_lzcnt|_pdep|_pext|_bzhi|"
                        r"v[a-z0-9]+q?_[a-z0-9_]+$|sv[a-z0-9_]+$|__riscv_|vec_|wasm_|__lsx_|__lasx_|_pop)")
# Preprocessor conditions that select code for another CPU than this one (x86-64 or AArch64, as the host).
_ARCH_MACROS = {
    "x86": r"__ARM_NEON|__aarch64__|__ARM_FEATURE_\w+|__arm__|_M_ARM64",
    "arm": r"__AVX\w*__|__SSE\w*__|__F16C__|__FMA__|__x86_64__|_M_X64|__AMX\w*__",
}
_HOST = "arm" if platform.machine().lower() in ("aarch64", "arm64") else "x86"
FOREIGN_ARCH = re.compile(r"\b(" + _ARCH_MACROS[_HOST] + r"|__riscv\w*|__POWER\d+_VECTOR__|__powerpc\w*|"
                          r"__loongarch\w*|__wasm\w*|__s390x__|__VXE\w*__|__mips\w*|__VEC__|__ALTIVEC__)\b")
# Folders that hold another CPU's code (ggml-cpu/arch/arm/): a fork's definition there is not the one to port here.
_ARCH_DIRS = {"x86": r"arm|arm64|aarch64|neon", "arm": r"x86|x86_64|amd64|amx"}
FOREIGN_DIR = re.compile(r"(^|/)(" + _ARCH_DIRS[_HOST] + r"|riscv\w*|rvv|powerpc|ppc\w*|loongarch\w*|s390\w*|"
                         r"wasm\w*|mips\w*)(/|$)", re.I)
_WORD = re.compile(r"\b[A-Za-z_]\w*\b")
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)


@dataclass(frozen=True)
class Candidate:
    """A patch made from fork code: what it ports, from where, and the unified diff against the current tree."""
    how: str                 # "hunk" or "function"
    title: str
    path: str                # the file of the current tree it changes
    symbol: str
    fork: str
    fork_path: str
    patch: str
    changed_lines: int
    helpers: tuple[str, ...] = ()
    chunk: str = ""          # the knowledge-base chunk it comes from, when it comes from one


@dataclass(frozen=True)
class Dropped:
    """A fork change that could not become a candidate, and why."""
    how: str
    what: str
    reason: str              # one of REASONS' keys, then detail
    detail: str = ""
    symbol: str = ""         # the function it concerns, when one: what a user looks for in the run's summary


REASONS = {
    "no anchor": "its upstream side is not in the current file, even ignoring whitespace and with less context",
    "conflict": "a three-way merge with the current file conflicts",
    "signature differs": "the fork's function takes or returns other types (callers would break)",
    "unresolved": "it needs names that neither the tree nor the fork's file defines",
    "ambiguous": "the name is defined in several files of the tree, or otherwise than spelling in several of the "
                 "fork's: which one is compiled here is not known from the text",
    "too large": f"the fork's function is longer than {MAX_PORT_LINES} lines",
    "no file": "the file is not in the current tree",
    "not hot": "the file it changes is not among the target's hot files",
    "moved": "it deletes a function the fork still defines elsewhere: the fork moved it (ported as a function)",
    "does not parse": "the ported file has a syntax error (tree-sitter's) that neither the tree's file nor the "
                      "fork's had",
    "no change": "it differs only in spelling: comments, whitespace, parameter names, `struct`/`enum` before a "
                 "type, redundant parentheses or semicolons",
}
MIN_ANCHOR_LINES = 2     # lines of real code (not braces or blanks) an anchor must match, after any fuzz


# -- parsing ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Definition:
    """A top-level definition in a C/C++ file: a function, a macro, or a declaration (a constant table, a type)."""
    name: str
    kind: str                # "function", "macro", "declaration"
    start: int               # character offsets into the file's text (the whole lines it covers)
    end: int
    text: str


def _norm(text: str) -> str:
    return re.sub(r"\s+", "", re.sub(r"\bstruct\b|\bconst\b\s*$", "", text))


def _base_identifier(node) -> str:
    return declarator_name(node, types=True)


def _dead(node, known: frozenset[str] | set[str]) -> bool:
    """Whether an #if/#ifdef branch is never compiled here: it selects another CPU's code, or it needs a macro
    that nothing in the tree mentions (ik_llama.cpp's `#if GGML_USE_IQK_MULMAT` is undefined upstream). An
    #ifndef or a negated condition is compiled, so it counts."""
    cond = node.child_by_field_name("condition") or node.child_by_field_name("name")
    if cond is None:
        return False
    text = cond.text.decode("utf-8", "replace")
    if FOREIGN_ARCH.search(text):
        return True
    if "!" in text or node.children and node.children[0].type == "#ifndef":
        return False
    words = [w for w in _WORD.findall(text) if w != "defined"]
    return bool(words) and all(w not in known and not _std(w) for w in words)


def _uses(node, known: frozenset[str] | set[str] = frozenset()) -> frozenset[str]:
    used: set[str] = set()
    declared: set[str] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n.type in ("preproc_if", "preproc_ifdef", "preproc_elif", "preproc_elifdef"):
            if _dead(n, known):
                # Not compiled here (and tree-sitter reads other CPUs' vector types badly): only the #elif or
                # #else that follows counts.
                alt = n.child_by_field_name("alternative")
                if alt is not None:
                    stack.append(alt)
                continue
        if n.type in ("identifier", "type_identifier"):
            used.add(n.text.decode("utf-8", "replace"))
        elif n.type in ("declaration", "parameter_declaration", "field_declaration"):
            for d in n.children_by_field_name("declarator"):
                declared.add(_base_identifier(d))
        elif n.type == "preproc_def" or n.type == "preproc_function_def":
            name = n.child_by_field_name("name")
            if name is not None:
                declared.add(name.text.decode())
            params, body = n.child_by_field_name("parameters"), n.child_by_field_name("value")
            if params is not None and body is not None:
                # A function-like macro's parameters are its own, not names the tree must have (ROTL(x, r)).
                own = set(_WORD.findall(params.text.decode("utf-8", "replace")))
                used.update(w for w in _WORD.findall(body.text.decode("utf-8", "replace")) if w not in own)
                continue
        elif n.type == "preproc_arg":  # a macro's body is text to tree-sitter: read its words
            used.update(_WORD.findall(n.text.decode("utf-8", "replace")))
        elif n.type == "field_identifier":
            continue
        stack.extend(n.children)
    return frozenset(used - declared)


_QUALIFIERS = re.compile(r"\b(static|inline|extern|GGML_API|GGML_CALL|GGML_INLINE|restrict|__restrict__|__restrict|"
                         r"GGML_RESTRICT|struct|enum|__attribute__\s*\(\(.*?\)\)|GGML_UNUSED_ATTR|constexpr)\b")


def signature(text: str, name: str) -> tuple[str, ...]:
    """A function definition's return type and parameter types, spelled without names, qualifiers that do not
    change the type (static, inline, restrict and their macros), or whitespace. Read from the text: tree-sitter
    does not know ggml's macros (GGML_RESTRICT) and mis-parses declarators that use them."""
    head = _COMMENT.sub("", text)
    m = re.search(rf"\b{re.escape(name.split('::')[-1])}\s*\(", head)
    if m is None:
        return ()
    depth, i = 0, m.end() - 1
    for i in range(m.end() - 1, len(head)):
        depth += {"(": 1, ")": -1}.get(head[i], 0)
        if depth == 0:
            break
    params = head[m.end():i]
    parts, depth, cur = [], 0, ""
    for ch in params:
        depth += {"(": 1, "[": 1, "<": 1, ")": -1, "]": -1, ">": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    out = [_norm(_QUALIFIERS.sub(" ", head[:m.start()]))]
    for p in parts:
        p = _QUALIFIERS.sub(" ", p.split("=")[0]).strip()  # a C++ default argument is not part of the type
        words = p.replace("*", " * ").replace("&", " & ").split()
        if len(words) > 1 and re.fullmatch(r"[A-Za-z_]\w*", words[-1]) and words[-1] not in ("void",):
            words = words[:-1]  # the parameter's name
        out.append("".join(words))
    return tuple(out)


def uses(text: str, path: str, known: frozenset[str] | set[str] = frozenset()) -> frozenset[str]:
    """The identifiers a definition uses and does not declare itself (its locals, parameters, own macros), in
    the code that is compiled here (`known`: the names the tree has, which decide what an #if selects)."""
    tree = c_parser(Path(path).suffix.lower() != ".c").parse(text.encode("utf-8", "replace"))
    return _uses(tree.root_node, known)


@lru_cache(maxsize=64)
def _definitions_cached(text: str, cpp: bool) -> tuple[Definition, ...]:
    return _definitions_of(c_parser(cpp).parse(text.encode("utf-8", "replace")), text)


def _definitions_of(tree, text: str) -> tuple[Definition, ...]:
    """The top-level definitions of `text` as tree-sitter parsed it (`tree`)."""
    # tree-sitter counts bytes; definitions are cut at whole lines, so its row numbers are all that is needed.
    starts = [0]
    for m in re.finditer("\n", text):
        starts.append(m.end())
    starts.append(len(text))

    def lines_of(node) -> tuple[int, int]:
        last = node.end_point[0]
        if node.end_point[1] == 0 and last > node.start_point[0]:
            # A node that ends with its newline (a #define, an #include) ends at column 0 of the next line: that
            # line is not its own (it was the function below a macro, or the #endif that closes it).
            last -= 1
        return starts[node.start_point[0]], starts[min(last + 1, len(starts) - 1)]

    out: list[Definition] = []
    stack = list(reversed(tree.root_node.children))
    while stack:
        node = stack.pop()
        kind = node.type
        if kind in ("preproc_if", "preproc_ifdef", "preproc_else", "preproc_elif", "linkage_specification",
                    "declaration_list", "namespace_definition", "preproc_elifdef"):
            stack.extend(reversed(node.children))  # definitions under #if and extern "C" are still top level
            continue
        outer = node
        if kind == "template_declaration":
            inner = next((c for c in node.children if c.type == "function_definition"), None)
            if inner is None:
                continue
            node, kind = inner, "function_definition"
        start, end = lines_of(outer)
        if kind == "function_definition":
            name = _base_identifier(node.child_by_field_name("declarator"))
            if name:
                out.append(Definition(name, "function", start, end, text[start:end]))
        elif kind in ("preproc_def", "preproc_function_def"):
            name = node.child_by_field_name("name")
            if name is not None:
                out.append(Definition(name.text.decode(), "macro", start, end, text[start:end]))
        elif kind in ("declaration", "type_definition", "struct_specifier", "enum_specifier"):
            names = [_base_identifier(d) for d in node.children_by_field_name("declarator")]
            if kind in ("struct_specifier", "enum_specifier") or not any(names):
                tag = node.child_by_field_name("name")
                names = [tag.text.decode()] if tag is not None else []
            for name in filter(None, names):
                out.append(Definition(name, "declaration", start, end, text[start:end]))
    return tuple(out)


def definitions(text: str, path: str) -> tuple[Definition, ...]:
    """The top-level definitions of a C/C++ file, in order."""
    suffix = Path(path).suffix.lower()
    return _definitions_cached(text, suffix not in (".c",))


def _is_code(path: str) -> bool:
    return Path(path).suffix.lower() in CODE_SUFFIXES


def _std(name: str) -> bool:
    return name in _STD or bool(_INTRINSIC.match(name))


# -- checks on a made port: it parses, and it changes something ---------------------------------------------------

def _cpp(path: str) -> bool:
    return Path(path).suffix.lower() != ".c"


@lru_cache(maxsize=16)
def _parsed(text: str, cpp: bool):
    # The tree's file is parsed once for all the ports into it.
    return c_parser(cpp).parse(text.encode("utf-8", "replace"))


def _parse(text: str, path: str):
    """`text` parsed in its path's grammar, not cached (a ported file is read once; a big file's tree holds tens
    of MB)."""
    return c_parser(_cpp(path)).parse(text.encode("utf-8", "replace"))


def _syntax_errors(text: str, path: str, tree=None) -> list[tuple[str, str]]:
    """tree-sitter's ERROR and MISSING nodes in the file, in order: (what identifies it wherever it stands, where
    and what it is). A MISSING node is identified by the line it is missing from, an ERROR by its text. `tree`:
    the text already parsed; without it the parse is cached (the tree's files and the fork's are read again for
    every port into them)."""
    root = (tree if tree is not None else _parsed(text, _cpp(path))).root_node
    lines = text.split("\n")
    out: list[tuple[str, str]] = []
    stack = [root] if root.has_error else []
    while stack:
        node = stack.pop()
        row = node.start_point[0]
        if node.is_missing:
            line = " ".join(lines[row].split()) if row < len(lines) else ""
            out.append((f"missing {node.type} in {line}", f"line {row + 1}: missing `{node.type}`"))
        elif node.type == "ERROR":
            said = " ".join(node.text.decode("utf-8", "replace").split())
            out.append((f"ERROR {said[:400]}", f"line {row + 1}: ERROR at `{said[:60]}`"))
        else:
            stack.extend(reversed([c for c in node.children if c.has_error]))
    return out


def parse_problem(path: str, before: str, after: str, sources: Sequence[tuple[str, str]] = (), *,
                  after_tree=None) -> str:
    """Why `after` (a file of the tree with a port applied) does not parse, as tree-sitter says it: the first
    syntax error it has that `before` (the tree's file) did not have, nor the fork's code the port came from
    (`sources`: (path, text), each parsed in its path's grammar; code tree-sitter misreads as written, such as a
    macro it does not know, compiles where it came from). "" when it parses. `after_tree`: `after` already parsed
    (hunk_port's, which moved_away read too)."""
    errors = _syntax_errors(after, path, after_tree if after_tree is not None else _parse(after, path))
    if not errors:
        return ""
    allowed: dict[str, int] = {}
    pending = [(path, before), *sources]
    for key, where in errors:
        while allowed.get(key, 0) <= 0 and pending:
            for k, _ in _syntax_errors(*reversed(pending.pop(0))):
                allowed[k] = allowed.get(k, 0) + 1
        if allowed.get(key, 0) <= 0:
            return where
        allowed[key] -= 1
    return ""


_ELABORATED = {"struct_specifier", "enum_specifier", "union_specifier", "class_specifier"}
# What binds tighter than any operator: parentheses around it change nothing.
_PRIMARY = {"identifier", "number_literal", "string_literal", "char_literal", "concatenated_string", "true", "false",
            "null", "nullptr", "field_expression", "subscript_expression", "call_expression",
            "parenthesized_expression"}
# Where a whole expression stands alone: parentheses around it change nothing (but a comma's, in an argument).
_WHOLE = {"return_statement", "expression_statement", "init_declarator", "argument_list", "if_statement",
          "while_statement", "do_statement", "switch_statement", "condition_clause", "initializer_list"}


def _redundant_parens(node) -> bool:
    inner = [c for c in node.named_children if c.type != "comment"]
    if len(inner) != 1:
        return False
    return inner[0].type in _PRIMARY or (node.parent is not None and node.parent.type in _WHOLE
                                         and inner[0].type != "comma_expression")


def _parameter_names(function) -> dict[str, str]:
    """A function definition's parameter names -> their position ($p0, $p1...)."""
    node = function.child_by_field_name("declarator")
    while node is not None and node.type != "function_declarator":
        node = node.child_by_field_name("declarator")
    params = node.child_by_field_name("parameters") if node is not None else None
    if params is None:
        return {}
    names = [declarator_name(d) for p in params.named_children for d in p.children_by_field_name("declarator")]
    return {n: f"$p{i}" for i, n in enumerate(names) if n}


def normalized(text: str, path: str) -> tuple[str, ...]:
    """The code's tokens as the compiler reads them, less what only spells it: comments, whitespace, `struct`,
    `enum`, `union` before a type name (C++ needs none, C compiles either way where both do), the names of
    parameters (by position instead), parentheses around a primary or a whole expression, empty statements."""
    out: list[str] = []
    # Not through _parsed: these are a port's lines, read once; cached, they would push out the tree's files.
    stack: list[tuple[Any, dict[str, str]]] = [(_parse(text, path).root_node, {})]
    while stack:
        node, params = stack.pop()
        kind = node.type
        if kind == "comment" or (kind == "expression_statement" and node.child_count == 1):
            continue
        if kind == "function_definition":
            params = _parameter_names(node)
        if node.child_count == 0:
            parent = node.parent
            if kind in ("struct", "enum", "union", "class") and parent is not None and parent.type in _ELABORATED \
                    and parent.child_by_field_name("body") is None:
                continue
            word = node.text.decode("utf-8", "replace")
            if kind == "identifier":
                word = params.get(word, word)
            elif kind == "preproc_arg":
                word = " ".join(_COMMENT.sub(" ", word).split())
            if word:
                out.append(word)
            continue
        children = node.children
        if kind == "parenthesized_expression" and _redundant_parens(node):
            children = [c for c in children if c.type not in ("(", ")")]
        stack.extend((c, params) for c in reversed(children))
    return tuple(out)


def no_change(path: str, before: str, after: str) -> bool:
    """Whether `after` is `before` spelled otherwise (see normalized): nothing a benchmark could measure. Only
    the lines that differ are compared, widened to the top-level definitions they touch (a parameter's name is
    read in its whole function): a 12,000-line file is read once, not once per hunk."""
    if before == after:
        return False
    head = len(os.path.commonprefix([before, after]))
    head = before.rfind("\n", 0, head) + 1
    tail = min(len(os.path.commonprefix([before[::-1], after[::-1]])), len(before) - head, len(after) - head)
    end = before.find("\n", len(before) - tail)
    lo, hi = head, len(before) if end < 0 else end + 1
    for d in definitions(before, path):
        if d.start < hi and d.end > head:
            lo, hi = min(lo, d.start), max(hi, d.end)
    return normalized(before[lo:hi], path) == normalized(after[lo:len(after) - (len(before) - hi)], path)


# -- function-level ports ----------------------------------------------------------------------------------------

@dataclass
class Ports:
    candidates: list[Candidate] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)


def _by_name(tree: Tree, paths: Iterable[str]) -> dict[str, list[tuple[str, Definition, str]]]:
    """name -> [(path, definition, file text)] of every function defined in `paths`."""
    out: dict[str, list[tuple[str, Definition, str]]] = {}
    for path in paths:
        text = tree.read(path)
        if text is None:
            continue
        for d in definitions(text, path):
            if d.kind == "function":
                out.setdefault(d.name, []).append((path, d, text))
    return out


def adapt(text: str, name: str, replaced: str, *, from_path: str, into_path: str) -> str:
    """The fork's definition made to fit where it goes: C's `restrict` is `__restrict` (which C and C++ compilers
    both take) when C code moves into a C++ file or a header, and the function keeps the linkage of the one it
    replaces (`static` added or removed), since the tree's declarations and callers expect that one."""
    if Path(from_path).suffix.lower() == ".c" and Path(into_path).suffix.lower() != ".c":
        text = re.sub(r"\brestrict\b", "__restrict", text)
    if not replaced:
        return text
    head = text[:m.start()] if (m := re.search(rf"\b{re.escape(name)}\s*\(", text)) else ""
    mine = replaced[:m2.start()] if (m2 := re.search(rf"\b{re.escape(name)}\s*\(", replaced)) else ""
    static_here, static_there = bool(re.search(r"\bstatic\b", mine)), bool(re.search(r"\bstatic\b", head))
    if static_there and not static_here:
        text = re.sub(r"\bstatic\s+", "", text, count=1)
    elif static_here and not static_there and head:
        text = "static " + text
    return text


def _prototype(d: Definition) -> bool:
    """A function's declaration without its body (`int f(int);`): it satisfies the compiler, not the linker."""
    return d.kind == "declaration" and "{" not in d.text and "=" not in d.text and \
        bool(re.search(rf"\b{re.escape(d.name)}\s*\(", d.text))


def _static(d: Definition) -> bool:
    head = _COMMENT.sub("", d.text)
    m = re.search(rf"\b{re.escape(d.name)}\s*\(", head)
    return bool(re.search(r"\bstatic\b", head[:m.start()] if m else head))


def _helpers(needed: set[str], sources: Sequence[tuple[str, str]], visible: set[str],
             known: set[str]) -> tuple[list[tuple[str, Definition]], set[str]]:
    """The fork's definitions of `needed` names (and of what those need in turn), looked up in `sources` in order
    (the fork's file of the function first, then its other files), a body before a prototype; and what stays
    unresolved. Names `visible` where the port lands are the tree's: never brought along a second time."""
    index: dict[str, tuple[int, str, Definition]] = {}
    for i, (path, text) in enumerate(sources):
        for d in definitions(text, path):
            have = index.get(d.name)
            if have is None or (_prototype(have[2]) and not _prototype(d)):
                index[d.name] = (i, path, d)
    chosen: dict[str, tuple[int, str, Definition]] = {}
    unresolved: set[str] = set()
    queue = sorted(needed)
    while queue:
        name = queue.pop(0)
        if name in chosen or name in unresolved:
            continue
        found = index.get(name)
        if found is None or _prototype(found[2]) or len(chosen) >= MAX_HELPERS:
            unresolved.add(name)
            continue
        chosen[name] = found
        queue += sorted(n for n in uses(found[2].text, found[1], known)
                        if n not in visible and not _std(n) and n not in chosen)
    # Each once (a declaration may define several names), in its file's order; what other files give first,
    # since the function's own file's helpers may use it.
    unique = {(i, d.start): (i, path, d) for i, path, d in chosen.values()}
    ordered = sorted(unique.values(), key=lambda e: (e[0] == 0, e[0], e[2].start))
    return [(path, d) for _, path, d in ordered], unresolved


def _homes(found: list[tuple[str, Definition, str]], hot_paths: Sequence[str]) -> list[tuple[str, Definition, str]]:
    """Of a fork's several definitions of one name, those compiled here: in the target's hot files when some
    are, else those outside another CPU's folder (ggml-cpu/arch/arm/ defines the x86 kernels' names too)."""
    if len(found) <= 1:
        return found
    hot = [f for f in found if hot_paths and in_paths(f[0], hot_paths)]
    return hot or [f for f in found if not FOREIGN_DIR.search(f[0])]


class _ForkIndex:
    """Which of a fork's C/C++ files name which identifiers, read once per fork and wave."""

    def __init__(self, fork: Tree):
        self.fork = fork
        self.words: dict[str, set[str]] = {}
        for path in fork.files():
            if Path(path).suffix.lower() in FORK_SUFFIXES and (text := fork.read(path)) is not None:
                self.words[path] = set(_WORD.findall(text))

    def mentioning(self, names: set[str]) -> list[str]:
        return [p for p, words in self.words.items() if not names.isdisjoint(words)]

    def defining(self, names: set[str], hot_paths: Sequence[str]) -> dict[str, list[tuple[str, Definition, str]]]:
        """name -> where the fork defines it (the definitions compiled here, see _homes)."""
        found = _by_name(self.fork, self.mentioning(names))
        return {n: _homes(found[n], hot_paths) for n in names if found.get(n)}


def fork_homes(fork: Tree, names: set[str], hot_paths: Sequence[str] = ()) -> dict[str, list[str]]:
    """The files where the fork defines each of `names` (the one compiled here when several do)."""
    return {n: [p for p, _, _ in found] for n, found in _ForkIndex(fork).defining(names, hot_paths).items()}


def _fork_sources(index: _ForkIndex, fork_path: str, fork_text: str, names: set[str]) -> list[tuple[str, str]]:
    """The fork's file of the function, then its other files that name `names` (its own folder first, no other
    CPU's folder): where a moved function's helpers stayed."""
    folder = str(Path(fork_path).parent)
    others = sorted((p for p in index.mentioning(names) if p != fork_path and not FOREIGN_DIR.search(p)),
                    key=lambda p: (str(Path(p).parent) != folder, p))
    return [(fork_path, fork_text)] + [(p, t) for p in others if (t := index.fork.read(p)) is not None]


@dataclass
class _Tree:
    """What the current tree offers a port: the names each hot file can see (its own words, the headers', the
    functions other files export) and every name it mentions (which decides what an #if selects)."""
    ours: dict[str, list[tuple[str, Definition, str]]]
    known: set[str]
    shared: set[str]

    def visible(self, text: str) -> set[str]:
        return set(_WORD.findall(text)) | self.shared


def _current(current: Tree, hot_paths: Sequence[str]) -> _Tree:
    hot = [p for p in current.files() if _is_code(p) and in_paths(p, hot_paths)]
    ours = _by_name(current, hot)
    headers = [p for p in current.files() if Path(p).suffix.lower() in (".h", ".hpp")
               and p.split("/")[0] in {h.split("/")[0] for h in hot}]
    known: set[str] = set(ours)
    shared: set[str] = {n for n, defs in ours.items()
                        if any(not _static(d) or Path(p).suffix.lower() in (".h", ".hpp") for p, d, _ in defs)}
    for path in hot + headers:
        text = current.read(path)
        if text is not None:
            words = _WORD.findall(text)
            known.update(words)
            if path in headers:
                shared.update(words)
    return _Tree(ours, known, shared)


def function_ports(current: Tree, forks: Sequence[Tree], *, hot_paths: Sequence[str],
                   rank: Callable[[str], int] = lambda _: 0) -> Ports:
    """For each function of the current tree's hot files that a fork defines differently (same name, same
    signature, anywhere in the fork: where it moved to), a candidate replacing the tree's definition with the
    fork's. What it needs is looked up where it lands first (the tree's file, its headers, what other files
    export), then in the fork's file of the definition, then in the fork's other files."""
    result = Ports()
    tree = _current(current, hot_paths)
    for fork in forks:
        index = _ForkIndex(fork)
        theirs = index.defining(set(tree.ours), hot_paths)
        for name in sorted(set(tree.ours) & set(theirs), key=lambda n: (rank(n), n)):
            made = _port(name, tree, fork, index, theirs[name])
            if isinstance(made, Dropped):
                result.dropped.append(made)
            elif made is not None:
                result.candidates.append(made)
    return result


def _port(name: str, tree: _Tree, fork: Tree, index: _ForkIndex,
          theirs: list[tuple[str, Definition, str]]) -> Candidate | Dropped | None:
    what = f"{fork.name}'s {name}"
    ours = tree.ours[name]
    if len({p for p, _, _ in ours}) > 1 or (len(theirs) > 1 and len({normalized(d.text, p)
                                                                        for p, d, _ in theirs}) > 1):
        # Several definitions in several files (the fork's differing by more than spelling, see normalized): which
        # one is compiled here is not known from the text.
        return Dropped("function", what, "ambiguous", ", ".join(sorted({p for p, _, _ in ours + theirs})), name)
    path, mine, text = ours[0]
    fork_path, fork_def, fork_text = theirs[0]
    if mine.text == fork_def.text:
        return None  # the same code: nothing to port
    ported = adapt(fork_def.text, name, mine.text, from_path=fork_path, into_path=path)
    if no_change(path, mine.text, ported):
        return Dropped("function", what, "no change", "only comments, whitespace or spelling differ", name)
    mine_sig, fork_sig = signature(mine.text, name), signature(fork_def.text, name)
    if mine_sig != fork_sig:
        return Dropped("function", what, "signature differs",
                       f"({', '.join(mine_sig[1:])}) vs ({', '.join(fork_sig[1:])})", name)
    if fork_def.text.count("\n") > MAX_PORT_LINES:
        return Dropped("function", what, "too large", f"{fork_def.text.count(chr(10))} lines", name)
    visible = tree.visible(text)
    needed = {n for n in uses(fork_def.text, fork_path, tree.known) if n not in visible and not _std(n)}
    sources = [(fork_path, fork_text)]
    helpers, unresolved = _helpers(needed, sources, visible, tree.known) if needed else ([], set())
    if unresolved:
        # Not in the fork's file of the definition: where it moved from, or another of the fork's files.
        sources = _fork_sources(index, fork_path, fork_text, needed | unresolved)
        helpers, unresolved = _helpers(needed, sources, visible, tree.known)
    if unresolved:
        return Dropped("function", what, "unresolved", ", ".join(sorted(unresolved)[:8]), name)
    brought = "".join(adapt(h.text, h.name, "", from_path=p, into_path=path)
                      + ("\n" if not h.text.endswith("\n\n") else "") for p, h in helpers)
    names = [h.name for _, h in helpers]
    froms = sorted({p for p, _ in helpers} - {fork_path})
    header = f"// ported from {fork.name} {fork_path}" + (f" (with {', '.join(names)}" + (
        f"; from {', '.join(froms)}" if froms else "") + ")" if helpers else "") + "\n"
    new_text = text[:mine.start] + header + brought + ported + text[mine.end:]
    # The fork's function alone, in both grammars, then its files: what tree-sitter misreads in the fork's code
    # as written (a POWER9 `vector` type, a C `enum` read as C++) it misreads the same wherever that code lands.
    problem = parse_problem(path, text, new_text, [(path, fork_def.text), (fork_path, fork_def.text), *sources])
    if problem:
        return Dropped("function", what, "does not parse", problem, name)
    patch, changed = unified_patch(path, text, new_text)
    if not patch:
        return None
    return Candidate("function", f"port {fork.name}'s {name} ({fork_path}) into {path}", path, name, fork.name,
                     fork_path, patch, changed, tuple(names))


# -- hunks -------------------------------------------------------------------------------------------------------

def hunk_lines(chunk_text: str) -> list[tuple[str, str]] | None:
    """The tagged lines (" ", "-", "+") of a fork-diff chunk: its body after the comment and @@ header lines;
    None when it is not a hunk with something to anchor on."""
    lines = chunk_text.split("\n")
    if len(lines) <= 2 or not lines[1].startswith("@@"):
        return None
    out = []
    for ln in lines[2:]:
        tag, text = (ln[:1], ln[1:]) if ln else (" ", "")
        if tag == "\\":
            continue  # "\ No newline at end of file"
        if tag not in (" ", "-", "+"):
            return None
        out.append((tag, text))
    if not any(t in "-+" for t, _ in out) or not any(t in " -" and s.strip() for t, s in out):
        return None  # no change, or a pure addition with nothing to anchor on
    return out


def _key(line: str) -> str:
    return " ".join(line.split())


def anchor(lines: Sequence[str], tagged: Sequence[tuple[str, str]]) -> tuple[int, list[tuple[str, str]]] | None:
    """Where the hunk's upstream side stands, once, in `lines` (ignoring whitespace; with up to FUZZ context
    lines dropped at either end when needed): (first line index, the tagged lines that matched)."""
    for fuzz in range(FUZZ + 1):
        for lead in range(fuzz + 1):
            trail = fuzz - lead
            body = list(tagged)
            if any(t != " " for t, _ in body[:lead]) or (trail and any(t != " " for t, _ in body[len(body) - trail:])):
                continue  # only context may be dropped
            body = body[lead:len(body) - trail if trail else None]
            old = [_key(s) for t, s in body if t in " -"]
            if sum(1 for k in old if len(k.strip("{}();, ")) > 3) < MIN_ANCHOR_LINES:
                continue  # braces and blank lines match anywhere: not an anchor
            keys = [_key(s) for s in lines]
            hits = [i for i in range(len(keys) - len(old) + 1) if keys[i:i + len(old)] == old]
            if len(hits) == 1:
                return hits[0], body
            if len(hits) > 1:
                return None  # more context would not be found either: ambiguous
    return None


def apply_hunk(text: str, tagged: Sequence[tuple[str, str]]) -> str | None:
    """`text` with the hunk applied at its one anchor; context lines keep the current file's spelling."""
    lines = text.split("\n")
    found = anchor(lines, tagged)
    if found is None:
        return None
    i, body = found
    out = lines[:i]
    j = i
    for tag, s in body:
        if tag == " ":
            out.append(lines[j])
            j += 1
        elif tag == "-":
            j += 1
        else:
            out.append(s)
    return "\n".join(out + lines[j:])


def hunk_port(hunk: dict[str, Any], *, current: Tree, base: Tree, forks: dict[str, Tree],
              merge_file: MergeFile, hot_paths: Sequence[str] = ()) -> Candidate | Dropped:
    """One fork-diff chunk onto the current tree. `base` is the tree the run started from (the upstream side a
    vendored fork was compared with); a git fork's commit is merged from its own parent instead."""
    path = hunk.get("path", "")
    what = f"{hunk.get('repo', 'fork')} hunk in {path} {hunk.get('symbol') or ''}".strip()
    if hot_paths and not in_paths(path, hot_paths):
        return Dropped("hunk", what, "not hot", path)  # ik_llama.cpp's ggml.c is CPU code; upstream's is not
    ours = current.read(path)
    if ours is None:
        return Dropped("hunk", what, "no file", path)
    fork = forks.get(hunk.get("repo", ""))
    if hunk.get("commit") and fork is not None:
        # A git fork: the commit's change to this file, merged onto the current file from the commit's parent.
        theirs = fork.read(path, hunk["commit"])
        parent = fork.read(path, f"{hunk['commit']}^")
        if theirs is None or parent is None:
            return Dropped("hunk", what, "no file", f"{path} at {hunk['commit'][:12]}")
        merged, conflicts = merge_file(ours, parent, theirs)
        how = f"the fork's commit {hunk['commit'][:12]}"
        real = [(path, theirs)]  # the fork's file as it is: what tree-sitter misreads there is no port's doing
    else:
        tagged = hunk_lines(hunk.get("text", ""))
        if tagged is None:
            return Dropped("hunk", what, "no anchor", "a pure addition or not a hunk")
        original = base.read(path)
        theirs = apply_hunk(original, tagged) if original is not None else None
        if theirs is not None and original != ours:
            merged, conflicts = merge_file(ours, original, theirs)
        else:
            merged, conflicts = (theirs, 0) if theirs is not None else (apply_hunk(ours, tagged), 0)
            if merged is None:
                return Dropped("hunk", what, "no anchor")
        how = "the fork's hunk"
        real = [(path, original)] if original is not None else []
    if conflicts:
        return Dropped("hunk", what, "conflict", f"{conflicts} conflicting region{'s' * (conflicts > 1)}",
                       hunk.get("symbol", ""))
    patch, changed = unified_patch(path, ours, merged)
    if not patch:
        return Dropped("hunk", what, "no anchor", "the current file already has it", hunk.get("symbol", ""))
    # Named after the functions of the current file whose lines it changes: the chunk's symbol is read in the
    # fork's file, where a deleted function's lines belong to its neighbour.
    names = touched(path, ours, patch)
    named = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    what = f"{hunk.get('repo', 'fork')} hunk in {path} {named or hunk.get('symbol') or ''}".strip()
    symbol = names[0] if names else hunk.get("symbol", "")
    if no_change(path, ours, merged):
        return Dropped("hunk", what, "no change", "only comments, whitespace or spelling differ", symbol)
    merged_tree = _parse(merged, path)  # read by both checks below: a 12,000-line file takes 70 ms to parse
    moved = moved_away(path, ours, merged, fork, hot_paths, after_tree=merged_tree) if fork is not None else []
    if moved:
        return Dropped("hunk", what, "moved", "; ".join(f"{n} moved to {p}" for n, p in moved), moved[0][0])
    problem = parse_problem(path, ours, merged, real, after_tree=merged_tree)
    if problem:
        return Dropped("hunk", what, "does not parse", problem, symbol)
    where = f"{named} in {path}" if named else f"{path} {hunk.get('symbol') or ''}".strip()
    return Candidate("hunk", f"port {how} to {where}", path, symbol,
                     hunk.get("repo", ""), path, patch, changed, chunk=hunk.get("id", ""))


def touched(path: str, before: str, patch: str) -> list[str]:
    """The functions of `before` whose lines a unified diff of it removes or adds to, in file order."""
    spans = _function_spans(before, Path(path).suffix)
    lines: list[int] = []
    old, body = 0, False
    for ln in patch.splitlines():
        if m := re.match(r"@@ -(\d+)", ln):
            old, body = int(m.group(1)), True
        elif body and ln[:1] == " ":
            old += 1
        elif body and ln[:1] == "-":
            lines.append(old)
            old += 1
        elif body and ln[:1] == "+":
            lines.append(max(old - 1, 1))  # an insertion belongs to the line above it
    out: list[str] = []
    for line in lines:
        name = symbol_at(spans, line)
        if name and name not in out:
            out.append(name)
    return out


@lru_cache(maxsize=16)
def _function_spans(text: str, suffix: str) -> list:
    # The tree's file, read once for all the hunks ported into it (not once per hunk).
    return function_spans(text, suffix)


def moved_away(path: str, before: str, after: str, fork: Tree, hot_paths: Sequence[str] = (), *,
               after_tree=None) -> list[tuple[str, str]]:
    """The functions `after` no longer defines that the fork still defines (in another file, or elsewhere in
    this one): (name, where the fork keeps it). Such a change is a move; applied alone it is a deletion that
    fails at the link. `after_tree`: `after` already parsed (its definitions are read from it, not cached: a
    merged file is read once)."""
    counts: dict[str, int] = {}
    for d in definitions(before, path):
        if d.kind == "function":
            counts[d.name] = counts.get(d.name, 0) + 1
    for d in (_definitions_of(after_tree, after) if after_tree is not None else definitions(after, path)):
        if d.kind == "function" and d.name in counts:
            counts[d.name] -= 1
    gone = {n for n, c in counts.items() if c > 0}
    if not gone:
        return []
    homes = fork_homes(fork, gone, hot_paths)
    return [(n, homes[n][0]) for n in sorted(gone) if homes.get(n)]


def unified_patch(path: str, before: str, after: str, *, context: int = 3) -> tuple[str, int]:
    """A `git apply`-able diff of one file, and how many lines it adds or removes. Only the region between the
    common first and last lines is compared (difflib over a 10,000-line file takes seconds)."""
    a = before.splitlines(keepends=True)
    b = after.splitlines(keepends=True)
    for side in (a, b):
        if side and not side[-1].endswith("\n"):
            side[-1] += "\n\\ No newline at end of file\n"
    head = 0
    while head < min(len(a), len(b)) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < min(len(a), len(b)) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    if head == len(a) == len(b):
        return "", 0
    lo = max(0, head - context)
    a_mid, b_mid = a[lo:len(a) - max(0, tail - context)], b[lo:len(b) - max(0, tail - context)]
    lines = list(difflib.unified_diff(a_mid, b_mid, f"a/{path}", f"b/{path}", n=context))

    def shift(m: re.Match) -> str:
        def at(start: str, count: str | None) -> str:
            n = int(start) + (lo if int(start) or (count or ",1") != ",0" else lo)
            return f"{n}{count or ''}"
        return f"@@ -{at(m.group(1), m.group(2))} +{at(m.group(3), m.group(4))} @@"
    body = [re.sub(r"^@@ -(\d+)(,\d+)? \+(\d+)(,\d+)? @@", shift, ln) if ln.startswith("@@") else ln
            for ln in lines[2:]]
    changed = sum(1 for ln in body if ln[:1] in "+-")
    return f"diff --git a/{path} b/{path}\n" + "".join(lines[:2] + body), changed


def hot_symbols(current: Tree, hot_paths: Sequence[str]) -> dict[str, str]:
    """Every function the current tree defines in its hot files: name -> path."""
    out: dict[str, str] = {}
    for path in current.files():
        if _is_code(path) and in_paths(path, hot_paths):
            text = current.read(path)
            for d in definitions(text, path) if text else ():
                if d.kind == "function":
                    out.setdefault(d.name, path)
    return out


def reasons(dropped: Iterable[Dropped]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dropped:
        out[d.reason] = out.get(d.reason, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
