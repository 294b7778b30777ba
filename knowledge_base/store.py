"""The knowledge base: chunks in Chroma (dense) and SQLite FTS5 (lexical), searched together.

- Embedded Chroma (`PersistentClient`) under the data directory by default; a Chroma server when a URL is given.
- One writer at a time (a file lock taken without waiting: a second writer is told at once); readers never lock.
- Ingestion works unit by unit (a file, a diff, a paper): a unit's new chunks are written before its stale ones
  are deleted, so an interrupted ingestion leaves a usable store and running it again completes it.
- The lexical index is derived from Chroma's documents; a writer checks on open that both hold the same ids and
  repairs the lexical side if not.
- A writer embeds through the embedding cache (embedding_cache.py): text embedded once is never embedded again.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from filelock import FileLock, Timeout

from ..errors import KnowledgeBaseError
from .chunking import Chunk, Skipped, Unit
from .embedder import Embedder
from .embedding_cache import EmbeddingCache
from .lexical import LexicalIndex
from .search import fuse, lexical_weight, to_chroma_where

COLLECTION = "readfirst-kb"
MODES = ("hybrid", "dense", "lexical")
# (chunks done so far, the unit just done): called after every unit, unchanged ones included.
IngestProgress = Callable[[int, str], None]


@dataclass
class IngestSummary:
    """What one ingestion did, unit by unit (a unit is a file, a diff, a commit or a paper)."""
    added: int = 0
    unchanged: int = 0
    replaced: int = 0
    removed: int = 0
    chunks_added: int = 0
    chunks_deleted: int = 0
    chunks_embedded: int = 0      # of chunks_added, those the model computed (the rest came from the cache)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # sentences for the user: why a fork gave no code, say

    def as_dict(self) -> dict[str, Any]:
        return {"added": self.added, "unchanged": self.unchanged, "replaced": self.replaced,
                "removed": self.removed, "chunks_added": self.chunks_added,
                "chunks_deleted": self.chunks_deleted, "chunks_embedded": self.chunks_embedded,
                "skipped": [{"unit": u, "reason": r} for u, r in self.skipped], "notes": list(self.notes)}


def _chroma_settings():
    from chromadb.config import Settings
    return Settings(anonymized_telemetry=False, allow_reset=True)  # telemetry would send traffic off this host


def open_client(directory: Path, chroma_url: str | None):
    """A Chroma client: a server's when a URL is given (checked with a heartbeat), else the embedded one."""
    import chromadb
    if chroma_url:
        url = urlparse(chroma_url if "://" in chroma_url else f"http://{chroma_url}")
        if not url.hostname:
            raise KnowledgeBaseError(f"not a Chroma server URL: {chroma_url!r} (expected http://HOST:PORT)")
        try:
            client = chromadb.HttpClient(host=url.hostname, port=url.port or 8000, ssl=url.scheme == "https",
                                         settings=_chroma_settings())
            client.heartbeat()
        except Exception as e:  # the client raises several unrelated types for "nobody answers"
            raise KnowledgeBaseError(f"no Chroma server answers at {chroma_url} ({type(e).__name__}: "
                                     f"{str(e)[:200]})") from e
        return client
    try:
        return chromadb.PersistentClient(path=str(directory / "chroma"), settings=_chroma_settings())
    except Exception as e:
        raise KnowledgeBaseError(f"the knowledge base at {directory} cannot be opened ({str(e)[:200]}); "
                                 f"`readfirst kb rebuild` re-creates it from its recorded sources") from e


class KnowledgeBase:
    """Chunks with their origins, searchable by meaning and by exact identifiers. Satisfies KnowledgeStore."""

    def __init__(self, directory: Path, embedder: Embedder, *, chroma_url: str | None = None,
                 writable: bool = False, batch_size: int = 64):
        self.directory = Path(directory)
        self.embedder = embedder
        self.chroma_url = chroma_url
        self.writable = writable
        self.batch_size = batch_size
        self._lock: FileLock | None = None
        self.lexical: LexicalIndex | None = None
        self.embeddings: EmbeddingCache | None = None
        self._collection = None
        if not writable and not chroma_url and not (self.directory / "chroma").is_dir():
            return  # nothing ingested here yet: a reader creates nothing and finds nothing
        self.directory.mkdir(parents=True, exist_ok=True)
        if writable:
            self._acquire_lock()
        try:
            self._client = open_client(self.directory, chroma_url)
            self._collection = self._open_collection()
            suffix = "" if not chroma_url else "-" + re.sub(r"[^A-Za-z0-9]+", "_", chroma_url).strip("_")
            self.lexical = LexicalIndex(self.directory / f"lexical{suffix}.sqlite")
            if writable:
                self.embeddings = EmbeddingCache(self.directory / "embeddings.sqlite")
            # A client of a server keeps its own lexical index: a reader builds it once, from the server.
            if writable or (chroma_url and self._collection is not None and self.lexical.count() == 0):
                self._check_consistency()
        except BaseException:
            self.close()
            raise

    # -- opening, locking, checking -------------------------------------------------------------------------

    def _acquire_lock(self) -> None:
        lock_path = self.directory / "write.lock"
        self._lock = FileLock(str(lock_path))
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            holder = (self.directory / "write.pid").read_text().strip() if (self.directory / "write.pid").exists() \
                else "unknown"
            self._lock = None
            raise KnowledgeBaseError(f"another process (pid {holder}) is writing to the knowledge base at "
                                     f"{self.directory}; wait for it to finish (queries keep working)") from None
        (self.directory / "write.pid").write_text(str(os.getpid()))

    def _open_collection(self):
        try:
            if self.writable:
                collection = self._client.get_or_create_collection(
                    COLLECTION, embedding_function=None,
                    metadata={"hnsw:space": "cosine", "embedder": self.embedder.name})
            else:
                from chromadb.errors import NotFoundError
                try:
                    collection = self._client.get_collection(COLLECTION, embedding_function=None)
                except NotFoundError:
                    return None  # nothing ingested yet: an empty store answers every query with nothing
                # Anything else is a damaged store, said below: read as empty, a run would go on with no research.
            collection.count()
        except KnowledgeBaseError:
            raise
        except Exception as e:
            raise KnowledgeBaseError(f"the knowledge base at {self.chroma_url or self.directory} is unreadable "
                                     f"({str(e)[:200]}); `readfirst kb rebuild` re-creates it") from e
        built_with = (collection.metadata or {}).get("embedder")
        if built_with and built_with != self.embedder.name:
            raise KnowledgeBaseError(f"the knowledge base was built with the embedding model {built_with!r}, not "
                                     f"{self.embedder.name!r}; use that model (`kb --embedding-model`, "
                                     f"`--embedding-backend`) or re-embed everything with `readfirst kb rebuild`")
        return collection

    def _all_ids(self, where: Mapping[str, Any] | None = None, include: list[str] | None = None):
        """Pages through Chroma (a server limits one response), yielding (id, metadata or None)."""
        if self._collection is None:
            return
        offset, page = 0, 5000
        while True:
            got = self._collection.get(where=where or None, include=include or [], limit=page, offset=offset)
            metas = got.get("metadatas") or [None] * len(got["ids"])
            docs = got.get("documents") or [None] * len(got["ids"])
            yield from zip(got["ids"], metas, docs)
            if len(got["ids"]) < page:
                return
            offset += page

    def _check_consistency(self) -> None:
        chroma_ids = {cid for cid, _, _ in self._all_ids()}
        lexical_ids = self.lexical.ids()
        if chroma_ids == lexical_ids:
            return
        self.lexical.delete(sorted(lexical_ids - chroma_ids))
        missing = sorted(chroma_ids - lexical_ids)
        for start in range(0, len(missing), 1000):
            got = self._collection.get(ids=missing[start:start + 1000], include=["documents", "metadatas"])
            self.lexical.add(zip(got["ids"], got["documents"], got["metadatas"]))

    def close(self) -> None:
        if self.embeddings is not None:
            self.embeddings.close()
            self.embeddings = None
        if self.lexical is not None:
            self.lexical.close()
            self.lexical = None
        if self._lock is not None:
            (self.directory / "write.pid").unlink(missing_ok=True)
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "KnowledgeBase":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- sources (what `kb rebuild` replays) -----------------------------------------------------------------

    @property
    def _manifest_path(self) -> Path:
        return self.directory / ("sources.json" if not self.chroma_url else "sources-server.json")

    def sources(self) -> dict[str, dict[str, Any]]:
        """What was ingested, by source; {} before the first ingestion. A damaged record is said, not read as
        none: the next ingestion would overwrite it, and `kb rebuild` would no longer know what to re-read."""
        try:
            sources = json.loads(self._manifest_path.read_text())
            if not isinstance(sources, dict):
                raise ValueError("not a JSON object")
            return sources
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise KnowledgeBaseError(f"the knowledge base's record of its sources ({self._manifest_path}) cannot "
                                     f"be read ({type(e).__name__}: {str(e)[:200]}); restore it from a backup, or "
                                     f"delete it and ingest the sources again") from e

    def record_source(self, source: str, recipe: Mapping[str, Any]) -> None:
        sources = self.sources()
        sources[source] = dict(recipe)
        tmp = self._manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(sources, indent=2, sort_keys=True))
        tmp.replace(self._manifest_path)

    @property
    def _tree_state_path(self) -> Path:
        return self.directory / ("fork-trees.json" if not self.chroma_url else "fork-trees-server.json")

    def tree_state(self, source: str) -> dict[str, Any] | None:
        """What a tree comparison last read completely (the blob of each path on both sides), or None."""
        try:
            return json.loads(self._tree_state_path.read_text()).get(source)
        except (OSError, json.JSONDecodeError):
            return None

    def record_tree_state(self, source: str, state: Mapping[str, Any]) -> None:
        try:
            states = json.loads(self._tree_state_path.read_text())
        except (OSError, json.JSONDecodeError):
            states = {}
        states[source] = dict(state)
        tmp = self._tree_state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(states))
        tmp.replace(self._tree_state_path)

    def has_source(self, source: str) -> bool:
        if self._collection is None:
            return False
        return bool(self._collection.get(where={"source": source}, include=[], limit=1)["ids"])

    # -- writing ---------------------------------------------------------------------------------------------

    def _require_writable(self) -> None:
        if not self.writable:
            raise KnowledgeBaseError("the knowledge base was opened read-only")

    def ingest(self, source: str, items: Iterable[Unit | Skipped], *, prune: bool | Collection[str] = True,
               progress: IngestProgress | None = None) -> IngestSummary:
        """Write every unit of one source; units the source no longer has are removed when `prune` (True: any
        of them; a collection of unit keys: only those, for a reading of part of the source).

        Units are written in batches of about `batch_size` chunks; an interruption loses at most the batch being
        written (its vectors are already in the embedding cache), and a rerun skips every unit already written."""
        self._require_writable()
        summary = IngestSummary()
        existing: dict[str, set[str]] = {}
        for cid, meta, _ in self._all_ids({"source": source}, include=["metadatas"]):
            existing.setdefault(meta["unit"], set()).add(cid)
        pending: list[tuple[list[Chunk], list[str]]] = []
        pending_chunks = done = 0
        for item in items:
            if progress and done:
                progress(done, key)
            key = item.key if isinstance(item, Unit) else item.unit
            done += len(item.chunks) if isinstance(item, Unit) else 0
            if isinstance(item, Skipped):
                summary.skipped.append((item.unit, item.reason))
                existing.pop(item.unit, None)  # a unit that became unreadable keeps its last good chunks
                continue
            chunks = list({c.id: c for c in item.chunks}.values())
            new_ids = {c.id for c in chunks}
            old_ids = existing.pop(item.key, set())
            if not new_ids and not old_ids:
                summary.skipped.append((item.key, "nothing to index"))
                continue
            if new_ids == old_ids:
                summary.unchanged += 1
                continue
            if old_ids:
                summary.replaced += 1
            else:
                summary.added += 1
            pending.append(([c for c in chunks if c.id not in old_ids], sorted(old_ids - new_ids)))
            pending_chunks += len(pending[-1][0])
            if pending_chunks >= self.batch_size:
                self._flush(source, pending, summary)
                pending, pending_chunks = [], 0
        self._flush(source, pending, summary)
        if progress and done:
            progress(done, key)
        if prune is False:
            existing = {}
        elif prune is not True:
            # A reading of part of the source: the units it did not read are as they were.
            summary.unchanged += sum(1 for unit in existing if unit not in prune)
            existing = {unit: ids for unit, ids in existing.items() if unit in prune}
        if prune and existing:
            gone = sorted(cid for ids in existing.values() for cid in ids)
            self._delete(gone)
            summary.removed += len(existing)
            summary.chunks_deleted += len(gone)
        return summary

    def _flush(self, source: str, pending: list[tuple[list[Chunk], list[str]]], summary: IngestSummary) -> None:
        new_chunks = [c for chunks, _ in pending for c in chunks]
        if new_chunks:
            vectors, computed = self.embeddings.embed(self.embedder.name, [c.text for c in new_chunks],
                                                      self.embedder.embed)
            summary.chunks_embedded += computed
            metas = [c.metadata(source) for c in new_chunks]
            ids = [c.id for c in new_chunks]
            self._collection.upsert(ids=ids, embeddings=vectors, documents=[c.text for c in new_chunks],
                                    metadatas=metas)
            self.lexical.add(zip(ids, [c.text for c in new_chunks], metas))
            summary.chunks_added += len(new_chunks)
        stale = [cid for _, old in pending for cid in old]
        if stale:  # only after the replacements are in: an interruption never leaves a unit empty
            self._delete(stale)
            summary.chunks_deleted += len(stale)

    def _delete(self, ids: list[str]) -> None:
        for start in range(0, len(ids), 5000):
            self._collection.delete(ids=ids[start:start + 5000])
        self.lexical.delete(ids)

    def forget_source(self, source: str) -> int:
        """Remove one source: its chunks, its record and its tree state; the number of chunks removed."""
        self._require_writable()
        ids = [cid for cid, _, _ in self._all_ids({"source": source})]
        self._delete(ids)
        for path in (self._manifest_path, self._tree_state_path):
            try:
                records = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(records, dict) and records.pop(source, None) is not None:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(records, indent=2, sort_keys=True))
                tmp.replace(path)
        return len(ids)

    def reset(self) -> None:
        """Remove every chunk and every recorded source."""
        self._require_writable()
        try:
            self._client.delete_collection(COLLECTION)
        except Exception:
            pass  # there was none
        self._collection = self._open_collection()
        self.lexical.clear()
        self._manifest_path.unlink(missing_ok=True)
        self._tree_state_path.unlink(missing_ok=True)

    # -- reading ---------------------------------------------------------------------------------------------

    def count(self) -> int:
        return 0 if self._collection is None else self._collection.count()

    def query(self, text: str, *, k: int = 10, where: Mapping[str, Any] | None = None,
              mode: str = "hybrid") -> list[dict[str, Any]]:
        """The k best chunks for `text`. `where`: kind (one or a list), repo, source, path (a glob or a list of
        globs, any of which may match).

        hybrid fuses the dense and lexical rankings by reciprocal rank; dense and lexical are there to compare.
        Both rankings are ids only (with metadata when a path glob filters them); the k chunks that win are then
        read in one request, so a query costs one vector search, one FTS5 query and one fetch of k documents.
        """
        if mode not in MODES:
            raise KnowledgeBaseError(f"unknown query mode {mode!r}; choose one of {', '.join(MODES)}")
        if self._collection is None or not text.strip():
            return []
        where = dict(where or {})
        path_glob = where.pop("path", None)
        path_globs = [path_glob] if isinstance(path_glob, str) else list(path_glob or [])
        kinds = where.get("kind") or []
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        depth = max(50, 4 * k)
        dense: list[tuple[str, float]] = []
        if mode in ("hybrid", "dense"):
            # A path glob is not a Chroma filter: fetch deeper and filter here, by the metadata alone.
            n = depth * (10 if path_globs else 1)
            vector = self.embedder.embed([text])
            try:
                res = self._collection.query(query_embeddings=vector, n_results=n, where=to_chroma_where(where),
                                             include=["distances", "metadatas"] if path_globs else ["distances"])
            except Exception as e:  # a damaged index file surfaces here, as one of several error types
                raise KnowledgeBaseError(f"the knowledge base at {self.chroma_url or self.directory} could not "
                                         f"be searched ({str(e)[:200]}); `readfirst kb rebuild` re-creates "
                                         f"it") from e
            metas = res["metadatas"][0] if path_globs else [None] * len(res["ids"][0])
            for cid, meta, dist in zip(res["ids"][0], metas, res["distances"][0]):
                if path_globs and not any(fnmatch.fnmatchcase(meta.get("path", ""), g) for g in path_globs):
                    continue
                dense.append((cid, 1.0 - dist))
        lexical: list[tuple[str, float]] = []
        if mode in ("hybrid", "lexical"):
            lexical = self.lexical.search(text, k=depth, kinds=kinds, repo=where.get("repo"),
                                          path_globs=path_globs, source=where.get("source"))
        ranked = fuse(dense, lexical, k=k, weights=(1.0, lexical_weight(text))) if mode == "hybrid" else (dense or lexical)[:k]
        found: dict[str, tuple[str, dict]] = {}
        if ranked:
            got = self._collection.get(ids=[cid for cid, _ in ranked], include=["documents", "metadatas"])
            found = {cid: (doc, meta) for cid, doc, meta in zip(got["ids"], got["documents"], got["metadatas"])}
        dense_rank = {cid: i + 1 for i, (cid, _) in enumerate(dense)}
        lexical_rank = {cid: i + 1 for i, (cid, _) in enumerate(lexical)}
        results = []
        for cid, score in ranked:
            if cid not in found:
                continue  # the lexical index is ahead of Chroma (an interrupted write); the next writer repairs it
            doc, meta = found[cid]
            results.append({"id": cid, "score": round(float(score), 6), **meta, "text": doc,
                            "snippet": snippet(doc), "dense_rank": dense_rank.get(cid),
                            "lexical_rank": lexical_rank.get(cid)})
        return results

    def get(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """The chunks with these ids, in the order asked, whole (what a citation points at); unknown ids are left
        out: a chunk cited by an earlier run may have been replaced since."""
        wanted = list(dict.fromkeys(str(i) for i in ids))
        if self._collection is None or not wanted:
            return []
        got = self._collection.get(ids=wanted, include=["documents", "metadatas"])
        found = {cid: (doc, meta) for cid, doc, meta in zip(got["ids"], got["documents"], got["metadatas"])}
        return [{"id": cid, **found[cid][1], "text": found[cid][0], "snippet": snippet(found[cid][0])}
                for cid in wanted if cid in found]

    def chunks(self, *, vectors: bool = False):
        """Every stored chunk as (id, text, metadata[, vector]), page by page."""
        if self._collection is None:
            return
        offset, page = 0, 2000
        include = ["documents", "metadatas"] + (["embeddings"] if vectors else [])
        while True:
            got = self._collection.get(include=include, limit=page, offset=offset)
            rows = zip(got["ids"], got["documents"], got["metadatas"],
                       *([got["embeddings"]] if vectors else []))
            yield from rows
            if len(got["ids"]) < page:
                return
            offset += page

    def stats(self) -> dict[str, Any]:
        by_kind: dict[str, int] = {}
        by_source: dict[str, int] = {}
        for _, meta, _ in self._all_ids(include=["metadatas"]):
            by_kind[meta.get("kind", "?")] = by_kind.get(meta.get("kind", "?"), 0) + 1
            by_source[meta.get("source", "?")] = by_source.get(meta.get("source", "?"), 0) + 1
        return {"location": self.chroma_url or str(self.directory), "embedder": self.embedder.name,
                "chunks": self.count(), "lexical_chunks": self.lexical.count() if self.lexical else 0,
                "by_kind": by_kind,
                "by_source": by_source, "sources": self.sources()}


def snippet(text: str, lines: int = 6, width: int = 160) -> str:
    body = [ln.rstrip()[:width] for ln in text.splitlines()[1:] if ln.strip()] or text.splitlines()[:1]
    return "\n".join(body[:lines])
