"""readfirst.toml: a project described by its build, test and benchmark commands, and what to optimize.

Read once, validated whole: a bad file is one sentence naming the key and what is wrong, never a traceback.
The bench command prints one line `METRIC name=value` per metric, per run (the convention pi-autoresearch's
measure.sh and SkyPilot's autoresearch example use); each run of it is one sample.
"""

from __future__ import annotations

import math
import re
import statistics
import tomllib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ReadfirstError
from ..records import Guard, Objective
from ..sandbox.image import is_debian_package
from ..sandbox.readback import read_bytes_inside

CONFIG_NAME = "readfirst.toml"
MAX_CONFIG_BYTES = 1 << 20  # a project's description, not its data
METRIC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")  # use fullmatch
_METRIC_LINE = re.compile(r"^\s*METRIC\s+([A-Za-z_][A-Za-z0-9_.\-]*)\s*=\s*(\S+)")


class ConfigError(ReadfirstError):
    """A readfirst.toml that cannot be used as written."""


@dataclass(frozen=True)
class Step:
    """A command of the project's own (build, test, bench), run in the sandbox from the project's root."""
    command: str
    timeout_s: float


@dataclass(frozen=True)
class Variant:
    """An offline candidate the file lists: environment for the build or for the runs."""
    title: str
    kind: str                  # "build" | "runtime"
    env: dict[str, str]
    rationale: str = ""


@dataclass(frozen=True)
class ClaimedTime:
    """How many seconds of work one bench run's objective figure accounts for, so that the host's clock for the
    same run can hold it to account (code under test runs inside the bench and can print figures of its own).
    A rate over a fixed amount of work (`work`: 80 for 80 MB at MB/s) claims work / value seconds; a time
    (`seconds_per_unit`: 1 for seconds, 0.001 for ms) claims value * seconds_per_unit."""
    work: float | None = None
    seconds_per_unit: float = 1.0

    def seconds(self, value: float) -> float | None:
        if value <= 0:
            return None
        return self.work / value if self.work is not None else value * self.seconds_per_unit


@dataclass(frozen=True)
class ProjectConfig:
    path: Path                 # the file itself
    name: str
    source: str                # a local path (resolved against the file's folder) or a git URL
    ref: str | None
    hot_paths: tuple[str, ...]
    protected: tuple[str, ...]
    description: str
    facts: tuple[str, ...]
    build: Step
    test: Step
    bench: Step
    bench_cpus: int            # CPUs a benchmark run is pinned to (0: every CPU this process may use)
    objective: Objective
    apt: tuple[str, ...]       # Debian packages the sandbox image needs beyond the base toolchain
    env: dict[str, str]        # environment of every command
    variants: tuple[Variant, ...]
    queries: dict[str, list[str]] = field(default_factory=dict)  # "research", "competitors"
    claim: ClaimedTime | None = None    # how the objective's figure says how long a run worked; None: it does not
    language: str = ""                  # what the roles are told the project is written in ("C", "Rust")


_SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "target": {"name": str, "source": str, "ref": str, "hot_paths": list, "protected": list, "description": str,
               "facts": list, "language": str},
    "build": {"command": str, "timeout_s": (int, float)},
    "test": {"command": str, "timeout_s": (int, float)},
    "bench": {"command": str, "timeout_s": (int, float), "cpus": int},
    "objective": {"metric": str, "direction": str, "min_effect": (int, float), "unit": str, "guards": dict,
                  "work": (int, float), "seconds_per_unit": (int, float)},
    "sandbox": {"apt": list, "env": dict},
    "reading": {"queries": list, "fork_queries": list},
    "variants": {"title": str, "kind": str, "env": dict, "rationale": str},
}
_TYPE_NAMES = {str: "a string", list: "a list", dict: "a table", int: "an integer", (int, float): "a number",
               bool: "true or false"}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A git ref as the command line would take it: never an option (a leading -), no space or control character.
_REF = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./@{}^~+-]*")
_REMOTE_URL = re.compile(r"(https?|git|ssh)://|[\w.-]+@[\w.-]+:")


def find_config(source: str | Path) -> Path | None:
    """The readfirst.toml at a local source's root, if it has one."""
    path = Path(source).expanduser()
    candidate = path if path.is_file() else path / CONFIG_NAME
    return candidate if candidate.is_file() else None


def load_config(path: str | Path, source: str | None = None) -> ProjectConfig:
    """The file, validated. `source`: the source the command line named (--source with --target-config); it
    replaces the file's own `[target] source`, which may otherwise only name its own folder or below."""
    given = Path(path).expanduser()
    # The file itself is never followed through a link: its folder is what `source = "."` names, and a cloned
    # project's readfirst.toml linked to another project's would make that other folder the source.
    path = given.parent.resolve() / given.name
    if not path.is_file() and not path.is_symlink():
        raise ConfigError(f"{path}: no such file")
    try:
        text = read_bytes_inside(path.parent, path.name, limit=MAX_CONFIG_BYTES).decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read ({e}; it must be a regular file, not a link, of at most "
                          f"{MAX_CONFIG_BYTES >> 20} MiB)") from None
    return parse_config(text, path, source)


def parse_config(text: str, path: Path, source: str | None = None) -> ProjectConfig:
    """The text of a readfirst.toml, validated as the file at `path` would be (`readfirst init` checks what it
    would write without writing it)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    return _validate(path, data, source)


def _validate(path: Path, data: dict[str, Any], given: str | None = None) -> ProjectConfig:
    def fail(key: str, what: str) -> ConfigError:
        return ConfigError(f"{path.name}: {key}: {what}")

    for section, value in data.items():
        if section not in _SCHEMA:
            raise fail(f"[{section}]", f"unknown section; known: {', '.join(_SCHEMA)}")
        tables = value if section == "variants" else [value]
        if section == "variants" and not isinstance(value, list):
            raise fail("[[variants]]", "must be an array of tables ([[variants]])")
        for table in tables:
            if not isinstance(table, dict):
                raise fail(f"[{section}]", "must be a table")
            for key, v in table.items():
                expected = _SCHEMA[section].get(key)
                if expected is None:
                    raise fail(f"[{section}] {key}", f"unknown key; known: {', '.join(_SCHEMA[section])}")
                if (isinstance(v, bool) and expected is not bool) or not isinstance(v, expected):
                    raise fail(f"[{section}] {key}", f"must be {_TYPE_NAMES.get(expected, expected)}, not "
                                                     f"{type(v).__name__}")

    def section(name: str) -> dict[str, Any]:
        return data.get(name) or {}

    def strings(table: str, key: str, default: list[str]) -> tuple[str, ...]:
        items = section(table).get(key, default)
        if not all(isinstance(i, str) and i.strip() for i in items):
            raise fail(f"[{table}] {key}", "must be a list of non-empty strings")
        return tuple(items)

    def step(name: str, default_timeout: float) -> Step:
        table = section(name)
        if not str(table.get("command", "")).strip():
            raise fail(f"[{name}] command", "missing: the command that " + {
                "build": "builds the project", "test": "runs its tests (exit 0 = pass)",
                "bench": "prints `METRIC name=value` lines"}[name])
        timeout = float(table.get("timeout_s", default_timeout))
        if not (0 < timeout <= 86400):
            raise fail(f"[{name}] timeout_s", f"must be between 0 and 86400 seconds, not {timeout:g}")
        return Step(table["command"], timeout)

    target = section("target")
    name = target.get("name") or path.parent.name
    source, ref = _source(path, target, given, fail)
    objective = _objective(section("objective"), fail)
    apt = strings("sandbox", "apt", [])
    bad = [p for p in apt if not is_debian_package(p)]
    if bad:
        raise fail("[sandbox] apt", f"{bad[0]!r} is not a Debian package name")
    env = _env(section("sandbox").get("env", {}), "[sandbox] env", fail)
    cpus = int(section("bench").get("cpus", 0))
    if cpus < 0:
        raise fail("[bench] cpus", "must be 0 (every CPU) or a positive count")
    variants = []
    for i, v in enumerate(data.get("variants") or [], 1):
        where = f"[[variants]] #{i}"
        if not str(v.get("title", "")).strip():
            raise fail(f"{where} title", "missing")
        kind = v.get("kind", "build")
        if kind not in ("build", "runtime"):
            raise fail(f"{where} kind", f"must be \"build\" (environment of the build) or \"runtime\" (of the "
                                        f"test and bench runs), not {kind!r}")
        variants.append(Variant(v["title"], kind, _env(v.get("env", {}), f"{where} env", fail),
                                v.get("rationale", "")))
        if not variants[-1].env:
            raise fail(f"{where} env", "missing: a variant is the environment it sets")
    reading = section("reading")
    queries = {role: list(strings("reading", key, [])) for role, key in (("research", "queries"),
                                                                        ("competitors", "fork_queries"))
               if reading.get(key)}
    return ProjectConfig(
        path=path, name=name, source=source, ref=ref,
        hot_paths=_globs(strings("target", "hot_paths", ["**"]), "[target] hot_paths", fail),
        # The file itself is the judge's rulebook: an experiment may not rewrite it.
        protected=tuple(dict.fromkeys([*_globs(strings("target", "protected", []), "[target] protected", fail),
                                       CONFIG_NAME])),
        description=target.get("description", ""), facts=strings("target", "facts", []),
        build=step("build", 600), test=step("test", 600), bench=step("bench", 120), bench_cpus=cpus,
        objective=objective, apt=apt, env=env, variants=tuple(variants), queries=queries,
        claim=_claim(section("objective"), objective, fail), language=target.get("language", "").strip())


def _source(path: Path, target: dict[str, Any], given: str | None, fail) -> tuple[str, str | None]:
    """The source and ref: the command line's when it named one; else the file's, a remote git URL or a folder
    that lies inside the file's own folder once resolved (links followed): a cloned project must not make the
    run copy, mount and log a folder of the host."""
    ref = target.get("ref")
    if ref is not None and not _REF.fullmatch(ref):
        raise fail("[target] ref", f"{ref!r} is not a git ref")
    if given is not None:
        local = Path(given).expanduser()
        return (str(local.resolve()) if local.is_dir() else given), ref
    source = target.get("source", ".")
    if _REMOTE_URL.match(source):
        return source, ref
    home = path.parent.resolve()
    local = (home / Path(source).expanduser()).resolve()
    if source.startswith("file:") or (local != home and home not in local.parents):
        raise fail("[target] source", f"{source!r} lies outside the folder of this file ({home}); name a source "
                                      f"elsewhere on the command line with --source (and this file with "
                                      f"--target-config)")
    if not local.is_dir():
        raise fail("[target] source", f"{local} is not a directory")
    return str(local), ref


def _globs(patterns: tuple[str, ...], key: str, fail) -> tuple[str, ...]:
    """Patterns of paths inside the project: none absolute, none climbing out with `..`."""
    for pattern in patterns:
        parts = Path(pattern).parts
        if pattern.startswith(("/", "~")) or ".." in parts:
            raise fail(key, f"{pattern!r} is not a path inside the project")
    return patterns


def _env(table: dict[str, Any], key: str, fail) -> dict[str, str]:
    out = {}
    for name, value in table.items():
        if not _ENV_NAME.fullmatch(name):
            raise fail(key, f"{name!r} is not an environment variable name")
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise fail(f"{key} {name}", "must be a string or a number")
        out[name] = str(value)
    return out


def _objective(table: dict[str, Any], fail) -> Objective:
    metric = table.get("metric", "")
    if not metric:
        raise fail("[objective] metric", "missing: the name of the METRIC line to improve")
    if not METRIC_NAME.fullmatch(metric):
        raise fail("[objective] metric", f"{metric!r} is not a metric name (letters, digits, _ . -)")
    direction = table.get("direction", "higher")
    if direction not in ("higher", "lower"):
        raise fail("[objective] direction", f"must be \"higher\" or \"lower\", not {direction!r}")
    min_effect = float(table.get("min_effect", 0.01))
    if not (0 <= min_effect < 1):
        raise fail("[objective] min_effect", f"must be a fraction between 0 and 1 (0.01 = 1%), not {min_effect:g}")
    guards = {}
    for name, spec in (table.get("guards") or {}).items():
        where = f"[objective.guards] {name}"
        if not METRIC_NAME.fullmatch(name):
            raise fail(where, "is not a metric name")
        if name == metric:
            raise fail(where, "is the objective itself")
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            spec = {"max_regression": spec}
        if not isinstance(spec, dict):
            raise fail(where, "must be a number (the largest tolerated regression, 0.05 = 5%) or a table "
                              "{ max_regression = 0.05, direction = \"lower\" }")
        unknown = set(spec) - {"max_regression", "direction"}
        if unknown:
            raise fail(f"{where} {sorted(unknown)[0]}", "unknown key; known: max_regression, direction")
        limit = spec.get("max_regression", 0.03)
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not (0 <= limit < 1):
            raise fail(f"{where} max_regression", "must be a fraction between 0 and 1 (0.05 = 5%)")
        guard_direction = spec.get("direction", "higher")
        if guard_direction not in ("higher", "lower"):
            raise fail(f"{where} direction", f"must be \"higher\" or \"lower\", not {guard_direction!r}")
        guards[name] = Guard(float(limit), guard_direction)
    return Objective(metric=metric, direction=direction, guards=guards, min_effect=min_effect,
                     unit=table.get("unit", ""))


def _claim(table: dict[str, Any], objective: Objective, fail) -> ClaimedTime | None:
    """[objective] work / seconds_per_unit: what lets the host's clock judge a keep."""
    work, per_unit = table.get("work"), table.get("seconds_per_unit")
    for key, value in (("work", work), ("seconds_per_unit", per_unit)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise fail(f"[objective] {key}", f"must be a positive number, not {value:g}")
    if work is not None and per_unit is not None:
        raise fail("[objective] work", "and seconds_per_unit both given: a figure is a rate (work) or a time "
                                       "(seconds_per_unit), not both")
    if work is not None and objective.direction != "higher":
        raise fail("[objective] work", "is for a rate (direction = \"higher\": work per second); a time "
                                       "(direction = \"lower\") takes seconds_per_unit")
    if per_unit is not None and objective.direction != "lower":
        raise fail("[objective] seconds_per_unit", "is for a time (direction = \"lower\"); a rate (direction = "
                                                   "\"higher\") takes work")
    return None if work is None and per_unit is None else ClaimedTime(work, per_unit or 1.0)


def _metric_lines(output: str) -> Iterator[tuple[str, str]]:
    """(name, raw value) of every `METRIC name=value` line, in order."""
    for line in output.splitlines():
        if m := _METRIC_LINE.match(line):
            yield m.group(1), m.group(2)


def parse_metrics(output: str) -> tuple[dict[str, float], list[str]]:
    """The `METRIC name=value` lines of a bench run: {name: value}, and the problems seen (non-numeric values).

    A metric printed several times in one run counts by its median (a bench that loops prints each pass)."""
    seen: dict[str, list[float]] = {}
    problems: list[str] = []
    for name, raw in _metric_lines(output):
        try:
            value = float(raw)
        except ValueError:
            problems.append(f"{name}={raw!r} is not a number")
            continue
        if not math.isfinite(value):
            problems.append(f"{name}={raw} is not a finite number")
            continue
        seen.setdefault(name, []).append(value)
    return {k: statistics.median(v) for k, v in seen.items()}, problems


def metric_line_counts(output: str) -> dict[str, int]:
    """How many `METRIC name=...` lines a bench run printed, per name: the same bench prints the same lines run
    after run, whatever the build; code under test that prints figures of its own changes the count."""
    return dict(Counter(name for name, _ in _metric_lines(output)))
