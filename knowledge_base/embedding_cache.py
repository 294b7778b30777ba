"""Vectors already computed, keyed by the embedder's name and the text's SHA-256: the same text is never embedded
twice by the same embedder. Code that upstream and a fork share, a chunk an interrupted ingestion already
embedded, a re-ingested unit whose text did not change, and `kb rebuild` of what was ingested before all cost a
lookup instead of a forward pass.

SQLite beside the store (its own file: `kb reset` empties the store, not what the model computed). Vectors are
float32 bytes; 384 floats are 1.5 KiB, so the whole ik_llama.cpp tree is about 35 MiB.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

SCHEMA_VERSION = 1


def text_digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class EmbeddingCache:
    def __init__(self, path: Path | str):
        self.path = str(path)
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        if self._db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            self._db.execute("DROP TABLE IF EXISTS vectors")
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (model TEXT NOT NULL, digest BLOB NOT NULL, "
                         "vector BLOB NOT NULL, PRIMARY KEY (model, digest)) WITHOUT ROWID")
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    def count(self, model: str | None = None) -> int:
        if model is None:
            return self._db.execute("SELECT count(*) FROM vectors").fetchone()[0]
        return self._db.execute("SELECT count(*) FROM vectors WHERE model = ?", (model,)).fetchone()[0]

    def get(self, model: str, digests: Sequence[bytes]) -> dict[bytes, list[float]]:
        found: dict[bytes, list[float]] = {}
        for start in range(0, len(digests), 500):  # SQLite's limit on bound parameters
            part = list(digests[start:start + 500])
            rows = self._db.execute(f"SELECT digest, vector FROM vectors WHERE model = ? AND digest IN "
                                    f"({','.join('?' * len(part))})", [model, *part])
            found.update((d, np.frombuffer(v, dtype=np.float32).tolist()) for d, v in rows)
        return found

    def put(self, model: str, rows: Iterable[tuple[bytes, Sequence[float]]]) -> None:
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO vectors (model, digest, vector) VALUES (?, ?, ?)",
                                 [(model, d, np.asarray(v, dtype=np.float32).tobytes()) for d, v in rows])

    def embed(self, model: str, texts: Sequence[str], compute: Callable[[list[str]], list[list[float]]]
              ) -> tuple[list[list[float]], int]:
        """Vectors for `texts` in order, computing only those not cached (each distinct text once), and the
        number computed."""
        digests = [text_digest(t) for t in texts]
        known = self.get(model, list(dict.fromkeys(digests)))
        missing = {d: t for d, t in zip(digests, texts) if d not in known}
        if missing:
            fresh = compute(list(missing.values()))
            computed = dict(zip(missing, fresh))
            self.put(model, computed.items())
            known.update(computed)
        return [known[d] for d in digests], len(missing)
