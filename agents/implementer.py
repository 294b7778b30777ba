"""The implementer role, LLM mode: a model turns one hypothesis into edits of a git worktree, and the edits become
the patch (`git diff` of the tree).

The model acts only through the tools below, each confined to the tree: a path that is absolute, has a '..'
component, reaches into .git, or resolves (through symlinks) outside the tree is refused, and the refusal goes
back to the model as the tool's result. The forks' trees (and the target's own sibling backends, which are in
its tree) can be read, never written: a fork is read through git at its recorded revision, only the files of the
folders the run was pointed at. Nothing the model says is ever run on the host: the only effects are file edits
inside the target tree. Text from papers, forks and build logs is fenced as untrusted data in the prompts.

One experiment is one conversation: the implementation, then each repair after a failed build or a failed check
continues it with that failure's evidence (the compiler's first errors, the check's figures), so the model
remembers what it tried. Steps are bounded per part and dollars per experiment (the budget's experiment cap).

Errors: BudgetExceeded and LLMUnavailable propagate (they end the run); any other failed call, a step limit, or a
model that changed nothing is an Implementation with `error` set, which the caller records as a failed experiment.
"""

from __future__ import annotations

import fnmatch
import inspect
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..sources import git
from .briefing import briefing_text, patch_digest
from .context import prompt_context
from .llm import LLMError, LLMUnavailable, chunk_origin, data_block, render_prompt, text_block

AGENT = "implementer"
MAX_READ_LINES = 300
MAX_READ_CHARS = 24_000
MAX_SEARCH_MATCHES = 80
MAX_LIST_ENTRIES = 400
MAX_WRITE_BYTES = 1_000_000
# Older tool outputs are replaced by a stub once all of them together pass this size: a 20-step loop that reads
# big files would otherwise outgrow the context window, and pay for every byte again at each step.
KEEP_TOOL_OUTPUT_CHARS = 200_000
ELIDED = "[output elided to save context; call the tool again if you still need it]"

TARGET = "target"  # the name of the tree being edited, in the tools' `tree` argument
MAX_SOURCE_FILES_SCANNED = 5000  # a fork searched without git: at most this many files are read
MAX_CONVERSATIONS = 16  # experiments whose conversation is kept for a repair (the rest start a new one)
_PATH = {"type": "string", "description": "path relative to the root of the target tree"}
TOOL_SPECS: list[dict[str, Any]] = [
    {"name": "read_file", "description": f"Read a text file with line numbers (at most {MAX_READ_LINES} lines "
     "per call; page with start_line/end_line).",
     "input_schema": {"type": "object", "properties": {"path": _PATH, "start_line": {"type": "integer"},
                                                       "end_line": {"type": "integer"}}, "required": ["path"]}},
    {"name": "search", "description": "Search file contents with an extended regular expression (a fixed string "
     "when it is not a valid regex). Returns path:line:text, bounded.",
     "input_schema": {"type": "object", "properties": {
         "pattern": {"type": "string"},
         "path_glob": {"type": "string", "description": "limit to paths matching this glob, e.g. src/**/*.c"}},
         "required": ["pattern"]}},
    {"name": "list_dir", "description": "List a directory of the tree ('.' is the root); directories end in '/'.",
     "input_schema": {"type": "object", "properties": {"path": _PATH}, "required": ["path"]}},
    {"name": "replace_in_file", "description": "Replace one exact, unique occurrence of `old` with `new`.",
     "input_schema": {"type": "object", "properties": {"path": _PATH, "old": {"type": "string"},
                                                       "new": {"type": "string"}},
                      "required": ["path", "old", "new"]}},
    {"name": "write_file", "description": "Create or overwrite a file with `content`.",
     "input_schema": {"type": "object", "properties": {"path": _PATH, "content": {"type": "string"}},
                      "required": ["path", "content"]}},
]


READ_TOOLS = ("read_file", "search", "list_dir")


def tool_specs(sources: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The tools, with a `tree` argument on the read tools when there are fork trees to read."""
    if not sources:
        return TOOL_SPECS
    tree = {"type": "string", "enum": [TARGET, *sources],
            "description": f"which tree to read: '{TARGET}' (the tree you edit; the default) or a fork's, read-only"}
    out = []
    for spec in TOOL_SPECS:
        if spec["name"] in READ_TOOLS:
            schema = spec["input_schema"]
            spec = {**spec, "input_schema": {**schema, "properties": {**schema["properties"], "tree": tree}}}
        out.append(spec)
    return out


class ToolRefused(Exception):
    """A tool call the tree does not allow; its message is the tool result the model sees."""


@dataclass
class Implementation:
    patch: str | None          # git diff of the tree against its HEAD; None when the tree is unchanged
    summary: str               # the model's final text
    steps: int                 # model calls made
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # {name, input, ok[, message]}
    error: str | None = None   # set: not a candidate (the tree may still hold partial edits)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.patch)

    def ledger_info(self) -> dict[str, Any]:
        """The ledger's `llm` column: dollars and tokens first, then what the model did."""
        return {"usd": round(self.cost_usd, 6), "tokens": self.input_tokens + self.output_tokens,
                "input_tokens": self.input_tokens, "output_tokens": self.output_tokens, "steps": self.steps,
                "error": self.error, "summary": self.summary, "tool_calls": self.tool_calls}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TreeTools:
    """The model's only access to the target: read, search, list, and edit files inside `tree`."""

    def __init__(self, tree: Path, *, protected: Sequence[str] = (), sources: Mapping[str, Any] | None = None):
        self.root = Path(tree).resolve()
        self.protected = tuple(protected)
        # Fork trees by name (protocols.Tree): read-only, through their own files() and read().
        self.sources = {name: t for name, t in (sources or {}).items() if name != TARGET}

    @property
    def specs(self) -> list[dict[str, Any]]:
        return tool_specs(sorted(self.sources))

    def call(self, name: str, arguments: Any) -> tuple[bool, str]:
        """(ok, text) for one tool_use; refusals and I/O errors become text for the model, never exceptions."""
        handler = {"read_file": self.read_file, "search": self.search, "list_dir": self.list_dir,
                   "replace_in_file": self.replace_in_file, "write_file": self.write_file}.get(name)
        if handler is None:
            return False, f"unknown tool {name!r}; the tools are read_file, search, list_dir, replace_in_file, write_file"
        if not isinstance(arguments, Mapping):
            return False, "tool input must be an object"
        arguments = dict(arguments)
        tree = arguments.pop("tree", TARGET) if name in READ_TOOLS else TARGET
        if tree not in (TARGET, None, ""):
            if tree not in self.sources:
                return False, (f"unknown tree {tree!r}; the trees are " + ", ".join([TARGET, *sorted(self.sources)]))
            handler = {"read_file": self.read_source_file, "search": self.search_source,
                       "list_dir": self.list_source_dir}[name]
            arguments["tree"] = tree
        try:
            inspect.signature(handler).bind(**arguments)
        except TypeError as e:  # missing or unknown argument names
            return False, f"bad arguments for {name}: {e}"
        try:
            return True, handler(**arguments)
        except ToolRefused as e:
            return False, str(e)
        except (OSError, UnicodeError, ValueError) as e:
            return False, f"{name} failed: {e}"

    def resolve(self, path: Any, *, write: bool = False) -> Path:
        if not isinstance(path, str) or not path.strip() or "\x00" in path:
            raise ToolRefused("a path relative to the tree root is required")
        pure = PurePosixPath(path.replace("\\", "/"))
        if pure.is_absolute() or path.startswith("~") or re.match(r"^[A-Za-z]:", path):
            raise ToolRefused(f"refused: {path!r} is absolute; use a path relative to the tree root")
        if ".." in pure.parts:
            raise ToolRefused(f"refused: {path!r} contains '..'; paths must stay inside the tree")
        if ".git" in (p.lower() for p in pure.parts):
            raise ToolRefused(f"refused: {path!r} is git metadata, not source")
        full = (self.root / pure).resolve()
        if full != self.root and self.root not in full.parents:
            raise ToolRefused(f"refused: {path!r} resolves outside the tree (through a symlink)")
        relative = full.relative_to(self.root).as_posix()
        if ".git" in relative.lower().split("/"):
            raise ToolRefused(f"refused: {path!r} resolves into git metadata")
        if write:
            for pattern in self.protected:
                if fnmatch.fnmatch(relative, pattern) or fnmatch.fnmatch(pure.as_posix(), pattern):
                    raise ToolRefused(f"refused: {path!r} is protected ({pattern}); tests and benchmarks are "
                                      "read-only")
        return full

    def _text(self, full: Path, path: str) -> str:
        if not full.is_file():
            raise ToolRefused(f"{path!r} is not a file" + ("" if full.exists() else " (it does not exist)"))
        data = full.read_bytes()
        if b"\x00" in data[:8192]:
            raise ToolRefused(f"{path!r} is a binary file")
        return data.decode("utf-8", errors="replace")

    def read_file(self, path: str, start_line: int | None = None, end_line: int | None = None) -> str:
        return _numbered(self._text(self.resolve(path), path).splitlines(), path, start_line, end_line)

    # -- the forks' trees: read-only, only the files the tree lists ------------------------------------------------
    def _source_path(self, tree: str, path: Any, *, directory: bool = False) -> str:
        if not isinstance(path, str) or "\x00" in path:
            raise ToolRefused("a path relative to the tree root is required")
        pure = PurePosixPath(path.replace("\\", "/").strip() or ".")
        if pure.is_absolute() or path.startswith("~") or re.match(r"^[A-Za-z]:", path):
            raise ToolRefused(f"refused: {path!r} is absolute; use a path relative to the root of {tree}")
        if ".." in pure.parts:
            raise ToolRefused(f"refused: {path!r} contains '..'; paths must stay inside {tree}")
        if ".git" in (p.lower() for p in pure.parts):
            raise ToolRefused(f"refused: {path!r} is git metadata, not source")
        relative = pure.as_posix()
        if directory or relative == ".":
            return "" if relative == "." else relative.rstrip("/") + "/"
        if relative not in set(self.sources[tree].files()):
            raise ToolRefused(f"{path!r} is not a file of {tree} (only the folders this run reads are open)")
        return relative

    def read_source_file(self, tree: str, path: str, start_line: int | None = None,
                         end_line: int | None = None) -> str:
        relative = self._source_path(tree, path)
        text = self.sources[tree].read(relative)
        if text is None:
            raise ToolRefused(f"{path!r} in {tree} is not a text file")
        return _numbered(text.splitlines(), f"{tree}:{relative}", start_line, end_line)

    def list_source_dir(self, tree: str, path: str = ".") -> str:
        prefix = self._source_path(tree, path, directory=True)
        entries = sorted({f[len(prefix):].split("/", 1)[0] + ("/" if "/" in f[len(prefix):] else "")
                          for f in self.sources[tree].files() if f.startswith(prefix)})
        if not entries:
            raise ToolRefused(f"{path!r} is not a directory of {tree} (or not one this run reads)")
        shown = entries[:MAX_LIST_ENTRIES]
        return "\n".join(shown) + (f"\n[{len(entries) - len(shown)} more entries]" if len(entries) > len(shown) else "")

    def search_source(self, tree: str, pattern: str, path_glob: str | None = None) -> str:
        if not isinstance(pattern, str) or not pattern:
            raise ToolRefused("pattern must be a non-empty string")
        if path_glob:
            self._source_path(tree, path_glob.rstrip("/") or ".", directory=True)
        source = self.sources[tree]
        try:
            regex = re.compile(pattern)
            note = ""
        except re.error:
            regex = re.compile(re.escape(pattern))
            note = "[not a valid regular expression; searched as a fixed string]\n"
        matches: list[str] = []
        files = [f for f in source.files() if not path_glob or fnmatch.fnmatch(f, path_glob)
                 or f.startswith(path_glob.rstrip("/") + "/")]
        for path in files[:MAX_SOURCE_FILES_SCANNED]:
            text = source.read(path)
            if not text or regex.search(text) is None:
                continue
            hits = 0
            for number, line in enumerate(text.splitlines(), 1):
                if regex.search(line):
                    matches.append(f"{path}:{number}:{line}")
                    hits += 1
                    if hits >= 20:
                        break
            if len(matches) > MAX_SEARCH_MATCHES:
                break
        if not matches:
            return note + "no matches"
        shown = [m if len(m) <= 240 else m[:240] + " [...]" for m in matches[:MAX_SEARCH_MATCHES]]
        more = " (or more)" if len(matches) > MAX_SEARCH_MATCHES else ""
        return note + "\n".join(shown) + (f"\n[more matches{more} not shown; narrow the pattern or path_glob]"
                                          if len(matches) > len(shown) else "")

    def search(self, pattern: str, path_glob: str | None = None) -> str:
        if not isinstance(pattern, str) or not pattern:
            raise ToolRefused("pattern must be a non-empty string")
        pathspec = []
        if path_glob:
            self.resolve(path_glob.rstrip("/") or ".")  # same rules as any path; the glob is matched by git
            pathspec = [f":(glob){path_glob}"]
        note = ""
        for mode in ("-E", "-F"):
            # argv, never a shell: the pattern is one argument after -e. Bounded per file and in time.
            proc = subprocess.run(["git", "-C", str(self.root), "grep", "-n", "-I", "--untracked", "--no-color",
                                   "--max-count=20", mode, "-e", pattern, "--", *pathspec],
                                  capture_output=True, text=True, errors="replace", timeout=30)
            if proc.returncode != 128:
                break
            note = "[not a valid regular expression; searched as a fixed string]\n"
        if proc.returncode not in (0, 1):
            raise ToolRefused(f"search failed: {proc.stderr.strip()[-300:]}")
        matches = proc.stdout.splitlines()
        if not matches:
            return note + "no matches"
        shown = [m if len(m) <= 240 else m[:240] + " [...]" for m in matches[:MAX_SEARCH_MATCHES]]
        more = len(matches) - len(shown)
        return note + "\n".join(shown) + (f"\n[{more} more matches not shown; narrow the pattern or path_glob]"
                                          if more > 0 else "")

    def list_dir(self, path: str = ".") -> str:
        full = self.resolve(path)
        if not full.is_dir():
            raise ToolRefused(f"{path!r} is not a directory")
        entries = sorted(e for e in full.iterdir() if e.name != ".git")
        shown = [e.name + ("/" if e.is_dir() else "") for e in entries[:MAX_LIST_ENTRIES]]
        more = len(entries) - len(shown)
        return "\n".join(shown) + (f"\n[{more} more entries]" if more > 0 else "") if shown else "(empty)"

    def replace_in_file(self, path: str, old: str, new: str) -> str:
        full = self.resolve(path, write=True)
        if not isinstance(old, str) or not isinstance(new, str) or not old:
            raise ToolRefused("old must be a non-empty string and new a string")
        text = self._text(full, path)
        count = text.count(old)
        if count == 0:
            raise ToolRefused(f"the old text was not found in {path}; read the file again and copy the exact text, "
                              "whitespace included, without line numbers")
        if count > 1:
            raise ToolRefused(f"the old text occurs {count} times in {path}; include more surrounding lines so it "
                              "is unique")
        line = text[:text.index(old)].count("\n") + 1
        full.write_text(text.replace(old, new, 1), encoding="utf-8", newline="")
        return f"replaced 1 occurrence in {path} at line {line}"

    def write_file(self, path: str, content: str) -> str:
        full = self.resolve(path, write=True)
        if not isinstance(content, str):
            raise ToolRefused("content must be a string")
        if len(content.encode()) > MAX_WRITE_BYTES:
            raise ToolRefused(f"content is larger than {MAX_WRITE_BYTES} bytes")
        if full.is_dir():
            raise ToolRefused(f"{path!r} is a directory")
        self.resolve(PurePosixPath(path).parent.as_posix() or ".", write=True)
        full.parent.mkdir(parents=True, exist_ok=True)
        existed = full.exists()
        full.write_text(content, encoding="utf-8", newline="")
        if not existed:
            # intent-to-add: a new file shows up in `git diff HEAD` without staging its content
            git(self.root, "add", "--intent-to-add", "--", full.relative_to(self.root).as_posix())
        return f"{'overwrote' if existed else 'created'} {path} ({len(content.encode())} bytes)"


def _numbered(lines: list[str], path: str, start_line: Any = None, end_line: Any = None) -> str:
    """Lines start_line..end_line with their numbers, at most MAX_READ_LINES and MAX_READ_CHARS, and a note
    saying where the next page starts."""
    if not lines:
        return f"{path} is empty"
    start = max(1, int(start_line or 1))
    end = min(len(lines), int(end_line) if end_line else start + MAX_READ_LINES - 1, start + MAX_READ_LINES - 1)
    shown, size = [], 0
    for number in range(start, end + 1):
        line = f"{number:6d}\t{lines[number - 1]}"
        if size + len(line) > MAX_READ_CHARS:
            end = number - 1
            break
        shown.append(line)
        size += len(line) + 1
    note = f"[{path}: lines {start}-{end} of {len(lines)}]"
    if end < len(lines):
        note += f" [more: read_file with start_line={end + 1}]"
    return note + "\n" + "\n".join(shown)


def tree_diff(tree: Path) -> str | None:
    """The tree's edits against its HEAD as a git patch (external diff drivers and colour off)."""
    diff = git(Path(tree), "diff", "HEAD", "--no-color", "--no-ext-diff", "--binary").stdout
    return diff or None


def hypothesis_block(hypothesis: Mapping[str, Any]) -> str:
    """A hypothesis as the implementer reads it: fenced like any untrusted text, since a planner that read papers
    and forks wrote it (a title can carry an injected instruction as well as a chunk can)."""
    files = ", ".join(str(f) for f in hypothesis.get("files") or []) or "(none given)"
    hot = f"\nhot spot it attacks (the profile's share of the time): {hypothesis['hot_spot']}" \
        if hypothesis.get("hot_spot") else ""
    return data_block("hypothesis", f"title: {hypothesis.get('title', '')}\nrationale: "
                      f"{hypothesis.get('rationale', '')}\nfiles likely relevant (hints, not a limit): {files}{hot}",
                      limit=6000, id=hypothesis.get("id", "?"))


def briefing_blocks(hypothesis: Mapping[str, Any]) -> tuple[str, str]:
    """(facts, ledger) for the implementer's prompt: what the planner was told, from the hypothesis's briefing
    (workflow.hypothesize puts it there). The ledger is fenced: models that read untrusted text wrote its titles."""
    briefing = hypothesis.get("briefing")
    if not isinstance(briefing, Mapping):
        return "(none)", "(nothing yet)"
    facts, ledger = briefing_text(briefing)
    return facts, data_block("ledger", ledger, limit=14_000) if ledger else "(nothing yet)"


def sources_note(sources: Mapping[str, Any], about: Mapping[str, Any] | None = None) -> str:
    """The trees the implementer may read besides its own, and where the target keeps its other backends (in the
    target's own words: `about` is its describe())."""
    where = prompt_context(about)["siblings_where"]
    if not sources:
        return " ".join(s for s in ("No fork tree is open in this run.", where) if s)
    return " ".join(s for s in ("Read-only trees you can read with read_file, search and list_dir (argument tree): "
                                + ", ".join(sorted(sources)) + ".", where) if s)


def implement(llm: Any, hypothesis: Mapping[str, Any], tree: Path, *, max_steps: int = 20,
              context: Sequence[Mapping[str, Any]] = (), experiment: str | None = None,
              protected: Sequence[str] = (), max_tokens: int = 8192, sources: Mapping[str, Any] | None = None,
              conversation: list[dict[str, Any]] | None = None, about: Mapping[str, Any] | None = None
              ) -> Implementation:
    """Let the model implement `hypothesis` in `tree`; the patch is the tree's diff when the model ends its turn.
    `sources`: fork trees it may read. `conversation`: a list the messages are kept in, for a later repair."""
    # Evidence is a chunk or a finding's digest ({"id", "origin", "text" or "snippet"}); bare ids have nothing to show.
    evidence = [data_block("untrusted-source", str(c.get("text") or c.get("snippet") or ""), id=c.get("id"),
                           origin=chunk_origin(c))
                for c in [*(hypothesis.get("citations") or []), *(hypothesis.get("evidence") or [])]
                if isinstance(c, Mapping)]
    excerpts = [data_block("untrusted-source", str(c.get("text", "")), limit=4000, id=c.get("id"),
                           origin=chunk_origin(c)) for c in context]
    facts, ledger = briefing_blocks(hypothesis)
    task = render_prompt("implementer_task", hypothesis=hypothesis_block(hypothesis), facts=facts, ledger=ledger,
                         sources=sources_note(sources or {}, about), citations="\n\n".join(evidence) or "(none)",
                         context="\n\n".join(excerpts) or "(none)")
    messages = conversation if conversation is not None else []
    messages[:] = [{"role": "user", "content": task}]
    return _converse(llm, messages, TreeTools(tree, protected=protected, sources=sources), max_steps=max_steps,
                     max_tokens=max_tokens, experiment=experiment or hypothesis.get("id"), about=about)


def repair(llm: Any, hypothesis: Mapping[str, Any], tree: Path, evidence: str, *, max_steps: int = 10,
           experiment: str | None = None, protected: Sequence[str] = (), max_tokens: int = 8192,
           failure: str = "build", sources: Mapping[str, Any] | None = None,
           conversation: list[dict[str, Any]] | None = None, about: Mapping[str, Any] | None = None
           ) -> Implementation:
    """Continue from the tree as it is (the failed change still in it), given what failed: `failure` names it
    ("build", or the check: "tests", "logits"...) and `evidence` says how (the compiler's first errors, the
    check's figures). With the implementation's `conversation`, the repair continues it; else it starts anew."""
    before = tree_diff(tree)
    diff = data_block("current-diff", before or "(no changes)", limit=20_000)
    fenced = data_block("build-log", evidence, limit=12_000, stage=failure)
    what = ("does not build" if failure == "build" else
            f"builds, but fails the {failure} check (a wrong result is discarded at any speed)")
    if conversation:
        note = render_prompt("implementer_followup", what=what, diff=diff, evidence=fenced)
        last = conversation[-1]
        if last["role"] == "user":  # the part before ended on tool results (a step limit): one user turn
            content = last["content"]
            blocks = [text_block(content)] if isinstance(content, str) else list(content)
            conversation[-1] = {**last, "content": [*blocks, text_block(note)]}
        else:
            conversation.append({"role": "user", "content": note})
        messages = conversation
    else:
        task = render_prompt("implementer_repair", what=what, hypothesis=hypothesis_block(hypothesis), diff=diff,
                             evidence=fenced)
        messages = conversation if conversation is not None else []
        messages[:] = [{"role": "user", "content": task}]
    result = _converse(llm, messages, TreeTools(tree, protected=protected, sources=sources), max_steps=max_steps,
                       max_tokens=max_tokens, experiment=experiment or hypothesis.get("id"), about=about)
    if result.error is None and result.patch == before:
        # the same patch would fail the same way: not worth building again
        result.error = "the repair changed nothing" + (f": {result.summary[:500]}" if result.summary else "")
    return result


def worktree_implementer(llm: Any, repo: Path, *, protected: Sequence[str] = (),
                         context: Callable[[Mapping[str, Any]], Sequence[Mapping[str, Any]]] | None = None,
                         max_steps: int = 20, repair_steps: int = 10, scratch: Path | None = None,
                         sources: Mapping[str, Any] | None = None, about: Mapping[str, Any] | None = None
                         ) -> Callable[[dict[str, Any], str], tuple[str | None, dict[str, Any]]]:
    """The experiment's `implement(hypothesis, base_commit) -> (patch or None, ledger info)`. Each call works in a
    fresh detached worktree of `repo` at the base commit, removed afterwards, so parallel workers never share a
    tree. A hypothesis carrying "repair" ({"failure", "evidence"}) and "patch" is a repair: the patch is applied
    first, then repaired in the same conversation as its implementation (when this process still holds it).
    The excerpts shown besides the hypothesis: `context(hypothesis)`, or else the chunks it carries as "context".
    `sources`: the fork trees the model may read; `about`: the target's describe(). A patch that makes the same
    edit as a tried experiment (its briefing's digests) is not returned: it would measure the same thing again."""
    conversations: dict[tuple[str, str], list[dict[str, Any]]] = {}
    lock = threading.Lock()

    def run(hypothesis: dict[str, Any], base_commit: str) -> tuple[str | None, dict[str, Any]]:
        key = (str(hypothesis.get("id")), base_commit)
        with _worktree(Path(repo), base_commit, scratch) as tree:
            failed = hypothesis.get("repair")
            if isinstance(failed, Mapping):
                # --index: files the patch creates are tracked, so the repaired diff still contains them
                git(tree, "apply", "--index", "--whitespace=nowarn", "-", input=hypothesis.get("patch") or "")
                with lock:
                    conversation = conversations.get(key)
                result = repair(llm, hypothesis, tree, str(failed.get("evidence") or ""),
                                failure=str(failed.get("failure") or "build"), max_steps=repair_steps,
                                protected=protected, sources=sources, conversation=conversation, about=about)
            else:
                conversation = []
                result = implement(llm, hypothesis, tree, max_steps=max_steps, protected=protected, sources=sources,
                                   context=context(hypothesis) if context else hypothesis.get("context") or (),
                                   conversation=conversation, about=about)
                with lock:
                    conversations[key] = conversation
                    while len(conversations) > MAX_CONVERSATIONS:
                        conversations.pop(next(iter(conversations)))
                repeated = _repeated_edit(result.patch, hypothesis) if result.ok else None
                if repeated:
                    result.error = (f"the patch makes the same edit as {repeated.get('id')} "
                                    f"'{repeated.get('title')}' ({repeated.get('decision')}); not measured again")
        return (result.patch if result.ok else None), result.ledger_info()
    return run


def _repeated_edit(patch: str | None, hypothesis: Mapping[str, Any]) -> Mapping[str, Any] | None:
    digest = patch_digest(patch)
    tried = (hypothesis.get("briefing") or {}).get("tried") or []
    return next((t for t in tried if digest and t.get("digest") == digest), None)


@contextmanager
def _worktree(repo: Path, commit: str, scratch: Path | None):
    path = Path(tempfile.mkdtemp(prefix="readfirst-implement-", dir=scratch))
    try:
        git(repo, "worktree", "add", "--detach", "--force", str(path), commit)
        yield path
    finally:
        git(repo, "worktree", "remove", "--force", str(path), check=False)
        shutil.rmtree(path, ignore_errors=True)
        git(repo, "worktree", "prune", check=False)


def _converse(llm: Any, messages: list[dict[str, Any]], tools: TreeTools, *, max_steps: int, max_tokens: int,
              experiment: str | None, about: Mapping[str, Any] | None = None) -> Implementation:
    """The tool loop over `messages` (extended in place: a repair continues the same list)."""
    system = render_prompt("implementer_system", **prompt_context(about))
    specs = tools.specs
    result = Implementation(patch=None, summary="", steps=0)

    def finish(error: str | None = None) -> Implementation:
        result.patch = tree_diff(tools.root)
        if error is None and result.patch is None:
            error = "the model made no change" + (f": {result.summary[:500]}" if result.summary else "")
        result.error = error
        return result

    while result.steps < max_steps:
        try:
            response = llm.complete(messages, system=system, tools=specs, max_tokens=max_tokens, agent=AGENT,
                                    experiment=experiment)
        except LLMUnavailable:
            raise  # a configuration problem (key, model) that every later call shares: it ends the run
        except LLMError as e:
            return finish(f"model call failed: {e}")
        result.steps += 1
        result.input_tokens += response.input_tokens + response.cache_write_tokens + response.cache_read_tokens
        result.output_tokens += response.output_tokens
        result.cost_usd += response.cost_usd
        if response.text:
            result.summary = response.text
        messages.append({"role": "assistant", "content": response.content})
        uses = response.tool_uses
        if uses:
            cut = response.stop_reason == "max_tokens"
            answers = []
            for use in uses:
                ok, text = ((False, "not run: your reply was cut at the output limit; make smaller edits")
                            if cut else tools.call(use["name"], use.get("input")))
                result.tool_calls.append({"name": use["name"], "input": use.get("input"), "ok": ok,
                                          **({} if ok else {"message": text[:300]})})
                answers.append({"type": "tool_result", "tool_use_id": use["id"], "content": text,
                                **({} if ok else {"is_error": True})})
            messages.append({"role": "user", "content": answers})
            _elide_old_outputs(messages)
        elif response.stop_reason == "max_tokens":
            messages.append({"role": "user", "content": "Your reply was cut at the output limit. Continue; keep "
                                                        "each step short."})
        elif response.stop_reason == "refusal":
            return finish(f"the model refused: {response.text[:500]}")
        else:  # end_turn or a stop sequence: the model is done
            return finish()
    return finish(f"the model did not finish within {max_steps} steps")


def _elide_old_outputs(messages: list[dict[str, Any]]) -> None:
    """Stub out the oldest tool outputs (never the latest turn's) until all of them fit KEEP_TOOL_OUTPUT_CHARS.
    Messages are replaced, not edited in place, so a trace that kept an earlier request still shows what was sent."""
    def outputs(message: dict[str, Any]) -> list[dict[str, Any]]:
        if message["role"] != "user" or not isinstance(message["content"], list):
            return []
        return [b for b in message["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]

    total = sum(len(str(b["content"])) for m in messages for b in outputs(m))
    for index, message in enumerate(messages[:-1]):
        if total <= KEEP_TOOL_OUTPUT_CHARS:
            return
        if not any(b["content"] != ELIDED for b in outputs(message)):
            continue
        content = []
        for block in message["content"]:
            if isinstance(block, dict) and block.get("type") == "tool_result" and block["content"] != ELIDED:
                total -= len(str(block["content"])) - len(ELIDED)
                block = {**block, "content": ELIDED}
            content.append(block)
        messages[index] = {**message, "content": content}
