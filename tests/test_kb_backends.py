"""The backend-gap scanner: a small ggml-shaped tree, and (slow) the pinned llama.cpp tree itself."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from kb_conftest_helpers import git, make_repo  # noqa: E402

from readfirst.errors import KnowledgeBaseError  # noqa: E402
from readfirst.knowledge_base.backends import gap_units, scan_backends  # noqa: E402

CPU_C = """
static void ggml_compute_forward(struct ggml_compute_params * params, struct ggml_tensor * tensor) {
    switch (tensor->op) {
        case GGML_OP_ADD: ggml_compute_forward_add(params, tensor); break;
        case GGML_OP_MUL: ggml_compute_forward_mul(params, tensor); break;
        case GGML_OP_RMS_NORM: ggml_compute_forward_rms_norm(params, tensor); break;
        default: break;
    }
}

static int ggml_cpu_try_fuse_ops(const struct ggml_cgraph * cgraph, int node_n) {
    const enum ggml_op fuse_ops[] = { GGML_OP_RMS_NORM, GGML_OP_MUL };
    return ggml_can_fuse(cgraph, node_n, fuse_ops, 2);
}
"""

CUDA_CU = """
static bool ggml_cuda_compute_forward(ggml_backend_cuda_context & ctx, struct ggml_tensor * dst) {
    switch (dst->op) {
        case GGML_OP_ADD: ggml_cuda_op_add(ctx, dst); break;
        case GGML_OP_RMS_NORM: ggml_cuda_op_rms_norm(ctx, dst); break;
        case GGML_OP_TOPK_MOE: ggml_cuda_op_topk_moe(ctx, dst); break;
        default: return false;
    }
    return true;
}

static int ggml_cuda_try_fuse(ggml_cgraph * cgraph, int i) {
    if (ggml_cuda_can_fuse(cgraph, i, { GGML_OP_RMS_NORM, GGML_OP_MUL, GGML_OP_ADD }, {})) {
        return 2;
    }
    if (ggml_cuda_can_fuse(cgraph, i, { GGML_OP_RMS_NORM, GGML_OP_MUL }, {})) {
        return 1;
    }
    for (ggml_op op : { GGML_OP_MUL_MAT, GGML_OP_MUL_MAT_ID }) {
        (void) op;  // alternatives, not a sequence: must not be read as a fusion
    }
    return 0;
}
"""

METAL_CPP = """
static const std::vector<ggml_op> ops_rms_norm_mul_add = { GGML_OP_RMS_NORM, GGML_OP_MUL, GGML_OP_ADD };
"""


@pytest.fixture
def ggml_tree(tmp_path) -> Path:
    return make_repo(tmp_path / "ggml-tree", {
        "ggml/src/ggml-cpu/ggml-cpu.c": CPU_C,
        "ggml/src/ggml-cuda/ggml-cuda.cu": CUDA_CU,
        "ggml/src/ggml-metal/ggml-metal-fusion.cpp": METAL_CPP,
        "ggml/src/ggml.c": "int ggml_core(void) { return 0; }\n",
    })


def test_the_scan_records_ops_and_fusions_per_backend(ggml_tree):
    scan = scan_backends(ggml_tree)
    assert set(scan.backends) == {"CPU", "CUDA", "METAL"}
    cpu, cuda = scan.backends["CPU"], scan.backends["CUDA"]
    assert set(cpu.ops) == {"GGML_OP_ADD", "GGML_OP_MUL", "GGML_OP_RMS_NORM"}
    fusion = cpu.fusions[("GGML_OP_RMS_NORM", "GGML_OP_MUL")]
    assert (fusion.path, fusion.line, fusion.symbol) == ("ggml/src/ggml-cpu/ggml-cpu.c", 12, "ggml_cpu_try_fuse_ops")
    assert set(cuda.fusions) == {("GGML_OP_RMS_NORM", "GGML_OP_MUL", "GGML_OP_ADD"), ("GGML_OP_RMS_NORM", "GGML_OP_MUL")}
    assert cuda.ops["GGML_OP_TOPK_MOE"].symbol == "ggml_cuda_compute_forward"


def test_each_gap_becomes_a_document_pointing_at_the_code(ggml_tree):
    revision = git(ggml_tree, "rev-parse", "HEAD")
    units = {u.key.split("::")[1]: u for u in gap_units(scan_backends(ggml_tree), repo="ggml-tree",
                                                             revision=revision, source="backends:t")}
    assert set(units) == {"fusion:RMS_NORM+MUL+ADD", "op:TOPK_MOE", "backend:CPU", "backend:CUDA",
                          "backend:METAL"}, "RMS_NORM+MUL is fused by the CPU too: no gap"
    gap = units["fusion:RMS_NORM+MUL+ADD"].chunks[0]
    assert gap.kind == "backend-gap"
    assert gap.origin["backends"] == "CUDA, METAL" and gap.origin["missing_in"] == "CPU"
    assert gap.origin["path"] == "ggml/src/ggml-cuda/ggml-cuda.cu" and gap.origin["symbol"] == "ggml_cuda_try_fuse"
    assert gap.origin["revision"] == revision
    assert "ggml_cuda_can_fuse(cgraph, i, { GGML_OP_RMS_NORM, GGML_OP_MUL, GGML_OP_ADD }" in gap.text
    assert "ggml-metal-fusion.cpp:2" in gap.text
    op_gap = units["op:TOPK_MOE"].chunks[0]
    assert "GGML_OP_TOPK_MOE is handled by the CUDA backend" in op_gap.text


def test_a_tree_without_ggml_is_a_clear_error(tmp_path):
    repo = make_repo(tmp_path / "not-ggml", {"src/main.c": "int main(void) { return 0; }\n"})
    with pytest.raises(KnowledgeBaseError, match="no ggml/src tree"):
        scan_backends(repo)
    with pytest.raises(KnowledgeBaseError, match="not a git repository"):
        scan_backends(tmp_path)


@pytest.mark.slow
def test_the_pinned_llama_cpp_cpu_backend_fuses_rms_norm_and_mul(shared_cache):
    from readfirst.sources import prepare_source
    source = prepare_source("llama.cpp", shared_cache / "sources", shared_cache / "sdists")
    scan = scan_backends(source.path, source.baseline)
    cpu = scan.backends["CPU"]
    fused = cpu.fusions[("GGML_OP_RMS_NORM", "GGML_OP_MUL")]
    assert fused.path == "ggml/src/ggml-cpu/ggml-cpu.c" and fused.symbol == "ggml_cpu_try_fuse_ops"
    assert "ggml_cpu_try_fuse_ops" in scan.sources[fused.path]
    assert len(cpu.ops) > 80 and {"CUDA", "METAL", "VULKAN"} <= set(scan.backends)
    keys = {u.key.split("::")[1] for u in gap_units(scan, repo="llama.cpp", revision=source.baseline,
                                                        source="backends:llama.cpp")}
    assert "fusion:RMS_NORM+MUL" not in keys
    assert "fusion:RMS_NORM+MUL+ADD" in keys, "CUDA, Metal and Vulkan fuse the residual add as well"
