"""The config target: any project with a build, a test suite and a benchmark, described by its readfirst.toml.

Fast tests pin the file's validation (one sentence naming the key), the METRIC lines, the registry and the
variants. The docker tests take a real third-party C library (LZ4, from the lz4 sdist on PyPI) through the real
sandbox: a run that reads a fork holding a known win keeps it (git fork and vendored tree), and a project whose
build, tests or bench misbehave is judged, killed or refused as it should be.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from config_project import make_fork, make_moved_fork, make_project, patch_at_baseline, vendored  # noqa: E402

from readfirst.errors import ReadfirstError  # noqa: E402
from readfirst.targets import make_spec  # noqa: E402
from readfirst.targets.config_file import ConfigError, load_config, metric_line_counts, parse_metrics  # noqa: E402

GOOD = """
[target]
name = "mylib"
hot_paths = ["src/**"]
protected = ["bench/**"]
[build]
command = "make -j2"
[test]
command = "make test"
[bench]
command = "./bench.sh"
[objective]
metric = "mb_per_s"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "readfirst.toml"
    path.write_text(text)
    return path


def test_a_complete_file_loads_with_its_defaults(tmp_path):
    config = load_config(write(tmp_path, GOOD + '[objective.guards]\nratio = 0.02\npeak_kb = { max_regression = '
                                              '0.1, direction = "lower" }\n'))
    assert config.name == "mylib" and config.source == str(tmp_path.resolve())
    assert config.build.timeout_s == 600 and config.bench.timeout_s == 120
    assert config.protected == ("bench/**", "readfirst.toml")  # the rulebook is never patched
    assert config.objective.metric == "mb_per_s" and config.objective.direction == "higher"
    assert config.objective.guards["peak_kb"].direction == "lower" and config.objective.guards["ratio"].max_regression == 0.02
    assert config.objective.lower_is_better() == ("peak_kb",)


@pytest.mark.parametrize("edit, says", [
    (lambda t: t.replace("[bench]\ncommand = \"./bench.sh\"", "[bench]"), "[bench] command: missing"),
    (lambda t: t + "[extra]\nx = 1\n", "[extra]: unknown section"),
    (lambda t: t.replace('name = "mylib"', 'name = "mylib"\nnmae = "x"'), "[target] nmae: unknown key"),
    (lambda t: t.replace('command = "make -j2"', "command = 3"), "[build] command: must be a string"),
    (lambda t: t.replace('metric = "mb_per_s"', 'metric = "mb_per_s"\ndirection = "up"'),
     "[objective] direction: must be \"higher\" or \"lower\""),
    (lambda t: t.replace('metric = "mb_per_s"', ""), "[objective] metric: missing"),
    (lambda t: t + "[objective.guards]\nratio = 2\n", "[objective.guards] ratio max_regression"),
    (lambda t: t + '[sandbox]\napt = ["libz dev"]\n', "[sandbox] apt: 'libz dev' is not a Debian package"),
    (lambda t: t + '[[variants]]\ntitle = "O3"\n', "[[variants]] #1 env: missing"),
    (lambda t: t.replace("[build]", "[build]\ntimeout_s = -1"), "[build] timeout_s"),
    (lambda t: t + "[target\n", "not valid TOML"),
    (lambda t: t.replace('metric = "mb_per_s"', 'metric = "mb_per_s"\nwork = 0'),
     "[objective] work: must be a positive"),
    (lambda t: t.replace('metric = "mb_per_s"', 'metric = "mb_per_s"\nseconds_per_unit = 1'),
     "[objective] seconds_per_unit: is for a time (direction = \"lower\")"),
    (lambda t: t.replace('metric = "mb_per_s"', 'metric = "s"\ndirection = "lower"\nwork = 80'),
     "[objective] work: is for a rate"),
    (lambda t: t.replace('metric = "mb_per_s"',
                         'metric = "s"\ndirection = "lower"\nwork = 8\nseconds_per_unit = 1'),
     "[objective] work: and seconds_per_unit both given"),
])
def test_a_bad_file_is_one_sentence_naming_the_key(tmp_path, edit, says):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, edit(GOOD)))
    assert says in str(e.value) and "\n" not in str(e.value)


def test_metric_lines_are_parsed_and_bad_values_named():
    values, problems = parse_metrics("warming up\nMETRIC mb_per_s=812.5\nMETRIC ratio=2.1 x\n  METRIC mb_per_s=800\n"
                                     "METRIC mb_per_s=900\nMETRIC speed=fast\nMETRIC n=inf\n")
    assert values == {"mb_per_s": 812.5, "ratio": 2.1}  # a metric printed thrice counts by its median
    assert problems == ["speed='fast' is not a number", "n=inf is not a finite number"]


def test_metric_lines_are_counted_per_name_whatever_their_value():
    assert metric_line_counts("METRIC a=1\nMETRIC b=x\nnoise METRIC a=2\n  METRIC a=3\n") == {"a": 2, "b": 1}


def test_the_objective_says_how_many_seconds_a_runs_figure_claims(tmp_path):
    assert load_config(write(tmp_path, GOOD)).claim is None  # nothing declared: the clock cannot judge
    rate = load_config(write(tmp_path, GOOD.replace('metric = "mb_per_s"', 'metric = "mb_per_s"\nwork = 80')))
    assert rate.claim.seconds(400.0) == pytest.approx(0.2) and rate.claim.seconds(0.0) is None
    time = load_config(write(tmp_path, GOOD.replace('metric = "mb_per_s"',
                                                    'metric = "ms"\ndirection = "lower"\nseconds_per_unit = 0.001')))
    assert time.claim.seconds(250.0) == pytest.approx(0.25)


def test_the_registry_chooses_config_for_a_project_with_a_readfirst_toml(tmp_path):
    write(tmp_path, GOOD)
    assert make_spec(None, source=str(tmp_path))["name"] == "config"
    assert make_spec(None, source="llama.cpp")["name"] == "llama.cpp"
    with pytest.raises(ReadfirstError, match="unknown target 'mylib'; known: llama.cpp, config"):
        make_spec("mylib", source=str(tmp_path))
    with pytest.raises(ConfigError, match="needs a readfirst.toml"):
        make_spec("config", source=str(tmp_path / "nowhere"))


def test_variants_are_the_files_and_apply_only_what_they_name(tmp_path):
    from readfirst.targets.config_target import ConfigTarget
    config = load_config(write(tmp_path, GOOD + '[[variants]]\ntitle = "O3"\nenv = { CFLAGS = "-O3" }\n'
                                              '[[variants]]\ntitle = "one thread"\nkind = "runtime"\n'
                                              'env = { THREADS = 1 }\n'))
    target = ConfigTarget(None, None, SimpleNamespace(path=tmp_path, baseline="b" * 40, origin=str(tmp_path),
                                                      key="k"), config)
    base = {"build_env": {}, "run_env": {}}
    offered = target.variants(base)
    assert [(v["kind"], v["change"]) for v in offered] == [("build", {"build_env": {"CFLAGS": "-O3"}}),
                                                           ("runtime", {"run_env": {"THREADS": "1"}})]
    o3 = target.apply(base, offered[0]["change"])
    assert o3 == {"build_env": {"CFLAGS": "-O3"}, "run_env": {}} and base == {"build_env": {}, "run_env": {}}
    assert [v["title"] for v in target.variants(o3)] == ["one thread"]  # what is in effect is not offered
    with pytest.raises(ValueError, match="build_env or run_env"):
        target.apply(base, {"cmake_flags_add": ["-DX=1"]})


# -- the real thing: LZ4 in the sandbox --------------------------------------------------------------------------

def readfirst(*args: str, home: Path, timeout: float = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "READFIRST_HOME": str(home)}
    env.pop("ANTHROPIC_API_KEY", None)
    return subprocess.run([sys.executable, "-m", "readfirst.graph", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


RUN = ["run", "--offline", "--calibration-pairs", "0", "--max-runs", "18", "--json"]


@pytest.fixture(scope="module")
def lz4_project(tmp_path_factory, shared_cache):
    root = tmp_path_factory.mktemp("lz4")
    project = make_project(root / "lz4", shared_cache / "sdists")
    return project, make_fork(project, root / "lz4-fork")


def _kept_fix(summary: dict, rows: list[dict]) -> dict:
    kept = [r for r in rows if r["decision"] == "keep" and r["id"] in summary["kept"]]
    fix = [r for r in kept if "lz4.c" in r["title"]]
    assert fix, [(r["title"], r["decision"], r["reason"]) for r in rows]
    return fix[0]


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("form", ["git fork", "vendored tree"])
def test_a_run_reading_a_fork_keeps_its_faster_change_and_reports_the_speedup(lz4_project, tmp_path, docker_client,
                                                                                base_image, form):
    project, fork = lz4_project
    fork_path = fork if form == "git fork" else vendored(fork, tmp_path / "vendored-fork")
    proc = readfirst(*RUN, "--source", str(project), "--fork", str(fork_path), "--budget-experiments", "3",
                     home=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout)
    assert summary["target"] == "lz4" and summary["objective"] == "mb_per_s"
    run = tmp_path / "runs" / summary["run_id"]
    from readfirst.graph.ledger import Ledger
    ledger = Ledger(run / "ledger.sqlite")
    rows = ledger.rows()
    ledger.close()
    fix = _kept_fix(summary, rows)
    assert fix["kind"] == "patch" and fix["speedup"] > 0.2 and fix["ci_low"] > 0.02  # three passes less
    assert "-    {   /* checksum the input first" in fix["patch"]
    assert summary["best_speedup"] >= fix["speedup"] * 0.99 and summary["best_patches"]
    header = (run / "results.tsv").read_text().splitlines()[0].split("\t")
    assert "mb_per_s_base" in header and "mb_per_s_cand" in header
    assert any("mb_per_s" in f and "baseline measures" in f for f in summary["facts"])
    if form == "git fork":  # the trace and the report serve every target alike
        replayed = readfirst("trace", "replay", summary["run_id"], "--json", home=tmp_path)
        assert replayed.returncode == 0 and json.loads(replayed.stdout)["identical"], replayed.stdout[-2000:]
        report = readfirst("report", summary["run_id"], "--json", home=tmp_path)
        assert report.returncode == 0 and (run / "report.png").stat().st_size > 1000


@pytest.mark.docker
@pytest.mark.slow
def test_a_function_the_fork_moved_and_reformatted_is_ported_built_and_measured(lz4_project, tmp_path, docker_client,
                                                                                  base_image):
    project, _ = lz4_project
    fork = make_moved_fork(project, tmp_path / "lz4-moved")
    proc = readfirst(*RUN, "--source", str(project), "--fork", str(fork), "--budget-experiments", "2",
                     home=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout)
    from readfirst.graph.ledger import Ledger
    run = tmp_path / "runs" / summary["run_id"]
    ledger = Ledger(run / "ledger.sqlite")
    rows = ledger.rows()
    ledger.close()
    port = rows[0]  # fork candidates come first
    assert port["title"] == "port lz4-moved's LZ4_compress_default (lz4/lz4_default.c) into lz4/lz4.c", rows
    assert port["source_kind"] == "fork" and port["build"]["ok"] and port["verdict"]["runs"]
    assert port["decision"] == "keep" and port["speedup"] > 0.2, (port["decision"], port["reason"])
    assert "-    {   /* checksum the input first" in port["patch"] and "LZ4_compress_fast (src" in port["patch"]
    # the second experiment is the project's -O3 variant: whether -O3 speeds LZ4 up is the machine's business
    assert summary["experiments_by_source"].get("fork") >= 1 and summary["kept_by_source"]["fork"] == 1
    assert summary["candidates_by_source"]["fork"] >= 1 and summary["candidates_by_source"]["profile"] >= 1
    replayed = readfirst("trace", "replay", summary["run_id"], "--json", home=tmp_path)
    assert replayed.returncode == 0 and json.loads(replayed.stdout)["identical"], replayed.stdout[-2000:]


@pytest.fixture
def lz4_target(lz4_project, paths, docker_client, base_image):
    from readfirst.graph.deps import compose_target
    project, _ = lz4_project
    _, target = compose_target(paths, make_spec(None, source=str(project)), say=lambda _: None)
    return target


@pytest.mark.docker
@pytest.mark.slow
def test_a_broken_build_and_broken_tests_are_discarded_with_their_reason(lz4_target):
    from readfirst.agents.experiment import run_experiment
    target = lz4_target
    baseline = target.prepare()
    best = {"commit": baseline.commit, "variant": baseline.variant}

    def experiment(title: str, patch: str) -> dict:
        h = {"id": "H1", "key": title, "kind": "patch", "title": title, "change": {"patch": patch}}
        return run_experiment(h, target=target, best=best, baseline=baseline)

    repo = target.repository
    broken = experiment("does not compile",
                        patch_at_baseline(repo, "int LZ4_compress_default(", "int LZ4_compress_default(}"))
    assert (broken["decision"], broken["verdict"]["gate"]) == ("discard", "build") and "compile" in broken["reason"]
    call = "    return LZ4_compress_fast(src, dst, srcSize, maxOutputSize, 1);"
    wrong = experiment("wrong output", patch_at_baseline(repo, call, "    if (srcSize > 1) srcSize--;\n" + call))
    assert (wrong["decision"], wrong["verdict"]["gate"]) == ("discard", "tests")
    assert "FAIL" in wrong["reason"] and wrong["verdict"]["stopped"] == "not measured"


@pytest.mark.docker
@pytest.mark.slow
def test_a_hanging_bench_is_killed_at_its_timeout_and_leaves_nothing_running(tmp_path, shared_cache, paths,
                                                                             docker_client, base_image):
    from readfirst.errors import SandboxError
    from readfirst.graph.deps import compose_target
    from readfirst.sandbox.docker_sandbox import LABEL
    project = make_project(tmp_path / "hangs", shared_cache / "sdists", bench="sleep 600", bench_timeout=3,
                           slowdown=False)
    _, target = compose_target(paths, make_spec(None, source=str(project)), say=lambda _: None)
    variant = {"build_env": {}, "run_env": {}}
    assert target.build(target.source.baseline, variant).ok
    with pytest.raises(SandboxError, match="timed out after 3 s"):
        target.measure(target.source.baseline, variant)
    assert docker_client.containers.list(all=True, filters={"label": LABEL}, ignore_removed=True) == []


@pytest.mark.docker
@pytest.mark.slow
def test_a_bench_without_the_objective_metric_is_one_sentence(tmp_path, shared_cache, docker_client, base_image):
    project = make_project(tmp_path / "nometric", shared_cache / "sdists", metric="throughput", slowdown=False)
    proc = readfirst(*RUN, "--source", str(project), "--budget-experiments", "1", home=tmp_path / "home")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "no `METRIC throughput=<number>` line" in proc.stderr and "mb_per_s=" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_readmes_readfirst_toml_loads_as_written(tmp_path):
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    config = load_config(write(tmp_path, block))
    assert (config.name, config.objective.metric, config.build.command) == ("lz4", "mb_per_s", "make -j2")
    assert [v.title for v in config.variants] == ["build with -O3"] and "ratio" in config.objective.guards


def test_run_with_a_bad_readfirst_toml_says_which_key_before_any_run_exists(tmp_path):
    project = tmp_path / "proj"
    project.mkdir()
    write(project, GOOD.replace('metric = "mb_per_s"', ""))
    proc = readfirst("run", "--offline", "--source", str(project), home=tmp_path / "home", timeout=120)
    assert proc.returncode == 2 and "readfirst.toml: [objective] metric: missing" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "home" / "runs").exists()


@pytest.mark.docker
@pytest.mark.slow
def test_sigterm_stops_a_run_removes_its_containers_and_saves_it_as_interrupted(tmp_path, shared_cache,
                                                                                docker_client, base_image):
    import signal
    import time

    from readfirst.sandbox.docker_sandbox import LABEL
    project = make_project(tmp_path / "slowbench", shared_cache / "sdists", bench="sleep 600", bench_timeout=500,
                           slowdown=False)
    env = {**os.environ, "READFIRST_HOME": str(tmp_path / "home")}
    env.pop("ANTHROPIC_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "readfirst.graph", *RUN, "--source", str(project)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def benching() -> bool:
        return any("sleep 600" in " ".join(c.attrs.get("Args") or [])
                   for c in docker_client.containers.list(filters={"label": LABEL}, ignore_removed=True))
    try:
        deadline = time.monotonic() + 300
        while not benching():
            assert proc.poll() is None and time.monotonic() < deadline, "the run never reached its bench"
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)  # not the bench's 500 s
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 130, proc.stderr.read()[-2000:]
    assert not benching()
    assert docker_client.containers.list(all=True, filters={"label": LABEL}, ignore_removed=True) == []
    [run] = list((tmp_path / "home" / "runs").iterdir())
    assert json.loads((run / "meta.json").read_text())["status"] == "interrupted"
