"""The ledger: every experiment of a run, durable before the next starts.

SQLite (WAL, busy timeout) in the run directory; the schema migrates forward by number, so old ledgers stay
readable. A row is keyed by the hypothesis key: a node re-run after a crash finds its recorded result instead of
adding a second row. Exports: results.tsv, and the kept patches as `git am`-able files.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import ReadfirstError
from ..records import metric_matches
from .runner import refuse_unless_plain

MIGRATIONS = [
    """
    CREATE TABLE experiments (
        id TEXT PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        seq INTEGER NOT NULL,
        wave INTEGER NOT NULL,
        kind TEXT NOT NULL,
        title TEXT NOT NULL,
        decision TEXT NOT NULL,
        reason TEXT NOT NULL,
        speedup REAL, ci_low REAL, ci_high REAL,
        usd REAL NOT NULL DEFAULT 0,
        tokens INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        row JSON NOT NULL
    );
    """,
]


class LedgerUnreadable(ReadfirstError):
    """A run's ledger.sqlite is damaged or is no plain file: that run is shown as damaged, its experiments not."""


def read_rows(path: Path) -> list[dict[str, Any]]:
    """A ledger's experiments, for showing a run (a folder someone may have sent): opened read-only, through no
    symlink, no FIFO or device; whatever is not a readable ledger of JSON objects is LedgerUnreadable, naming
    the file."""
    refuse_unless_plain(path, LedgerUnreadable)
    try:
        db = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=30)
        try:
            rows = [json.loads(r[0]) for r in db.execute("SELECT row FROM experiments ORDER BY seq")]
        finally:
            db.close()
    except (sqlite3.Error, ValueError, TypeError, RecursionError) as e:
        raise LedgerUnreadable(f"{path} cannot be read as a ledger ({type(e).__name__}: {str(e)[:200]}), so "
                               f"run {path.parent.name}'s experiments cannot be shown") from e
    if not all(isinstance(r, dict) and isinstance(r.get("id"), str) for r in rows):
        raise LedgerUnreadable(f"{path} holds an experiment that is no JSON object with an id, so run "
                               f"{path.parent.name}'s experiments cannot be shown")
    return rows


def tsv_columns(metric: str) -> tuple[str, ...]:
    """results.tsv's columns: the objective's metric names the two arms' columns ("tg_base", "mb_per_s_base")."""
    return ("id", "wave", "kind", "source", "title", "decision", "speedup", "ci_low", "ci_high", f"{metric}_base",
            f"{metric}_cand", "build_s", "checks_s", "bench_s", "wait_s", "usd", "reason")


class Ledger:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA busy_timeout=30000")
        self._lock = threading.Lock()  # parallel experiments of a wave record from several threads
        self._migrate()

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        for number, sql in enumerate(MIGRATIONS[version:], start=version + 1):
            self.db.execute("BEGIN IMMEDIATE")
            for statement in (s for s in sql.split(";") if s.strip()):
                self.db.execute(statement)
            self.db.execute(f"PRAGMA user_version={number}")
            self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    def find(self, key: str) -> dict[str, Any] | None:
        got = self.db.execute("SELECT row FROM experiments WHERE key=?", (key,)).fetchone()
        return json.loads(got[0]) if got else None

    def record(self, row: dict[str, Any]) -> dict[str, Any]:
        """Insert once per key; a second record of the same key returns the first (idempotent re-runs)."""
        with self._lock:
            return self._record(row)

    def _record(self, row: dict[str, Any]) -> dict[str, Any]:
        existing = self.find(row["key"])
        if existing is not None:
            return existing
        seq = self.db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM experiments").fetchone()[0]
        row = {**row, "id": row.get("id") or f"E{seq:03d}", "seq": seq}
        llm = row.get("llm") or {}
        self.db.execute(
            "INSERT INTO experiments (id, key, seq, wave, kind, title, decision, reason, speedup, ci_low, ci_high,"
            " usd, tokens, created_at, row) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (row["id"], row["key"], seq, row.get("wave", 0), row["kind"], row["title"], row["decision"],
             row["reason"], row.get("speedup"), row.get("ci_low"), row.get("ci_high"), float(llm.get("usd", 0)),
             int(llm.get("tokens", 0)), time.time(), json.dumps(row, default=str)))
        return row

    def rows(self) -> list[dict[str, Any]]:
        return [json.loads(r[0]) for r in self.db.execute("SELECT row FROM experiments ORDER BY seq")]

    def export_tsv(self, dest: Path, *, metric: str = "tg") -> Path:
        """One row per experiment; `metric` is the target's objective (a name or a prefix)."""
        with open(dest, "w", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(tsv_columns(metric))
            for r in self.rows():
                arms = arm_means(r, r.get("objective") or metric)
                durations = r.get("durations") or {}
                source = r.get("source_kind") or (r.get("hypothesis") or {}).get("source_kind") or ""
                w.writerow([r["id"], r.get("wave", 0), r["kind"], source, r["title"], r["decision"],
                            _fmt(r.get("speedup")), _fmt(r.get("ci_low")), _fmt(r.get("ci_high")),
                            _fmt(arms[0], 4), _fmt(arms[1], 4), _fmt(durations.get("build"), 1),
                            _fmt(durations.get("checks", durations.get("tests")), 1), _fmt(durations.get("bench"), 1),
                            _fmt(durations.get("wait"), 1), _fmt((r.get("llm") or {}).get("usd", 0), 4),
                            r["reason"].replace("\t", " ")])
        return dest


def _fmt(x: Any, digits: int = 4) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def arm_means(row: dict[str, Any], metric: str) -> tuple[float | None, float | None]:
    """Mean of the objective's metric (a name or a prefix: "tg" matches "tg128") in each arm, over the measured
    (non-warm-up) runs."""
    runs = (row.get("verdict") or {}).get("runs") or []
    out = []
    for which in ("baseline", "candidate"):
        vals = [v for r in runs if r["which"] == which and not r["warmup"]
                for k, v in r["values"].items() if metric_matches(k, metric)]
        out.append(sum(vals) / len(vals) if vals else None)
    return out[0], out[1]
