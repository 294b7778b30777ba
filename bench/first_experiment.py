"""Time from `readfirst run` to its first experiment, and where it goes.

The README's main job (setup.sh's arguments: offline, ik_llama.cpp's CPU code read against llama.cpp) in a fresh
home twice, the data directory's caches (builds, model, sources, embedding export) shared and warm, as on a machine
that ran `./setup.sh` once:
- first: an empty knowledge base (the fork's code is read and embedded before research);
- second: the same home again (the knowledge base is there: the reading is skipped).
Every line the run logs is timed as it arrives; a phase starts at the first line of its step. The run is sent
SIGINT (Ctrl-C) when its first experiment starts: it stops cleanly and saves, and no experiment time is counted.
Writes its section of docs/PERFORMANCE.md.

    .venv/bin/python bench/first_experiment.py [--cold]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

from readfirst.config import Paths  # noqa: E402

ARGS = ["--offline", "--fork", "ik_llama.cpp", "--fork-subdir", "ggml/src/ggml.c", "--fork-subdir",
        "ggml/src/ggml-quants.c", "--fork-subdir", "ggml/src/iqk", "--fork-subdir", "ggml/src/llamafile",
        "--budget-experiments", "1"]
# (phase, what the first log line of it holds), in the order a run goes through them
PHASES = (("start-up: the engine, the sandbox image, the target", ()),
          ("the forks, backend gaps and reading list into the knowledge base",
           ("into the knowledge base", "already read (the same revisions)")),
          ("the baseline: its build and checks verified or made", ("profile: preparing the baseline",)),
          ("profile: benchmark, bandwidth probe, per-op profile", ("profile: measuring the baseline",)),
          ("A/A calibration", ("profile: A/A calibration",)),
          ("research, competitors, hypotheses", ("research:",)),
          ("first experiment starts", ("wave 1:",)))


def timed_run(home: Path, cache: Path) -> tuple[dict[str, float], float, list[str]]:
    env = {**os.environ, "READFIRST_HOME": str(home), "READFIRST_CACHE": str(cache), "COLUMNS": "250"}
    env.pop("ANTHROPIC_API_KEY", None)
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "readfirst.graph", "run", *ARGS], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)
    seen: dict[str, float] = {}
    lines: list[str] = []
    interrupted = False
    assert proc.stderr is not None
    for line in proc.stderr:
        at = time.monotonic() - began
        lines.append(f"{at:7.1f} s  {line.rstrip()}")
        for name, markers in PHASES:
            if name not in seen and any(m in line for m in markers):
                seen[name] = at
        if "wave 1:" in line and not interrupted:
            proc.send_signal(signal.SIGINT)  # once: a second one could cut the run's own saving short
            interrupted = True
    proc.wait(timeout=600)
    return seen, time.monotonic() - began, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true",
                        help="first a run with an empty cache of its own, as on a bare machine (the sources fetched, "
                             "llama.cpp built, the model made, the embedder exported; the engine's base image kept)")
    args = parser.parse_args()
    cache = Paths.resolve().cache
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    home = Path(tempfile.mkdtemp(prefix="readfirst-first-"))
    cold = Path(tempfile.mkdtemp(prefix="readfirst-cold-", dir=cache.parent)) if args.cold else None
    runs = ([("bare cache (everything built)", Path(tempfile.mkdtemp(prefix="readfirst-first-")), cold)]
            if cold else [])
    runs += [("empty knowledge base", home, cache), ("knowledge base already read", home, cache)]
    try:
        results = []
        for label, run_home, run_cache in runs:
            print(f"· {label}", file=sys.stderr, flush=True)
            seen, total, lines = timed_run(run_home, run_cache)
            if "first experiment starts" not in seen:
                sys.exit("the run never reached its first experiment:\n" + "\n".join(lines[-40:]))
            results.append((label, seen, total))
            print("\n".join(lines), file=sys.stderr)
    finally:
        for run_home, run_cache in {(h, c) for _, h, c in runs}:
            shutil.rmtree(run_home, ignore_errors=True)
        if cold:
            shutil.rmtree(cold, ignore_errors=True)
    table = ["| phase | " + " | ".join(label for label, _, _ in results) + " |",
             "|---|" + "---|" * len(results)]
    for i, (name, _) in enumerate(PHASES):
        cells = []
        for _, seen, _ in results:
            start = 0.0 if i == 0 else seen.get(name)
            following = next((seen[n] for n, _ in PHASES[i + 1:] if n in seen), None)
            if name == "first experiment starts":
                cells.append(f"**{seen[name] / 60:.1f} min** from the command")
            elif start is None or following is None:
                cells.append("(not logged)")
            else:
                cells.append(f"{following - start:.0f} s")
        table.append(f"| {name} | " + " | ".join(cells) + " |")
    bare = ("; first, with `--cold`, in a cache of its own that starts empty, as on a bare machine (the sdists "
            "fetched from PyPI, llama.cpp built, the model made, the embedder exported; the Docker engine's base "
            "image, which `./setup.sh` makes, kept)") if args.cold else ""
    body = (f"`readfirst run {' '.join(ARGS)}` (the main job with one experiment) in a fresh home, the data "
            f"directory's caches warm (builds, model, sources, embedding export; {started}){bare}; stopped with "
            f"SIGINT when its first experiment started. A phase's time runs from its first log line to the next "
            f"phase's. Command: `python bench/first_experiment.py{' --cold' * args.cold}`.\n\n"
            + "\n".join(table) + "\n")
    write_section("first-experiment", "Time to the first experiment", body)
    print(body)


if __name__ == "__main__":
    main()
