"""The model's claims about each knowledge-base chunk, kept across rounds and runs.

A chunk is summarized once per revision of its text: its key is (chunk id, digest of its text), so a fork chunk
read by seven queries over three rounds costs one call, and a chunk whose text changed is read again. The store
is a small SQLite file in the data directory (config.Paths.summaries); None keeps them in memory, for one run.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def chunk_key(chunk: Mapping[str, Any]) -> str:
    text = str(chunk.get("text") or chunk.get("snippet") or "")
    return f"{chunk.get('id')}:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


class SummaryCache:
    """chunk key -> the claims {"claim", "citations": [chunk ids]} the model made about that chunk ([]: none)."""

    def __init__(self, path: Path | None = None):
        self._lock = threading.Lock()
        self._memory: dict[str, list[dict[str, Any]]] = {}
        self._db = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, timeout=30)
            self._db.execute("CREATE TABLE IF NOT EXISTS summaries (key TEXT PRIMARY KEY, claims TEXT NOT NULL)")
            self._db.commit()

    def get(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        key = chunk_key(chunk)
        with self._lock:
            if key in self._memory or self._db is None:
                return self._memory.get(key)
            row = self._db.execute("SELECT claims FROM summaries WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, chunk: Mapping[str, Any], claims: list[dict[str, Any]]) -> None:
        key = chunk_key(chunk)
        with self._lock:
            self._memory[key] = claims
            if self._db is not None:
                self._db.execute("INSERT OR REPLACE INTO summaries (key, claims) VALUES (?, ?)",
                                 (key, json.dumps(claims)))
                self._db.commit()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
