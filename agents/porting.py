"""The porting engine: a fork's code moved onto the current best tree, offline, as candidate patches.

Two ways in, both reading the trees themselves (protocols.Tree), not only the knowledge base's snippets:
- **hunks** (fork-diff chunks): anchored in the current file ignoring whitespace, with up to three context lines
  dropped at either end when the whole context does not match (patch's fuzz), and merged three-way with
  `git merge-file` against the tree the hunk was cut from, so that a file changed since (by a kept experiment)
  still takes the hunk, or reports the conflict;
- **functions**: a hot function of the current tree replaced by the fork's definition of the same name, wherever
  the fork keeps it (ik_llama.cpp keeps upstream's `ggml-cpu/ops.cpp` functions in `ggml.c`), with the fork-only
  helpers it needs (static functions, macros, constant tables of the fork's file) brought along.

A candidate that cannot be made is a `Dropped` with its reason (no anchor, conflict, signature differs, needs
symbols the tree lacks); the run's summary counts them. What can be made may still not build: that is an
experiment discarded at the build gate with the compiler's first error, which costs an incremental rebuild.
"""

from __future__ import annotations

import difflib
import platform
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..knowledge_base.chunking import c_parser, declarator_name
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


REASONS = {
    "no anchor": "its upstream side is not in the current file, even ignoring whitespace and with less context",
    "conflict": "a three-way merge with the current file conflicts",
    "signature differs": "the fork's function takes or returns other types (callers would break)",
    "unresolved": "it needs names that neither the tree nor the fork's file defines",
    "ambiguous": "the name is defined more than once (under #if branches) on one side",
    "too large": f"the fork's function is longer than {MAX_PORT_LINES} lines",
    "no file": "the file is not in the current tree",
    "not hot": "the file it changes is not among the target's hot files",
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
    tree = c_parser(cpp).parse(text.encode("utf-8", "replace"))
    # tree-sitter counts bytes; definitions are cut at whole lines, so its row numbers are all that is needed.
    starts = [0]
    for m in re.finditer("\n", text):
        starts.append(m.end())
    starts.append(len(text))

    def lines_of(node) -> tuple[int, int]:
        return starts[node.start_point[0]], starts[min(node.end_point[0] + 1, len(starts) - 1)]

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


def _mentioning(tree: Tree, names: set[str]) -> list[str]:
    out = []
    for path in tree.files():
        if Path(path).suffix.lower() not in FORK_SUFFIXES:
            continue
        text = tree.read(path)
        if text is not None and not names.isdisjoint(_WORD.findall(text)):
            out.append(path)
    return out


def _same(a: str, b: str) -> bool:
    return re.sub(r"\s+", "", _COMMENT.sub("", a)) == re.sub(r"\s+", "", _COMMENT.sub("", b))


def _helpers(needed: set[str], fork_text: str, fork_path: str, known: set[str]) -> tuple[list[Definition], set[str]]:
    """The fork file's definitions of `needed` names (and of what those need in turn), and what stays unknown."""
    defined = {}
    for d in definitions(fork_text, fork_path):
        defined.setdefault(d.name, d)
    chosen: dict[str, Definition] = {}
    unresolved: set[str] = set()
    queue = sorted(needed)
    while queue:
        name = queue.pop(0)
        if name in chosen or name in unresolved:
            continue
        d = defined.get(name)
        if d is None or len(chosen) >= MAX_HELPERS:
            unresolved.add(name)
            continue
        chosen[name] = d
        queue += sorted(n for n in uses(d.text, fork_path, known) if n not in known and not _std(n) and n not in chosen)
    # In the fork file's order, each once (a declaration may define several names).
    ordered = sorted({d.start: d for d in chosen.values()}.values(), key=lambda d: d.start)
    return ordered, unresolved


def function_ports(current: Tree, forks: Sequence[Tree], *, hot_paths: Sequence[str],
                   rank: Callable[[str], int] = lambda _: 0) -> Ports:
    """For each function of the current tree's hot files that a fork defines differently (same name, same
    signature, anywhere in the fork's hot files), a candidate replacing the tree's definition with the fork's."""
    result = Ports()
    hot = [p for p in current.files() if _is_code(p) and in_paths(p, hot_paths)]
    ours = _by_name(current, hot)
    known: set[str] = set(ours)
    for path in hot + [p for p in current.files() if Path(p).suffix.lower() in (".h", ".hpp")
                       and p.split("/")[0] in {h.split("/")[0] for h in hot}]:
        text = current.read(path)
        if text is not None:
            known.update(_WORD.findall(text))
    for fork in forks:
        # Wherever the fork keeps them: any of its C/C++ files that names a hot function of the tree.
        theirs = {n: d for n, d in _by_name(fork, _mentioning(fork, set(ours))).items() if n in ours}
        for name in sorted(set(ours) & set(theirs), key=lambda n: (rank(n), n)):
            what = f"{fork.name}'s {name}"
            if len(ours[name]) > 1 or len(theirs[name]) > 1:
                # Several definitions under #if branches: which one is compiled here is not known from the text.
                if len({p for p, _, _ in ours[name]}) > 1 or len(theirs[name]) > 1:
                    result.dropped.append(Dropped("function", what, "ambiguous"))
                    continue
            path, mine, text = ours[name][0]
            fork_path, fork_def, fork_text = theirs[name][0]
            if _same(mine.text, fork_def.text):
                continue  # the same code: nothing to port
            mine_sig, fork_sig = signature(mine.text, name), signature(fork_def.text, name)
            if mine_sig != fork_sig:
                result.dropped.append(Dropped("function", what, "signature differs",
                                              f"({', '.join(mine_sig[1:])}) vs ({', '.join(fork_sig[1:])})"))
                continue
            if fork_def.text.count("\n") > MAX_PORT_LINES:
                result.dropped.append(Dropped("function", what, "too large", f"{fork_def.text.count(chr(10))} lines"))
                continue
            needed = {n for n in uses(fork_def.text, fork_path, known) if n not in known and not _std(n)}
            helpers, unresolved = _helpers(needed, fork_text, fork_path, known) if needed else ([], set())
            if unresolved:
                result.dropped.append(Dropped("function", what, "unresolved", ", ".join(sorted(unresolved)[:8])))
                continue
            ported = adapt(fork_def.text, name, mine.text, from_path=fork_path, into_path=path)
            brought = "".join(adapt(h.text, h.name, "", from_path=fork_path, into_path=path)
                              + ("\n" if not h.text.endswith("\n\n") else "") for h in helpers)
            header = f"// ported from {fork.name} {fork_path}" + (
                f" (with {', '.join(h.name for h in helpers)})" if helpers else "") + "\n"
            new_text = text[:mine.start] + header + brought + ported + text[mine.end:]
            patch, changed = unified_patch(path, text, new_text)
            if not patch:
                continue
            result.candidates.append(Candidate(
                "function", f"port {fork.name}'s {name} ({fork_path}) into {path}", path, name, fork.name,
                fork_path, patch, changed, tuple(h.name for h in helpers)))
    return result


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
    if conflicts:
        return Dropped("hunk", what, "conflict", f"{conflicts} conflicting region{'s' * (conflicts > 1)}")
    patch, changed = unified_patch(path, ours, merged)
    if not patch:
        return Dropped("hunk", what, "no anchor", "the current file already has it")
    where = f"{path} {hunk.get('symbol') or ''}".strip()
    return Candidate("hunk", f"port {how} to {where}", path, hunk.get("symbol", ""), hunk.get("repo", ""), path,
                     patch, changed, chunk=hunk.get("id", ""))


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
