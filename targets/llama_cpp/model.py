"""Models to benchmark: a synthetic GGUF with TinyLlama 1.1B's exact shapes, or a real GGUF the user names.

Weights cannot be downloaded here, and text-generation speed depends on shapes and types, not on values: random
weights with TinyLlama's shapes (22 layers, n_embd 2048, 32 heads, 4 KV heads, n_ff 5632, the llama SPM vocab
from the source tree's models/) quantized to Q4_0 by the built llama-quantize benchmark like the real model
(606.5 MiB). The F16 file is written with the source tree's own gguf-py, so the format always matches the build.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ...errors import ModelError

QUANT_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "IQ4_NL",
               "IQ4_XS", "F16", "BF16")


@dataclass(frozen=True)
class ModelShape:
    name: str = "tinyllama-1.1b-synthetic"
    n_vocab: int = 32000
    n_embd: int = 2048
    n_layer: int = 22
    n_head: int = 32
    n_head_kv: int = 4
    n_ff: int = 5632
    n_ctx_train: int = 2048
    rope_freq_base: float = 10000.0
    rms_eps: float = 1e-5
    seed: int = 0

    @property
    def n_embd_kv(self) -> int:
        return self.n_embd // self.n_head * self.n_head_kv

    def key(self, quant: str) -> str:
        digest = hashlib.sha256(json.dumps([asdict(self), quant, 2], sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.name}-{quant}-{digest}"


def tensor_shapes(shape: ModelShape) -> list[tuple[str, tuple[int, ...]]]:
    """Names and numpy shapes (rows, cols) of the llama architecture's tensors."""
    e, kv, ff = shape.n_embd, shape.n_embd_kv, shape.n_ff
    tensors = [("token_embd.weight", (shape.n_vocab, e)), ("output_norm.weight", (e,)),
               ("output.weight", (shape.n_vocab, e))]
    for i in range(shape.n_layer):
        b = f"blk.{i}."
        tensors += [(b + "attn_norm.weight", (e,)), (b + "attn_q.weight", (e, e)), (b + "attn_k.weight", (kv, e)),
                    (b + "attn_v.weight", (kv, e)), (b + "attn_output.weight", (e, e)), (b + "ffn_norm.weight", (e,)),
                    (b + "ffn_gate.weight", (ff, e)), (b + "ffn_up.weight", (ff, e)), (b + "ffn_down.weight", (e, ff))]
    return tensors


def write_f16(source_tree: Path, dest: Path, shape: ModelShape = ModelShape(),
              progress: Callable[[int, int], None] = lambda done, total: None) -> Path:
    """Write the synthetic model as F16 (norms F32, as converters do) with the tree's gguf-py and SPM vocab."""
    gguf = _import_gguf(source_tree)
    vocab_file = source_tree / "models" / "ggml-vocab-llama-spm.gguf"
    if not vocab_file.is_file():
        raise ModelError(f"the source tree has no {vocab_file.relative_to(source_tree)} to take the vocab from")
    vocab = gguf.GGUFReader(str(vocab_file))
    field = vocab.fields

    writer = gguf.GGUFWriter(str(dest) + ".part", "llama")
    writer.add_name(shape.name)
    writer.add_context_length(shape.n_ctx_train)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_dimension_count(shape.n_embd // shape.n_head)
    writer.add_rope_freq_base(shape.rope_freq_base)
    writer.add_layer_norm_rms_eps(shape.rms_eps)
    writer.add_vocab_size(shape.n_vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(field["tokenizer.ggml.tokens"].contents())
    writer.add_token_scores(field["tokenizer.ggml.scores"].contents())
    writer.add_token_types(field["tokenizer.ggml.token_type"].contents())
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    rng = np.random.default_rng(shape.seed)
    tensors = tensor_shapes(shape)
    # Declare every tensor first, then stream the data one tensor at a time: 2.2 GB never sits in memory.
    for name, dims in tensors:
        dtype = np.float32 if len(dims) == 1 else np.float16
        writer.add_tensor_info(name, dims, np.dtype(dtype), int(np.prod(dims)) * np.dtype(dtype).itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for n, (name, dims) in enumerate(tensors):
        if len(dims) == 1:
            data = np.ones(dims, dtype=np.float32)
        else:
            # Scaled like an initialization, so activations stay finite through 22 layers.
            data = (rng.standard_normal(dims, dtype=np.float32) * (0.5 / np.sqrt(dims[1]))).astype(np.float16)
        writer.write_tensor_data(data)
        progress(n + 1, len(tensors))
    writer.close()
    os.replace(str(dest) + ".part", dest)
    return dest


def _import_gguf(source_tree: Path):
    gguf_py = source_tree / "gguf-py"
    if not (gguf_py / "gguf" / "__init__.py").is_file():
        raise ModelError(f"the source tree {source_tree} has no gguf-py")
    sys.path.insert(0, str(gguf_py))
    try:
        for mod in [m for m in sys.modules if m == "gguf" or m.startswith("gguf.")]:
            del sys.modules[mod]  # another gguf may have been imported: use the tree's own
        import gguf
        return gguf
    finally:
        sys.path.remove(str(gguf_py))


def validate_gguf(path: Path) -> dict:
    """Check that `path` is a readable GGUF model; return a few facts about it. Clear errors otherwise."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file {path} does not exist")
    if not path.is_file():
        raise ModelError(f"model path {path} is not a file")
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:4] != b"GGUF":
        raise ModelError(f"{path} is not a GGUF file (bad magic)")
    version = int.from_bytes(head[4:8], "little")
    n_tensors = int.from_bytes(head[8:16], "little")
    if version not in (2, 3) or n_tensors == 0 or n_tensors > 100_000:
        raise ModelError(f"{path} is a corrupt or unsupported GGUF (version {version}, {n_tensors} tensors)")
    try:
        import gguf as _gguf  # the PyPI package is enough to read the header and tensor table
        reader = _gguf.GGUFReader(str(path))
        arch = reader.fields["general.architecture"].contents()
        size = path.stat().st_size
        end = max(int(t.data_offset) + int(t.n_bytes) for t in reader.tensors)
    except Exception as e:  # a truncated or corrupt file fails in many ways inside the reader
        raise ModelError(f"{path} is a corrupt GGUF: {e}") from e
    if end > size:
        raise ModelError(f"{path} is truncated: tensors end at byte {end}, the file has {size}")
    return {"architecture": arch, "tensors": len(reader.tensors), "bytes": size}


def synthesize(target, commit: str, models_dir: Path, *, quant: str = "Q4_0", shape: ModelShape = ModelShape(),
               say: Callable[[str], None] = lambda _: None,
               progress: Callable[[int, int], None] = lambda done, total: None) -> Path:
    """The synthetic model quantized to `quant`, cached by its parameters; built with `target`'s llama-quantize."""
    if quant not in QUANT_TYPES:
        raise ModelError(f"unknown quantization {quant!r}; choose one of {', '.join(QUANT_TYPES)}")
    dest = models_dir / f"{shape.key(quant)}.gguf"
    if dest.is_file():
        return dest
    models_dir.mkdir(parents=True, exist_ok=True)
    f16 = models_dir / f".{shape.key('F16')}.f16.gguf"
    if not f16.is_file():
        say(f"writing the synthetic F16 model ({shape.name}, random weights)")
        write_f16(target.source.path, f16, shape, progress)
    if quant == "F16":
        os.replace(f16, dest)
        return dest
    say(f"quantizing it to {quant} with llama-quantize")
    target.quantize(commit, source_model=f16, dest=dest, quant=quant)
    f16.unlink(missing_ok=True)  # 2.2 GB that nothing else needs
    return dest


def import_model(path: Path, models_dir: Path) -> Path:
    """Validate a user's GGUF and place it in the model cache (hard link when possible), which sandboxes mount."""
    info = validate_gguf(path)
    path = Path(path).resolve()
    digest = hashlib.sha256(f"{path}:{info['bytes']}:{path.stat().st_mtime_ns}".encode()).hexdigest()[:10]
    dest = models_dir / "user" / f"{path.stem}-{digest}.gguf"
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(path, dest)
    except OSError:  # another file system
        shutil.copyfile(path, dest)
    return dest


def bytes_read_per_token(path: Path) -> int:
    """Weight bytes one generated token reads: every tensor, except that the embedding lookup reads one row."""
    import gguf as _gguf
    reader = _gguf.GGUFReader(str(path))
    total = 0
    for t in reader.tensors:
        n = int(t.n_bytes)
        if t.name == "token_embd.weight":
            n //= max(1, int(t.shape[-1]) if len(t.shape) > 1 else 1)  # one row of n_vocab
        total += n
    return total
