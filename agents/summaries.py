"""The model's claims about each knowledge-base chunk, kept across rounds and runs.

A chunk is summarized once per revision of its text and per model: its key is (model, chunk id, digest of its
text), so a fork chunk read by seven queries over three rounds costs one call, a chunk whose text changed is read
again, and a run with another model reads it in its own words (a stronger model's reading is what its user pays
for; the weaker one's claims would stand in for it unseen). The store is a small SQLite file in the data directory
(config.Paths.summaries); None keeps them in memory, for one run.

The file is data from outside the run (another version of readfirst, a disk fault, a hand edit): one that is not
a database, or a table of another shape, is said in a sentence naming the file; a row whose claims are not the
list this module writes is a summary not found (the model is asked again and the row replaced).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import ReadfirstError


def chunk_key(chunk: Mapping[str, Any]) -> str:
    text = str(chunk.get("text") or chunk.get("snippet") or "")
    return f"{chunk.get('id')}:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


class SummaryCache:
    """chunk key -> the claims {"claim", "citations": [chunk ids]} the model made about that chunk ([]: none).
    `model`: the model whose claims these are ("" for none named); the key carries it."""

    def __init__(self, path: Path | None = None, *, model: str = ""):
        self._lock = threading.Lock()
        self._memory: dict[str, list[dict[str, Any]]] = {}
        self._model = model
        self._path = path
        self._db = None
        if path is not None:
            with self._said():
                path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(path, check_same_thread=False, timeout=30)
                self._db.execute("CREATE TABLE IF NOT EXISTS summaries (key TEXT PRIMARY KEY, claims TEXT NOT NULL)")
                self._db.execute("SELECT key, claims FROM summaries LIMIT 1").fetchall()
                self._db.commit()

    @contextmanager
    def _said(self):
        """SQLite's (and the file system's) errors on the file as one sentence (ReadfirstError) naming it."""
        try:
            yield
        except (sqlite3.Error, OSError) as e:
            raise ReadfirstError(f"{self._path} is not a readable file of chunk summaries ({e}); move it aside "
                                 f"or delete it, and the summaries are made again") from None

    def _key(self, chunk: Mapping[str, Any]) -> str:
        return f"{self._model}:{chunk_key(chunk)}" if self._model else chunk_key(chunk)

    def get(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        key = self._key(chunk)
        with self._lock:
            if key in self._memory or self._db is None:
                return self._memory.get(key)
            with self._said():
                row = self._db.execute("SELECT claims FROM summaries WHERE key = ?", (key,)).fetchone()
        return _claims(row[0]) if row else None

    def put(self, chunk: Mapping[str, Any], claims: list[dict[str, Any]]) -> None:
        key = self._key(chunk)
        with self._lock:
            self._memory[key] = claims
            if self._db is not None:
                with self._said():
                    self._db.execute("INSERT OR REPLACE INTO summaries (key, claims) VALUES (?, ?)",
                                     (key, json.dumps(claims)))
                    self._db.commit()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _claims(stored: Any) -> list[dict[str, Any]] | None:
    """A row's claims as put() wrote them: a list of {"claim": text, "citations": [ids]}; None otherwise."""
    try:
        claims = json.loads(stored) if isinstance(stored, (str, bytes)) else None
    except ValueError:
        return None
    if not isinstance(claims, list):
        return None
    for c in claims:
        if not (isinstance(c, dict) and isinstance(c.get("claim"), str) and isinstance(c.get("citations"), list)
                and all(isinstance(i, str) for i in c["citations"])):
            return None
    return claims
