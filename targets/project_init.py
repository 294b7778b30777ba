"""`readfirst init`: a readfirst.toml guessed from what a project's folder says about itself.

Pure functions over a folder: which files exist, and what its manifests (Makefile, CMakeLists.txt, Cargo.toml,
pyproject.toml / setup.py, package.json, go.mod, meson.build, pom.xml, build.gradle) say. Nothing of the project
runs, not even its build tool: a project may be hostile. It is read without following a link out of it, each file
capped in size, the walk capped in depth and entries.

Every guess carries where it came from, so that the user can check it; what is not found stays None and is
written as a commented placeholder.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..sandbox.image import is_debian_package
from ..sandbox.readback import read_text_inside
from .config_file import CONFIG_NAME, ConfigError, parse_config

MAX_FILE = 256 * 1024       # a manifest larger than this is not read
MAX_ENTRIES = 20000         # files and folders listed, at most
MAX_DEPTH = 8
# Never walked: what builds, package managers and version control leave, which says nothing of the sources.
SKIP_DIRS = {".git", ".hg", ".svn", "node_modules", "target", "build", "dist", "__pycache__", ".venv", "venv",
             ".tox", ".mypy_cache", ".pytest_cache", "_build", ".gradle", ".idea", ".vscode"}
JUDGE_DIRS = ("tests", "test", "__tests__", "bench", "benches", "benchmark", "benchmarks", "testdata")
NOT_HOT = {*JUDGE_DIRS, "examples", "example", "docs", "doc", "vendor", "third_party", "scripts", "tools", "cmake",
           "ci", "src/test"}
C_EXTS = (".c", ".h", ".cc", ".cpp", ".cxx", ".hpp", ".hh", ".hxx", ".s", ".S")
BENCH_NAMES = ("bench", "benchmark", "benchmarks", "perf")
METRIC_CONTRACT = ("The bench prints one line `METRIC name=value` per figure, per run (each run is one sample); "
                   "[objective] metric names the figure to improve.")


@dataclass
class Guess:
    value: Any          # None: nothing found
    source: str         # where the guess came from (or why there is none)


@dataclass
class InitGuess:
    root: Path
    kind: str           # the build system read: "Cargo", "Go", "npm", "Python", "Make", "CMake", ...
    name: Guess
    hot_paths: Guess
    protected: Guess
    build: Guess
    test: Guess
    bench: Guess
    metric: Guess       # (name, direction, unit)
    apt: Guess
    notes: list[str] = field(default_factory=list)

    def missing(self) -> list[str]:
        return [k for k in ("build", "test", "bench") if getattr(self, k).value is None]

    def checks(self) -> list[str]:
        """What the user must check, one line per guessed key, with where the guess came from."""
        lines = []
        for key in ("name", "hot_paths", "protected", "build", "test", "bench", "metric", "apt"):
            g: Guess = getattr(self, key)
            shown = "none found" if g.value is None else _show(key, g.value)
            lines.append(f"{key}: {shown} ({g.source})")
        return lines + self.notes

    def to_dict(self) -> dict[str, Any]:
        keys = ("name", "hot_paths", "protected", "build", "test", "bench", "metric", "apt")
        guesses = {k: {"value": _plain(getattr(self, k).value), "from": getattr(self, k).source} for k in keys}
        return {"root": str(self.root), "build_system": self.kind, "guesses": guesses, "missing": self.missing(),
                "notes": self.notes}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 3 and all(isinstance(v, str) for v in value):
        return dict(zip(("metric", "direction", "unit"), value))
    return value


def _show(key: str, value: Any) -> str:
    if key == "metric":
        return f"{value[0]} ({value[1]} is better)"
    if isinstance(value, (list, tuple)):
        return ", ".join(value) if value else "(none)"
    return f"`{value}`" if key in ("build", "test", "bench") else str(value)


class Folder:
    """A project's folder as listed once: regular files and folders only (a link is neither), bounded."""

    def __init__(self, root: Path):
        self.root = root
        self.files: set[str] = set()
        self.dirs: set[str] = set()
        self._walk()

    def _walk(self) -> None:
        pending = [("", 0)]
        while pending:
            rel, depth = pending.pop()
            try:
                entries = list(os.scandir(self.root / rel if rel else self.root))
            except OSError:
                continue
            for entry in sorted(entries, key=lambda e: e.name):
                if len(self.files) + len(self.dirs) >= MAX_ENTRIES:
                    return
                if not entry.name.isprintable():  # a newline in a name would end a TOML comment
                    continue
                path = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir(follow_symlinks=False):
                    if entry.name not in SKIP_DIRS and depth < MAX_DEPTH:
                        self.dirs.add(path)
                        pending.append((path, depth + 1))
                elif entry.is_file(follow_symlinks=False):
                    self.files.add(path)

    def has(self, rel: str) -> bool:
        return rel in self.files

    def read(self, rel: str) -> str | None:
        """The file's text, or None: absent, a link, not a regular file, or larger than MAX_FILE."""
        if rel not in self.files:
            return None
        try:
            return read_text_inside(self.root, rel, limit=MAX_FILE)
        except OSError:
            return None

    def top_dirs(self) -> list[str]:
        return sorted(d for d in self.dirs if "/" not in d)

    def under(self, folder: str, suffixes: tuple[str, ...]) -> list[str]:
        prefix = f"{folder}/" if folder else ""
        return sorted(f for f in self.files if f.startswith(prefix) and f.endswith(suffixes))

    def toml(self, rel: str) -> dict[str, Any]:
        text = self.read(rel)
        try:
            return tomllib.loads(text) if text else {}
        except tomllib.TOMLDecodeError:
            return {}


def _clean_name(name: Any, fallback: str) -> str:
    name = str(name).strip() if isinstance(name, str) else ""
    name = re.sub(r"[^\w.@/+-]", "", name)[:100]
    return name or fallback


def _hot_dirs(f: Folder, exts: tuple[str, ...]) -> list[str]:
    """Folders holding sources with these endings, `src/` alone when it holds them; files at the root by name."""
    if f.under("src", exts):
        globs = ["src/**"] + [f"{d}/**" for d in ("include", "lib") if f.under(d, exts)]
    else:
        globs = [f"{d}/**" for d in f.top_dirs() if d not in NOT_HOT and not d.startswith((".", "~"))
                 and f.under(d, exts)]
    root_files = [p for p in sorted(f.files) if "/" not in p and p.endswith(exts) and not p.startswith("~")]
    return globs + root_files[:50]


def _judges(f: Folder, build_files: list[str]) -> list[str]:
    return [f"{d}/**" for d in JUDGE_DIRS if d in f.dirs] + [b for b in build_files if f.has(b)]


# ---- per build system: each returns the fields it can say, or None when the folder is not one of its projects

def _cargo(f: Folder) -> dict[str, Any] | None:
    if not f.has("Cargo.toml"):
        return None
    data = f.toml("Cargo.toml")
    package, workspace = data.get("package") or {}, data.get("workspace") or {}
    members = [m for m in workspace.get("members", []) 
               if isinstance(m, str) and m.strip() and ".." not in m and not m.startswith(("/", "~"))]
    hot = (["src/**"] if f.under("src", (".rs",)) else []) + [f"{m.rstrip('/')}/src/**" for m in members[:50]]
    has_bench = bool(data.get("bench")) or "benches" in f.dirs
    notes = ["cargo: the sandbox has no network; dependencies must be vendored (`cargo vendor`) or the build "
             "fails"] if data.get("dependencies") or members else []
    return dict(
        kind="Cargo",
        name=Guess(_clean_name(package.get("name"), f.root.name),
                   "Cargo.toml [package] name" if package.get("name") else "the folder's name"),
        hot_paths=Guess(hot or ["**/*.rs"], "Cargo.toml: the crates' src/"),
        protected=Guess(_judges(f, ["Cargo.toml", "Cargo.lock"]), "tests/, benches/ and the manifest"),
        build=Guess("cargo build --release", "Cargo.toml"),
        test=Guess("cargo test --release", "Cargo.toml"),
        bench=Guess("cargo bench", "Cargo.toml [[bench]]" if data.get("bench") else "the benches/ folder")
        if has_bench else None,
        apt=Guess(["rustc", "cargo"], "Debian's Rust toolchain (rustc 1.63 in bookworm: check your crate's MSRV)"),
        notes=notes)


_GO_BENCH = re.compile(r"^func (Benchmark[A-Za-z0-9_]*)\(\w+ \*testing\.B\)", re.M)  # ASCII: a metric name


def _go(f: Folder) -> dict[str, Any] | None:
    if not f.has("go.mod"):
        return None
    module = re.search(r"^module\s+(\S+)", f.read("go.mod") or "", re.M)
    tests = [p for p in f.files if p.endswith("_test.go")]
    code_dirs = sorted({p.rsplit("/", 1)[0] if "/" in p else "" for p in f.files
                        if p.endswith(".go") and not p.endswith("_test.go")})
    hot = ["*.go"] if "" in code_dirs else sorted({f"{d.split('/')[0]}/**" for d in code_dirs
                                                   if d.split("/")[0] not in NOT_HOT
                                                   and not d.startswith((".", "~"))})
    benches = sorted(b for p in sorted(tests)[:200] for b in _GO_BENCH.findall(f.read(p) or ""))
    bench = None
    if benches:
        bench = Guess("go test -run '^$' -bench . -count 1 ./... | awk '{print} $1 ~ /^Benchmark/ && $4 == "
                      "\"ns/op\" {n = $1; sub(/-[0-9]+$/, \"\", n); gsub(/[^A-Za-z0-9_.-]/, \"_\", n); "
                      "print \"METRIC \" n \"_ns_per_op=\" $3}'",
                      f"{len(benches)} Benchmark function(s) in *_test.go, each printed as a METRIC line")
    return dict(
        kind="Go",
        name=Guess(_clean_name(module.group(1).rsplit("/", 1)[-1] if module else None, f.root.name),
                   "go.mod module" if module else "the folder's name"),
        hot_paths=Guess(hot + ["!*_test.go"], "the Go packages (folders with .go files), tests excluded"),
        protected=Guess(["*_test.go", *_judges(f, ["go.mod", "go.sum"])], "*_test.go, go.mod and go.sum"),
        build=Guess("go build ./...", "go.mod"),
        test=Guess("go test ./...", "go.mod"),
        bench=bench,
        metric=Guess((f"{benches[0]}_ns_per_op", "lower", "ns/op"), f"the first benchmark, {benches[0]}")
        if benches else None,
        apt=Guess(["golang-go"], "Debian's Go toolchain (Go 1.19 in bookworm: check go.mod's go line)"),
        notes=["go: the sandbox has no network; a module with requirements needs `go mod vendor`"]
        if "require" in (f.read("go.mod") or "") else [])


def _npm(f: Folder) -> dict[str, Any] | None:
    if not f.has("package.json"):
        return None
    try:
        data = json.loads(f.read("package.json") or "{}")
    except ValueError:
        data = {}
    data = data if isinstance(data, dict) else {}
    scripts = data.get("scripts") if isinstance(data.get("scripts"), dict) else {}
    deps = data.get("dependencies") or data.get("devDependencies")
    install = "npm ci && " if deps and f.has("package-lock.json") else ("npm install && " if deps else "")
    bench_script = next((s for s in ("bench", "benchmark") if s in scripts), None)
    exts = (".js", ".mjs", ".cjs", ".ts", ".jsx", ".tsx")
    return dict(
        kind="npm",
        name=Guess(_clean_name(data.get("name"), f.root.name),
                   "package.json name" if data.get("name") else "the folder's name"),
        hot_paths=Guess(_hot_dirs(f, exts), "folders holding .js/.ts sources"),
        protected=Guess(_judges(f, ["package.json", "package-lock.json"]), "tests, benches and the manifest"),
        build=Guess(f"{install}npm run build --if-present",
                    "package.json" + (" scripts.build" if "build" in scripts else " (no build script)")),
        test=Guess("npm test", "package.json scripts.test") if "test" in scripts else None,
        bench=Guess(f"npm run {bench_script}", f"package.json scripts.{bench_script}") if bench_script else None,
        apt=Guess(["nodejs", "npm"], "Debian's Node.js"),
        notes=["npm: the sandbox has no network; dependencies must be in the tree (node_modules or a cache)"]
        if deps else [])


def _python(f: Folder) -> dict[str, Any] | None:
    manifests = [m for m in ("pyproject.toml", "setup.py", "setup.cfg") if f.has(m)]
    if not manifests:
        return None
    pyproject = f.toml("pyproject.toml")
    texts = {p: f.read(p) or "" for p in ("pyproject.toml", "setup.py", "setup.cfg", "pytest.ini", "tox.ini",
                                          "requirements-dev.txt", "requirements.txt")}
    name, name_from = _python_name(f, pyproject)
    # what the manifests say, not C files lying around: a package may carry C sources it never compiles
    backend = str((pyproject.get("build-system") or {}).get("build-backend", ""))
    extension = bool(re.search(r"Extension\(|ext_modules", texts["setup.py"])) or backend.split(".")[0] in (
        "scikit_build_core", "mesonpy", "maturin") or "ext-modules" in str(pyproject.get("tool", {}))
    hot_paths = _python_hot(f, extension)
    hot = hot_paths.value
    if extension and f.has("setup.py"):
        build = Guess("python3 setup.py build_ext --inplace", "setup.py builds C extensions")
    elif extension:
        build = Guess("python3 -m pip install --no-build-isolation --no-deps -e .",
                      "pyproject.toml's extension build (Debian's pip may need --break-system-packages)")
    else:
        build = Guess(f"python3 -m compileall -q {' '.join(h.split('/')[0] for h in hot) or '.'}",
                      "pure Python: nothing to build; compileall catches syntax errors")
    named = [p for p, text in texts.items() if "pytest" in text] + [
        c for c in ("conftest.py", "tests/conftest.py") if f.has(c)]
    test = None
    if named:
        test = Guess("python3 -m pytest -q", "pytest named in " + "/".join(named))
    elif "tests" in f.dirs or "test" in f.dirs:
        folder = "tests" if "tests" in f.dirs else "test"
        top = " -t ." if f.has(f"{folder}/__init__.py") else ""
        test = Guess(f"python3 -m unittest discover -s {folder}{top}", f"the {folder}/ folder (unittest)")
    apt = ["python3-pytest"] if named else []
    apt += ["python3-dev", "python3-setuptools", *_build_requires(pyproject)] if extension else []
    return dict(kind="Python", name=Guess(name, name_from),
                hot_paths=hot_paths,
                protected=Guess(_judges(f, [*manifests, "conftest.py"]), "tests, benches and the manifest"),
                build=build, test=test, apt=Guess(list(dict.fromkeys(apt)), "the Python tools the commands use"
                                                  + (" and [build-system] requires" if extension else "")),
                notes=["python: the sandbox has no network; third-party imports must be Debian packages in "
                       "[sandbox] apt (python3-NAME)"] if re.search(r"dependencies\s*=\s*\[\s*\S",
                                                                    " ".join(texts.values())) else [])


def _python_hot(f: Folder, extension: bool) -> Guess:
    """The package folders (or src/), and the root's modules when the root is itself a package or holds the only
    ones; with a C extension, the folders of its C sources too (a bundled library: lz4's lz4libs/)."""
    if "src" in f.dirs and f.under("src", (".py",)):
        hot, said = ["src/**"], ["src/"]
    else:
        hot = [f"{d}/**" for d in f.top_dirs() if d.isidentifier() and d not in NOT_HOT
               and f.has(f"{d}/__init__.py")]
        said = ["the package folders"] if hot else []
        if not hot or f.has("__init__.py"):
            hot += [p for p in sorted(f.files) if "/" not in p and p.endswith(".py") and p[:-3].isidentifier()
                    and p not in ("setup.py", "conftest.py") and not p.startswith(("test", "bench"))]
            said.append("the root's modules")
    if extension:
        c_dirs = [g for g in _hot_dirs(f, C_EXTS) if g.endswith("/**") and g not in hot]
        hot += c_dirs
        said += ["the folders of its C sources"] if c_dirs else []
    return Guess(hot, " and ".join(said))


# The Debian package of a Python build requirement, where its name is not python3-NAME.
_DEBIAN_PYTHON = {"cython": "cython3", "setuptools": "python3-setuptools", "wheel": "python3-wheel"}


def _build_requires(pyproject: dict[str, Any]) -> list[str]:
    """[build-system] requires as Debian packages (python3-NAME): the sandbox cannot fetch them while building."""
    requires = (pyproject.get("build-system") or {}).get("requires")
    out = []
    for req in requires if isinstance(requires, list) else []:
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req) if isinstance(req, str) else None
        if m:
            key = re.sub(r"[._-]+", "-", m.group(1).lower())
            out.append(_DEBIAN_PYTHON.get(key, f"python3-{key}"))
    return [p for p in out if is_debian_package(p)][:20]


def _python_name(f: Folder, pyproject: dict[str, Any]) -> tuple[str, str]:
    project = pyproject.get("project") or {}
    if project.get("name"):
        return _clean_name(project["name"], f.root.name), "pyproject.toml [project] name"
    poetry = ((pyproject.get("tool") or {}).get("poetry") or {}).get("name")
    if poetry:
        return _clean_name(poetry, f.root.name), "pyproject.toml [tool.poetry] name"
    m = re.search(r"""\bname\s*=\s*['"]([^'"]+)['"]""", f.read("setup.py") or "")
    if m:
        return _clean_name(m.group(1), f.root.name), "setup.py name="
    return _clean_name(f.root.name, "project"), "the folder's name"


_MAKE_TARGET = re.compile(r"^([A-Za-z0-9_./ -]+?)\s*::?(?:\s|$)")


def make_targets(text: str) -> set[str]:
    """The targets a Makefile names at the start of a rule line (not `X := y`, not recipe lines)."""
    targets: set[str] = set()
    for line in text.splitlines():
        if not line.startswith(("\t", "#", " ")) and (m := _MAKE_TARGET.match(line)):
            targets.update(m.group(1).split())
    return targets


def _makefile(f: Folder) -> str | None:
    return next((m for m in ("GNUmakefile", "Makefile", "makefile") if f.has(m)), None)


def _make(f: Folder) -> dict[str, Any] | None:
    makefile = _makefile(f)
    text = f.read(makefile) if makefile else None
    if text is None or re.search(r"generated by cmake|cmake generated", text, re.I):
        return None
    targets = make_targets(text)
    test = next((t for t in ("test", "check", "tests") if t in targets), None)
    bench = next((t for t in BENCH_NAMES if t in targets), None)
    return dict(kind="Make", name=Guess(_clean_name(f.root.name, "project"), "the folder's name"),
                hot_paths=Guess(_hot_dirs(f, C_EXTS), "folders holding C/C++ sources"),
                protected=Guess(_judges(f, [makefile]), f"tests, benches and the {makefile}"),
                build=Guess('make -j"$(nproc)"', makefile),
                test=Guess(f"make {test}", f"{makefile} target `{test}`") if test else None,
                bench=Guess(f"make {bench}", f"{makefile} target `{bench}`") if bench else None,
                apt=Guess([], "gcc, g++, make and cmake are in the base image"))


def _cmake(f: Folder) -> dict[str, Any] | None:
    text = f.read("CMakeLists.txt")
    if text is None:
        return None
    project = re.search(r"^\s*project\s*\(\s*([A-Za-z0-9_.+-]+)", text, re.I | re.M)
    bench = re.search(r"^\s*add_executable\s*\(\s*([A-Za-z0-9_.+-]*bench[A-Za-z0-9_.+-]*)", text, re.I | re.M)
    has_tests = re.search(r"\b(enable_testing|add_test)\s*\(", text, re.I)
    return dict(kind="CMake",
                name=Guess(_clean_name(project.group(1) if project else None, f.root.name),
                           "CMakeLists.txt project()" if project else "the folder's name"),
                hot_paths=Guess(_hot_dirs(f, C_EXTS), "folders holding C/C++ sources"),
                protected=Guess(_judges(f, ["CMakeLists.txt"]), "tests, benches and the root CMakeLists.txt"),
                build=Guess('cmake -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j"$(nproc)"',
                            "CMakeLists.txt"),
                test=Guess("ctest --test-dir build --output-on-failure", "CMakeLists.txt enable_testing/add_test")
                if has_tests else None,
                bench=Guess(f"./build/{bench.group(1)}", f"CMakeLists.txt add_executable({bench.group(1)})")
                if bench else None,
                apt=Guess([], "gcc, g++, make and cmake are in the base image"))


def _meson(f: Folder) -> dict[str, Any] | None:
    text = f.read("meson.build")
    if text is None:
        return None
    project = re.search(r"project\s*\(\s*'([^']+)'", text)
    return dict(kind="Meson",
                name=Guess(_clean_name(project.group(1) if project else None, f.root.name),
                           "meson.build project()" if project else "the folder's name"),
                hot_paths=Guess(_hot_dirs(f, C_EXTS), "folders holding C/C++ sources"),
                protected=Guess(_judges(f, ["meson.build"]), "tests, benches and meson.build"),
                build=Guess("meson setup build --buildtype=release && meson compile -C build", "meson.build"),
                test=Guess("meson test -C build", "meson.build test()") if "test(" in text else None,
                bench=Guess("meson test -C build --benchmark", "meson.build benchmark()")
                if "benchmark(" in text else None,
                apt=Guess(["meson", "ninja-build"], "Debian's Meson and Ninja"))


def _jvm(f: Folder) -> dict[str, Any] | None:
    if f.has("pom.xml"):
        artifact = re.search(r"<artifactId>([^<]+)</artifactId>", f.read("pom.xml") or "")
        tool, manifest, build, test = "Maven", "pom.xml", "mvn -o -q package -DskipTests", "mvn -o -q test"
        name = artifact.group(1) if artifact else None
    elif gradle := next((g for g in ("build.gradle", "build.gradle.kts") if f.has(g)), None):
        tool, manifest, build, test, name = "Gradle", gradle, "gradle --offline assemble", "gradle --offline test", None
    else:
        return None
    return dict(kind=tool, name=Guess(_clean_name(name, f.root.name),
                                      f"{manifest} artifactId" if name else "the folder's name"),
                hot_paths=Guess(["src/main/**"], "the Maven/Gradle layout's src/main"),
                protected=Guess(["src/test/**", *_judges(f, [manifest])], "src/test/ and the build file"),
                build=Guess(build, manifest), test=Guess(test, manifest),
                apt=Guess(["default-jdk-headless", "maven" if tool == "Maven" else "gradle"], f"Debian's {tool}"),
                notes=[f"{tool.lower()}: the sandbox has no network; dependencies must be in a local repository"])


DETECTORS: tuple[Callable[[Folder], dict[str, Any] | None], ...] = (_cargo, _go, _npm, _python, _make, _cmake,
                                                                     _meson, _jvm)
LOOKED_FOR = ("Cargo.toml, go.mod, package.json, pyproject.toml, setup.py, Makefile, CMakeLists.txt, meson.build, "
              "pom.xml, build.gradle")


def _generic_bench(f: Folder) -> Guess | None:
    """A bench the build system does not name: a Makefile target, a script at the root or in a bench folder."""
    makefile = _makefile(f)
    targets = make_targets(f.read(makefile) or "") if makefile else set()
    if target := next((t for t in BENCH_NAMES if t in targets), None):
        return Guess(f"make {target}", f"{makefile} target `{target}`")
    runners = {".py": "python3", ".sh": "sh"}
    scripts = [p for p in ("measure.sh", "bench.sh", "benchmark.sh", "bench.py", "benchmark.py") if f.has(p)]
    for folder in ("bench", "benchmarks", "benchmark", "benches"):
        found = [p for p in f.under(folder, (".py", ".sh")) if p.count("/") == 1]
        named = [p for p in found if re.search(r"/(run|bench|measure)", p)]
        scripts += named or (found if len(found) == 1 else [])
    if scripts:
        script = scripts[0]
        return Guess(f"{runners[Path(script).suffix]} {shlex.quote(script)}", f"the script {script}")
    return None


def detect(root: Path) -> InitGuess:
    """The guesses for the project at `root`; ConfigError when no build system is found."""
    f = Folder(root)
    found = next((d for d in (detector(f) for detector in DETECTORS) if d is not None), None)
    if found is None:
        raise ConfigError(f"no build system found in {root} (looked for {LOOKED_FOR})")
    bench = found.get("bench") or _generic_bench(f)
    metric = found.get("metric") or Guess(("seconds", "lower", "s"), "a placeholder: what the bench prints is unknown")
    return InitGuess(root=root, kind=found["kind"], name=found["name"], hot_paths=found["hot_paths"],
                     protected=found["protected"], build=found["build"],
                     test=found.get("test") or Guess(None, "no test command found"),
                     bench=bench or Guess(None, "no benchmark found"), metric=metric, apt=found["apt"],
                     notes=found.get("notes", []))


def _q(value: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's."""
    return json.dumps(value)  # ASCII: TOML refuses a raw DEL, json leaves it raw otherwise


def _list(values: list[str]) -> str:
    return "[" + ", ".join(_q(v) for v in values) + "]"


def _step(section: str, g: Guess, timeout: int, missing: str) -> list[str]:
    if g.value is None:
        return [f"# [{section}]", f"# command = \"...\"   # CHECK: {missing}", f"# timeout_s = {timeout}", ""]
    return [f"[{section}]", f"command = {_q(g.value)}", f"# from {g.source}; CHECK it", f"timeout_s = {timeout}", ""]


def render(g: InitGuess) -> str:
    """The readfirst.toml text: each guess with where it came from; what is missing commented out."""
    metric, direction, unit = g.metric.value
    lines = [f"# Written by `readfirst init` from the project's {g.kind} files. Every value is a guess: check the",
             "# lines marked CHECK, then run `readfirst run --offline --source .`.", "",
             "[target]", f"name = {_q(g.name.value)}   # from {g.name.source}", 'source = "."',
             f"hot_paths = {_list(g.hot_paths.value)}",
             f"# CHECK: where forks' changes and the implementer's edits matter (from {g.hot_paths.source})",
             f"protected = {_list(g.protected.value)}",
             "# never patched: the benchmark and the tests are the judge", "",
             *_step("build", g.build, 600, "no build command found"),
             *_step("test", g.test, 600, "no test command found: the command that runs the tests (exit 0 = pass)"),
             *_step("bench", g.bench, 120, "no benchmark found: a command that prints `METRIC name=value` lines"),
             f"# {METRIC_CONTRACT}", "[objective]",
             f"metric = {_q(metric)}   # CHECK: {g.metric.source}", f"direction = {_q(direction)}",
             f"unit = {_q(unit)}", "", "[sandbox]", f"apt = {_list(g.apt.value)}   # from {g.apt.source}", ""]
    return "\n".join(lines)


def check_loads(text: str, root: Path) -> str | None:
    """Why the text would not load as the project's readfirst.toml, or None when it loads."""
    try:
        parse_config(text, root / CONFIG_NAME, source=str(root))
    except ConfigError as e:
        return str(e)
    return None


def write_config(path: Path, text: str, force: bool) -> None:
    """Write the file, never through a link; an existing file only with `force`."""
    # O_NONBLOCK: a FIFO in the file's place fails at once instead of waiting for a reader
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o644)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; readfirst init does not overwrite it (pass --force to "
                          f"replace it)") from None
    except OSError as e:
        raise ConfigError(f"{path} cannot be written ({e.strerror or type(e).__name__})") from None
    with os.fdopen(fd, "w") as out:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"{path} is not a regular file; readfirst init does not write into it")
        out.write(text)
