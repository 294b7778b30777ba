"""The labelled queries of the knowledge-base benchmark: query → what answers it.

A label is a predicate on a result's origin, not a chunk id (ids change when a file changes): `path` is a glob,
`symbol` a regular expression matched in full, `paper` an arXiv id, `gap` a regular expression on a backend-gap
unit. A result is relevant when every field given matches. `exact` marks queries that name an identifier.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

IQK = "ggml/src/iqk/*"
CPU = "ggml/src/ggml-cpu/*"

QUERIES: list[dict[str, Any]] = [
    # exact identifiers
    {"q": "ggml_cpu_try_fuse_ops", "exact": True, "path": CPU, "symbol": "ggml_cpu_try_fuse_ops"},
    {"q": "GGML_OP_SOFT_MAX", "exact": True, "path": CPU, "symbol": r".*soft_max.*|ggml_compute_forward|ggml_get_n_tasks"},
    {"q": "iqk_flash_attn_noalibi", "exact": True, "path": IQK, "symbol": "iqk_flash_attn_noalibi"},
    {"q": "ggml_compute_forward_flash_attn_ext_f16", "exact": True, "path": CPU,
     "symbol": "ggml_compute_forward_flash_attn_ext_f16"},
    {"q": "iqk_rms_rms_add", "exact": True, "path": IQK, "symbol": "iqk_rms_rms_add"},
    {"q": "iqk_mul_multi_add", "exact": True, "path": IQK, "symbol": "iqk_mul_multi_add"},
    {"q": "ggml_barrier", "exact": True, "path": CPU, "symbol": "ggml_barrier"},
    {"q": "ggml_compute_forward_rms_norm_mul_fused", "exact": True, "path": CPU,
     "symbol": "ggml_compute_forward_rms_norm_mul_fused|ggml_cpu_try_fuse_ops"},
    {"q": "iqk_hadamard", "exact": True, "path": IQK, "symbol": "iqk_hadamard"},
    {"q": "ggml_threadpool_new_impl", "exact": True, "path": CPU, "symbol": "ggml_threadpool_new_impl"},
    {"q": "iqk_set_kernels_float", "exact": True, "path": IQK, "symbol": "iqk_set_kernels_float"},
    {"q": "ggml_compute_forward_mul_mat_one_chunk", "exact": True, "path": CPU,
     "symbol": "ggml_compute_forward_mul_mat_one_chunk"},
    {"q": "ggml_vec_dot_q4_0_q8_0", "exact": True, "symbol": r"ggml_vec_dot_q4_0_q8_0.*"},
    {"q": "iqk_convert_iq2_ks_q8_k_r8", "exact": True, "path": IQK, "symbol": "iqk_convert_iq2_ks_q8_k_r8"},
    {"q": "GGML_OP_RMS_NORM GGML_OP_MUL GGML_OP_ADD fusion", "exact": True, "gap": r".*fusion:RMS_NORM\+MUL\+ADD"},
    # natural language
    {"q": "flash attention kernel for the CPU", "path": "ggml/src/*",
     "symbol": r".*flash_attn.*|.*fattn.*|.*flash.*"},
    {"q": "fuse rms norm with the following multiplication on the CPU", "path": CPU,
     "symbol": "ggml_cpu_try_fuse_ops|ggml_compute_forward_rms_norm_mul_fused"},
    {"q": "barrier to synchronise the worker threads of the thread pool", "path": CPU, "symbol": "ggml_barrier"},
    {"q": "which backends fuse rms norm, multiply and add", "gap": r".*fusion:RMS_NORM\+MUL\+ADD.*"},
    {"q": "top-k expert selection for mixture of experts", "path": IQK,
     "symbol": r"iqk_grouped_top_k|iqk_.*experts|iqk_argsort"},
    {"q": "fast Walsh-Hadamard transform", "symbol": r"iqk_hadamard|.*fwht.*"},
    {"q": "softmax computed in a single pass with a running maximum", "paper": "1805.02867"},
    {"q": "why is token generation bound by memory bandwidth", "paper": "2211.05102|2402.16363"},
    {"q": "register-blocked matrix multiplication from llamafile tinyBLAS",
     "path": "*llamafile*"},
    {"q": "NUMA initialisation and pinning threads to cores", "path": CPU,
     "symbol": r"ggml_numa_init|ggml_thread_apply_affinity|set_numa_thread_affinity|ggml_is_numa"},
    {"q": "quantize a row of floats to 8-bit blocks before the dot product",
     "symbol": r"quantize_row_q8.*|iqk_quantize_row_q8.*"},
    {"q": "sort each row and return the indices", "symbol": r".*argsort.*"},
    {"q": "GELU activation function", "symbol": r".*gelu.*"},
    {"q": "group normalization", "symbol": r".*group_norm.*"},
    {"q": "im2col transform for convolutions", "symbol": r".*im2col.*"},
    {"q": "AdamW optimizer step", "symbol": r".*adamw.*"},
    {"q": "detect whether the CPU supports AVX-512", "path": CPU, "symbol": r"ggml_cpu_has_avx512.*|.*avx512.*"},
    {"q": "paged KV cache memory management", "paper": "2309.06180"},
    {"q": "IO-aware exact attention that never writes the score matrix", "paper": "2205.14135|2307.08691|2112.05682"},
    {"q": "operator fusions other backends have and the CPU backend lacks", "gap": r".*::fusion:.*"},
    {"q": "lookup tables instead of multiplications for low-bit weights", "paper": "2407.00088"},
]


def relevant(result: dict[str, Any], label: dict[str, Any]) -> bool:
    if "path" in label and not fnmatch.fnmatchcase(result.get("path") or "", label["path"]):
        return False
    if "symbol" in label and not re.fullmatch(label["symbol"], result.get("symbol") or ""):
        return False
    if "paper" in label and not re.fullmatch(label["paper"], re.sub(r"v\d+$", "", result.get("paper_id") or "")):
        return False
    if "gap" in label and not (result.get("kind") == "backend-gap" and re.fullmatch(label["gap"], result.get("unit", ""))):
        return False
    return True
