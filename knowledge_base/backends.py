"""Backend gaps: what llama.cpp's other backends (CUDA, Metal, Vulkan, ...) implement that its CPU backend lacks.

A scan of a ggml tree records, per backend, the ops its dispatch code handles (`case GGML_OP_X:` labels) and the
fused op sequences it recognises (literal lists such as `{ GGML_OP_RMS_NORM, GGML_OP_MUL }`, the shape every
backend's fusion check takes: `ggml_can_fuse(cgraph, i, ops, n)`, `ggml_cuda_can_fuse(cgraph, i, {...}, {})`,
Metal's `ops_rms_norm_mul = {...}`). Each sequence or op that some backend has and the CPU lacks becomes one
`backend-gap` document pointing at the code that implements it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import KnowledgeBaseError, SourceError
from ..sources import GitTree
from .chunking import CODE_EXTENSIONS, Chunk, Unit, function_spans, symbol_at

_CASE = re.compile(r"\bcase\s+(GGML_OP_[A-Z0-9_]+)\s*:")
_OP_LIST = re.compile(r"\{\s*(GGML_OP_[A-Z0-9_]+(?:\s*,\s*GGML_OP_[A-Z0-9_]+)+)\s*,?\s*\}")
_RANGE_FOR = re.compile(r"\bfor\s*\([^;]*:\s*$")  # `for (op : {A, B})` lists alternatives, not a sequence
CPU = "CPU"
EXCERPT_LINES = 40


@dataclass(frozen=True)
class Location:
    path: str
    line: int
    symbol: str


@dataclass
class Backend:
    name: str
    paths: list[str] = field(default_factory=list)
    ops: dict[str, Location] = field(default_factory=dict)                   # op → first dispatch site
    fusions: dict[tuple[str, ...], Location] = field(default_factory=dict)   # op sequence → first site


def _backend_of(rel: str) -> str | None:
    """ggml/src/ggml-cuda/... → CUDA; ggml/src/ggml-metal.m (older layout) → METAL; ggml.c holds the old CPU."""
    parts = rel.split("/")
    if len(parts) < 3 or parts[:2] != ["ggml", "src"]:
        return None
    head = parts[2]
    if len(parts) > 3 and head.startswith("ggml-"):
        return head[5:].upper() if head != "ggml-cpu" else CPU
    if len(parts) == 3 and head.startswith("ggml-") and Path(head).suffix in (".cu", ".m", ".cpp"):
        name = Path(head).stem[5:].upper()
        return name if name not in ("ALLOC", "BACKEND", "QUANTS", "IMPL", "COMMON", "AARCH64", "OPT",
                                    "THREADING", "BACKEND-REG", "BACKEND-DL", "BACKEND-META") else None
    if len(parts) > 3 and head in ("iqk", "llamafile"):
        return CPU  # ik_llama.cpp and older trees keep CPU kernels here
    return None


def _files(repo: Path, revision: str) -> Iterator[tuple[str, str]]:
    """(path, text) of every source file under ggml/src at the revision, read from git (not the work tree), each
    at most the one cap on a tree's files (sources.MAX_FILE_BYTES)."""
    tree = GitTree(repo.name, repo, revision, subdirs=("ggml/src",))
    try:
        try:
            listing = tree.files()
        except SourceError as e:
            raise KnowledgeBaseError(f"{repo} is not a git repository with revision {revision}") from e
        paths = [p for p in listing if Path(p).suffix.lower() in CODE_EXTENSIONS]
        if not paths:
            raise KnowledgeBaseError(f"{repo} has no ggml/src tree: not a ggml-based project")
        for rel in paths:
            text = tree.read(rel)
            if text is not None:
                yield rel, text
    finally:
        tree.close()


@dataclass
class Scan:
    backends: dict[str, Backend]
    sources: dict[str, str]   # path → text of the files scanned, for excerpts


def scan_backends(repo: Path, revision: str = "HEAD") -> Scan:
    """Per backend: the ops it dispatches and the op sequences it fuses, each with where in the code."""
    backends: dict[str, Backend] = {}
    sources: dict[str, str] = {}
    for rel, text in _files(repo, revision):
        name = _backend_of(rel)
        has_old_cpu = rel == "ggml/src/ggml.c" and "ggml_compute_forward" in text
        if name is None and not has_old_cpu:
            continue
        name = name or CPU
        backend = backends.setdefault(name, Backend(name))
        backend.paths.append(rel)
        sources[rel] = text
        spans = None
        lines = text.splitlines()
        for match in _CASE.finditer(text):
            if match.group(1) not in backend.ops:
                line = text.count("\n", 0, match.start()) + 1
                spans = spans if spans is not None else function_spans(text, Path(rel).suffix)
                backend.ops[match.group(1)] = Location(rel, line, symbol_at(spans, line))
        for match in _OP_LIST.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            before = lines[line - 1][:match.start() - (text.rfind("\n", 0, match.start()) + 1)]
            if _RANGE_FOR.search(before):
                continue
            ops = tuple(re.split(r"\s*,\s*", match.group(1).strip()))
            spans = spans if spans is not None else function_spans(text, Path(rel).suffix)
            backend.fusions.setdefault(ops, Location(rel, line, symbol_at(spans, line)))
    if CPU not in backends:
        raise KnowledgeBaseError(f"no CPU backend found under {repo}/ggml/src (neither ggml-cpu/ nor ggml.c)")
    return Scan(backends, sources)


def _short(op: str) -> str:
    return op.removeprefix("GGML_OP_")


def _excerpt(text: str, line: int) -> str:
    lines = text.splitlines()
    start = max(1, line - 8)
    return "\n".join(lines[start - 1:start - 1 + EXCERPT_LINES])


def gap_units(scan: Scan, *, repo: str, revision: str, source: str) -> Iterator[Unit]:
    """One unit per gap (a fusion or an op some backend has and the CPU lacks), one per backend summary."""
    backends, sources = scan.backends, scan.sources
    cpu = backends[CPU]
    others = {n: b for n, b in sorted(backends.items()) if n != CPU}
    fusions: dict[tuple[str, ...], dict[str, Location]] = {}
    for name, backend in others.items():
        for ops, loc in backend.fusions.items():
            fusions.setdefault(ops, {})[name] = loc
    for ops, where in sorted(fusions.items()):
        if ops in cpu.fusions:
            continue
        chain = " + ".join(_short(o) for o in ops)
        unit = f"{source}::fusion:{'+'.join(_short(o) for o in ops)}"
        first_name, first = next(iter(where.items()))
        sites = "; ".join(f"{n} in {loc.path}:{loc.line}" + (f" ({loc.symbol})" if loc.symbol else "")
                          for n, loc in where.items())
        text = (f"Backend gap: fused {chain} (ops {', '.join(ops)}) is implemented in the "
                f"{', '.join(where)} backend{'s' if len(where) > 1 else ''} of {repo} and missing in the CPU "
                f"backend. Where: {sites}.\nFusing these ops runs them in one pass over the data instead of "
                f"{len(ops)} passes with intermediate tensors written to memory.\n\n"
                f"// {first.path}:{first.line} {first.symbol}\n{_excerpt(sources[first.path], first.line)}")
        origin = {"repo": repo, "revision": revision, "path": first.path, "start_line": first.line,
                  "end_line": first.line, "symbol": first.symbol, "backends": ", ".join(where),
                  "missing_in": CPU, "gap": "fusion", "ops": ",".join(ops)}
        yield Unit(unit, [Chunk(text, "backend-gap", unit, origin)])
    missing_ops: dict[str, dict[str, Location]] = {}
    for name, backend in others.items():
        for op, loc in backend.ops.items():
            if op not in cpu.ops:
                missing_ops.setdefault(op, {})[name] = loc
    for op, where in sorted(missing_ops.items()):
        unit = f"{source}::op:{_short(op)}"
        first = next(iter(where.values()))
        text = (f"Backend gap: op {op} is handled by the {', '.join(where)} backend(s) of {repo} and not by the "
                f"CPU backend's dispatch.\n\n// {first.path}:{first.line} {first.symbol}\n"
                f"{_excerpt(sources[first.path], first.line)}")
        origin = {"repo": repo, "revision": revision, "path": first.path, "start_line": first.line,
                  "end_line": first.line, "symbol": first.symbol, "backends": ", ".join(where),
                  "missing_in": CPU, "gap": "op", "ops": op}
        yield Unit(unit, [Chunk(text, "backend-gap", unit, origin)])
    for name, backend in sorted(backends.items()):
        unit = f"{source}::backend:{name}"
        fused = "; ".join(f"{' + '.join(_short(o) for o in ops)} ({loc.path}:{loc.line})"
                          for ops, loc in sorted(backend.fusions.items())) or "none found"
        text = (f"The {name} backend of {repo} dispatches {len(backend.ops)} ops and fuses these op sequences: "
                f"{fused}.\nOps: {', '.join(sorted(_short(o) for o in backend.ops))}.")
        origin = {"repo": repo, "revision": revision, "path": backend.paths[0] if backend.paths else "",
                  "symbol": "", "backends": name, "gap": "summary"}
        yield Unit(unit, [Chunk(text, "backend-gap", unit, origin)])
