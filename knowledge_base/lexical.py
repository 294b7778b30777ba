"""The lexical side of search: SQLite FTS5 with BM25 ranking, beside Chroma (local Chroma has no sparse index).

FTS5 over bm25s because it updates in place (add and delete by id, in a transaction) and persists on its own,
so it stays consistent with Chroma through the same chunk ids. Identifiers are kept whole (`_` is a token
character) *and* split into their parts, so `ggml_compute_forward_rms_norm` matches exactly, and "rms norm" still
finds it.

A query reads a bounded number of rows: FTS5 scores every row any term matches (about 1 µs a row here), and one
term that most chunks contain (`ggml`, `0`, `return` in llama.cpp code) would cost a scan of most of the index
while BM25 gives it almost no weight (FTS5 floors the IDF of a term in more than half the rows at ~0). Terms are
taken rarest first while the rows they match stay within ROW_BUDGET; a rare term (in at most 1% of the rows) is
always kept, and so is the rarest one. At the size of the whole ik_llama.cpp tree this drops only terms like
those; in a far larger store it drops the commonest words of a query first.
"""

from __future__ import annotations

import functools
import hashlib
import re
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..errors import KnowledgeBaseError

_WORD = re.compile(r"[A-Za-z0-9_]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
STOPWORDS = frozenset("a an and are as at be by for from how in is it of on or the to what where which with does "
                      "do this that".split())


def identifier_parts(text: str) -> list[str]:
    """The pieces of every compound identifier: snake_case and CamelCase split, numbers kept."""
    parts = []
    for word in _WORD.findall(text):
        if "_" in word or _CAMEL.search(word):
            parts += [p for p in re.split(r"_+", _CAMEL.sub("_", word)) if p]
    return parts


def query_terms(query: str) -> list[str]:
    """The query's words and identifier parts, lower case, once each, stopwords left out."""
    terms: list[str] = []
    for word in _WORD.findall(query):
        low = word.lower()
        if low in STOPWORDS:
            continue
        terms.append(low)
        terms += [p.lower() for p in identifier_parts(word)]
    return list(dict.fromkeys(t for t in terms if t))


def match_expression(query: str | Sequence[str]) -> str:
    """An FTS5 OR-query of the query's terms (quoted: no FTS syntax leaks through)."""
    terms = query_terms(query) if isinstance(query, str) else list(query)
    return " OR ".join(f'"{t}"' for t in terms)


ROW_BUDGET = 10_000      # rows one query may score, summed over its terms (~15 ms at 100k chunks)
RARE_SHARE = 0.01        # a term in at most this share of the rows is always kept
NO_WEIGHT_SHARE = 0.5    # a term in more than this share has no BM25 weight at all


SCHEMA_VERSION = 1  # 1: rowid derived from the chunk id, so a delete by id is a lookup, not a table scan


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _said(method: _Method) -> _Method:
    """A damaged index file (garbage, cut short, FTS5 blocks overwritten) surfaces as sqlite3.DatabaseError from
    whichever statement reads the damaged page first: it becomes one sentence saying what to do."""
    @functools.wraps(method)
    def wrapper(self: LexicalIndex, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as e:
            raise self.unusable(e) from e
    return wrapper  # type: ignore[return-value]


def rowid(chunk_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(chunk_id.encode(), digest_size=8).digest(), "big", signed=True)


class LexicalIndex:
    """An FTS5 table of chunk id → searchable text, with the metadata needed to filter.

    The index is derived from Chroma's documents: an older schema is dropped on open, and the store's
    consistency check refills it.
    """

    def __init__(self, path: Path | str):
        self.path = str(path)
        self._rows: int | None = None
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        try:
            self._prepare()
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise self.unusable(e) from e

    def _prepare(self) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")  # readers keep working while one writer writes
        if self._db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            self._db.execute("DROP TABLE IF EXISTS chunks")
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._db.execute(
            "CREATE VIRTUAL TABLE IF NOT EXISTS chunks USING fts5("
            "id UNINDEXED, kind UNINDEXED, repo UNINDEXED, path UNINDEXED, source UNINDEXED, body, "
            "tokenize = \"unicode61 tokenchars '_'\")")
        # Document frequencies per term, read from the index itself (FTS5's own vocabulary table, in memory).
        self._db.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.vocabulary USING fts5vocab(main, chunks, row)")
        self._db.commit()

    def unusable(self, e: sqlite3.DatabaseError) -> KnowledgeBaseError:
        if "locked" in str(e):
            return KnowledgeBaseError(f"the knowledge base's lexical index {self.path} stayed locked by another "
                                      f"process ({e}); try again when it has finished")
        return KnowledgeBaseError(f"the knowledge base's lexical index {self.path} is damaged ({str(e)[:200]}); "
                                  f"`readfirst kb rebuild` re-creates it from the recorded sources")

    def close(self) -> None:
        self._db.close()

    @_said
    def count(self) -> int:
        return self._db.execute("SELECT count(*) FROM chunks").fetchone()[0]

    @_said
    def ids(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT id FROM chunks")}

    @_said
    def add(self, rows: Iterable[tuple[str, str, Mapping[str, Any]]]) -> None:
        """Rows of (id, text, metadata); an id already present is replaced, not doubled."""
        self._rows = None
        rows = list(rows)
        with self._db:
            self._db.executemany("DELETE FROM chunks WHERE rowid = ?", [(rowid(r[0]),) for r in rows])
            self._db.executemany(
                "INSERT INTO chunks (rowid, id, kind, repo, path, source, body) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(rowid(cid), cid, meta.get("kind", ""), meta.get("repo", ""), meta.get("path", ""),
                  meta.get("source", ""), f"{text}\n{' '.join(identifier_parts(text))}")
                 for cid, text, meta in rows])

    @_said
    def delete(self, ids: Sequence[str]) -> None:
        self._rows = None
        with self._db:
            self._db.executemany("DELETE FROM chunks WHERE rowid = ?", [(rowid(i),) for i in ids])

    @_said
    def clear(self) -> None:
        self._rows = None
        with self._db:
            self._db.execute("DELETE FROM chunks")

    @_said
    def selective_terms(self, terms: Sequence[str]) -> list[str]:
        """The terms worth the rows they match (see the module's note), rarest first."""
        if len(terms) <= 1:
            return list(terms)
        df = dict(self._db.execute(f"SELECT term, doc FROM temp.vocabulary WHERE term IN "
                                   f"({','.join('?' * len(terms))})", list(terms)).fetchall())
        if self._rows is None:  # counted once: FTS5 counts by a scan (this process's writes reset it)
            self._rows = self.count()
        rows = max(self._rows, 1)
        kept: list[str] = []
        scanned = 0
        for term in sorted(terms, key=lambda t: df.get(t, 0)):
            n = df.get(term, 0)
            if kept and (n > NO_WEIGHT_SHARE * rows or (n > RARE_SHARE * rows and scanned + n > ROW_BUDGET)):
                continue
            kept.append(term)
            scanned += n
        return kept

    @_said
    def search(self, query: str, *, k: int = 50, kinds: Sequence[str] = (), repo: str | None = None,
               path_globs: Sequence[str] = (), source: str | None = None) -> list[tuple[str, float]]:
        """(id, bm25 score) best first; higher is better (FTS5's bm25() is negated)."""
        expression = match_expression(self.selective_terms(query_terms(query)))
        if not expression:
            return []
        sql = "SELECT id, bm25(chunks) FROM chunks WHERE chunks MATCH ?"
        args: list[Any] = [expression]
        if kinds:
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            args += list(kinds)
        if repo:
            sql += " AND repo = ?"
            args.append(repo)
        if source:
            sql += " AND source = ?"
            args.append(source)
        if path_globs:
            sql += " AND (" + " OR ".join("path GLOB ?" for _ in path_globs) + ")"
            args += list(path_globs)
        sql += " ORDER BY bm25(chunks) LIMIT ?"
        args.append(k)
        try:
            rows = self._db.execute(sql, args).fetchall()
        except sqlite3.OperationalError as e:
            if not str(e).startswith("fts5: syntax error"):
                raise
            return []  # an expression FTS5 cannot parse finds nothing rather than failing the whole query
        return [(cid, -score) for cid, score in rows]
