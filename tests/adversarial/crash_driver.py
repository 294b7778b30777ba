"""What test_crash_resume.py kills: a run of the real graph, runner, ledger, checkpoints and trace on the stand-in
target (its benchmark takes a few milliseconds, so a run of a few experiments lasts seconds), started when the run
directory has no meta.json and resumed otherwise, as `readfirst run` and `readfirst run --resume` do.

    python crash_driver.py HOME RUN_ID
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_trace_standin import CountingSandbox, StandInTarget  # noqa: E402

from readfirst.graph.ledger import Ledger  # noqa: E402
from readfirst.graph.runner import execute, read_meta, write_meta  # noqa: E402
from readfirst.graph.trace import start_tracing  # noqa: E402
from readfirst.graph.workflow import RunDeps, RunOptions  # noqa: E402

OPTIONS = RunOptions(budget_experiments=4, calibration_pairs=2, max_runs=12, workers=2)


def main(home: Path, run_id: str) -> None:
    directory = home / "runs" / run_id
    directory.mkdir(parents=True, exist_ok=True)
    fresh = not (directory / "meta.json").exists()
    if fresh:
        meta = {"run_id": run_id, "created_at": time.time(), "source": str(home / "source"), "status": "starting",
                "options": asdict(OPTIONS)}
        write_meta(directory, meta)
    else:
        meta = read_meta(directory, strict=True)
    target = StandInTarget(home, home / "source", CountingSandbox(slow_bench_s=0.03))
    ledger = Ledger(directory / "ledger.sqlite")
    deps = start_tracing(RunDeps(target=target, ledger=ledger, run_dir=directory), directory)
    try:
        summary = execute(deps, directory, run_id, options=OPTIONS if fresh else None, meta=meta)
    finally:
        ledger.close()
    print(json.dumps({"experiments": summary["experiments"], "kept": summary["kept"]}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
