"""The labelled queries of the knowledge-base benchmark: query → what answers it.

A label is a predicate on a result's origin, not a chunk id (ids change when a file changes): `path` is a glob,
`symbol` a regular expression matched in full, `paper` an arXiv id, `gap` a regular expression on a backend-gap
unit. A result is relevant when every field given matches. `exact` marks queries that name an identifier.
QUERIES are answered by the small corpus (ggml/src/iqk, upstream's CPU files, backend gaps, reading list);
TREE_QUERIES only by a store that holds the whole ik_llama.cpp tree.
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

SAMPLING = "src/llama-sampling.cpp"
# About the rest of the ik_llama.cpp tree (outside ggml/src/iqk): answered only by a store holding the whole tree.
TREE_QUERIES: list[dict[str, Any]] = [
    {"q": "llama_sample_xtc_impl", "exact": True, "path": SAMPLING, "symbol": "llama_sample_xtc_impl"},
    {"q": "sampler that excludes the top choices, removing the most probable tokens", "path": SAMPLING,
     "symbol": "llama_sample_xtc_impl"},
    {"q": "top n sigma sampling", "path": SAMPLING, "symbol": "llama_sample_top_n_sigma_impl"},
    {"q": "adaptive p sampler", "path": SAMPLING, "symbol": r"llama_.*adaptive_p_impl"},
    {"q": "delta_net::build_fused_delta_net", "exact": True, "path": "src/llama-delta-net.cpp",
     "symbol": "delta_net::build_fused_delta_net"},
    {"q": "gated delta net linear attention layer", "path": "src/llama-delta-net.cpp"},
    {"q": "ggml_cuda_op_multi_add", "exact": True, "path": "ggml/src/ggml-cuda/multiadd.cu",
     "symbol": "ggml_cuda_op_multi_add"},
    {"q": "CUDA kernel that adds the outputs of several experts in one pass", "path": "ggml/src/ggml-cuda/multiadd.cu"},
    {"q": "ggml_gemv_q4_0_4x4_q8_0", "exact": True, "path": "ggml/src/ggml-aarch64.c",
     "symbol": "ggml_gemv_q4_0_4x4_q8_0"},
    {"q": "interleave q4_0 blocks of four rows for ARM NEON", "path": "ggml/src/ggml-aarch64.c",
     "symbol": r"make_block_q4_0x4|quantize_q4_0_4x4|quantize_q4_0_nr_bl|ggml_gemv_q4_0_4x4_q8_0"},
    {"q": "common_speculative_are_compatible", "exact": True, "path": "common/speculative.cpp",
     "symbol": "common_speculative_are_compatible"},
    {"q": "check that the draft model and the target model of speculative decoding share a vocabulary",
     "path": "common/speculative.cpp", "symbol": "common_speculative_are_compatible"},
    {"q": "create_tensors_helper::create_deepseek2_tensors", "exact": True, "path": "src/llama-load-tensors.cpp",
     "symbol": "create_tensors_helper::create_deepseek2_tensors"},
    {"q": "load the weight tensors of a DeepSeek-V2 model", "path": "src/*", "symbol": r".*deepseek2.*"},
    {"q": "llm_build_context::build_deepseek2", "exact": True, "path": "src/llama-build-context.cpp",
     "symbol": "llm_build_context::build_deepseek2"},
    {"q": "llm_build_std_moe_ffn", "exact": True, "path": "src/llama-build-context.cpp",
     "symbol": "llm_build_context::llm_build_std_moe_ffn"},
    {"q": "mixture of experts feed-forward block of the compute graph", "path": "src/llama-build-context.cpp",
     "symbol": r".*moe_ffn.*"},
    {"q": "flash_attn_mask_to_KV_max", "exact": True, "path": "ggml/src/ggml-cuda/fattn-new-mma.cu",
     "symbol": "flash_attn_mask_to_KV_max"},
    {"q": "tensor core flash attention kernel in CUDA", "path": "ggml/src/ggml-cuda/*",
     "symbol": r".*flash_attn.*|.*fattn.*"},
    {"q": "print llama-bench results as markdown or SQL", "path": "examples/llama-bench/*"},
    {"q": "add_cpu_buft_overrides", "exact": True, "path": "examples/llama-bench/*", "symbol": "add_cpu_buft_overrides"},
    {"q": "pull request fusing a matrix multiplication with the scale that follows it on the CPU",
     "path": "github-data/pull_requests/5 - *"},
    {"q": "use MLA without a transposed KV cache", "path": "github-data/pull_requests/235 - *"},
    {"q": "llama_context::can_reuse_graph", "exact": True, "path": "src/llama.cpp",
     "symbol": "llama_context::can_reuse_graph"},
    {"q": "reuse the previous compute graph when the batch has the same shape", "path": "src/llama.cpp",
     "symbol": "llama_context::can_reuse_graph"},
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
