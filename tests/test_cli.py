"""The command line's manners: --help everywhere, one sentence per error, exit codes a script can test."""

from __future__ import annotations

import subprocess
import sys

import pytest


def readfirst(*args: str, home) -> subprocess.CompletedProcess:
    import os
    return subprocess.run([sys.executable, "-m", "readfirst.graph", *args], capture_output=True, text=True,
                          env={**os.environ, "READFIRST_HOME": str(home)}, timeout=120)


@pytest.mark.parametrize("group", [[], ["run"], ["sandbox", "bench"], ["model", "synth"], ["kb", "query"],
                                   ["trace", "replay"], ["report"]])
def test_every_command_explains_itself(group, tmp_path):
    proc = readfirst(*group, "--help", home=tmp_path)
    assert proc.returncode == 0 and "Usage:" in proc.stdout
    # a flag takes no value and shows none; a repeatable option shows its element's type
    assert "<bool>" not in proc.stdout and "<list[" not in proc.stdout, proc.stdout


def test_help_shows_flags_plainly_and_says_what_repeats(tmp_path):
    proc = readfirst("run", "--help", home=tmp_path)
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("  --")}
    assert "<" not in lines["--offline"] and "<" not in lines["--json"]
    assert "<str>" in lines["--fork"]
    assert "Repeatable." in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["run", "--offline", "--kind", "bogus"], "unknown kind 'bogus'"),
    (["run", "--bogus"], "No such option"),
    (["report", "no-such-run"], "no run 'no-such-run'"),
    (["model", "check", "/nonexistent.gguf"], "does not exist"),
    (["sandbox", "bench", "--quant", "Q9_9"], "unknown type"),
])
def test_errors_are_one_sentence_with_exit_code_2(args, message, tmp_path):
    proc = readfirst(*args, home=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_runs_lists_nothing_on_a_new_home(tmp_path):
    proc = readfirst("runs", "--json", home=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]"


@pytest.mark.parametrize("columns", ["80", "200"])
@pytest.mark.parametrize("group", [["run"], ["trace", "fork"], ["kb", "ingest", "fork"], ["runs", "prune"]])
def test_help_never_cuts_an_option_name_or_environment_variable(group, columns, tmp_path):
    import os
    import re

    import typer

    from readfirst.graph.cli import app
    command = typer.main.get_command(app)
    for name in group:
        command = command.commands[name]
    names = [o for p in command.params if p.param_type_name == "option" for o in [*p.opts, *p.secondary_opts]]
    envvars = [p.envvar for p in command.params if isinstance(getattr(p, "envvar", None), str)]
    proc = subprocess.run([sys.executable, "-m", "readfirst.graph", *group, "--help"], capture_output=True,
                          text=True, env={**os.environ, "READFIRST_HOME": str(tmp_path), "COLUMNS": columns},
                          timeout=120)
    assert proc.returncode == 0 and "…" not in proc.stdout, proc.stdout
    shown = set(re.findall(r"(?<![\w-])-{1,2}[\w-]+|[A-Z][A-Z0-9_]{3,}", proc.stdout))
    assert not {*names, *envvars} - shown, ({*names, *envvars} - shown, proc.stdout)
    assert max(len(line) for line in proc.stdout.splitlines()) <= int(columns)
