"""The routed experts' CPU paths: the dense small-batch form equals the per-expert loop, and is chosen only
where it pays."""

from __future__ import annotations

import torch

from kimi_swarm.backend.model.moe import StackedExperts, expert_gemm
from kimi_swarm.kernels.moe_reference import fused_moe_reference


def experts(num_experts: int, hidden: int, intermediate: int) -> StackedExperts:
    module = StackedExperts(num_experts, hidden, intermediate)
    for weight in (module.w13, module.w2):
        torch.nn.init.normal_(weight, std=hidden ** -0.5)
    return module


def routed(m: int, num_experts: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.stack([torch.randperm(num_experts)[:k] for _ in range(m)])
    return ids, torch.rand(m, k)


def test_dense_small_batch_equals_the_per_expert_loop():
    module = experts(8, 32, 16)
    x = torch.randn(6, 32)
    ids, weights = routed(6, 8, 2)
    assert module._dense_pays(x, ids)
    with torch.no_grad():
        got = module(x, ids, weights)
        want = fused_moe_reference(x.double(), module.w13.double(), module.w2.double(), ids, weights.double())
    assert got.dtype == torch.float32
    assert ((got.double() - want).norm() / want.norm()).item() <= 1e-5


def test_dense_form_only_where_it_pays():
    small = experts(8, 32, 16)
    x = torch.randn(1, 32)
    assert not small._dense_pays(x, routed(1, 8, 2)[0])  # one token reaches 2 of 8 experts: loop
    assert not small._dense_pays(x.double(), routed(8, 8, 2)[0])  # float64 is the oracle: loop
    larger = StackedExperts(16, 512, 256)
    assert larger._dense_pays(torch.randn(8, 512), routed(8, 16, 4)[0])
    assert not larger._dense_pays(torch.randn(16, 512), routed(16, 16, 4)[0])  # past DENSE_EXPERT_WORK: loop


def test_fp8_grouped_gemm_arguments_pass_torchs_own_checks():
    """torch._scaled_grouped_mm runs on Hopper only (tests/test_gpu_engine.py checks its numbers there); its meta
    function checks what we hand it everywhere: FP8 row-major activations with one scale a row, FP8 weights
    column-major per expert with one scale per output row, int32 group ends."""
    experts, n, k, rows = 4, 64, 32, 40
    a = torch.empty(rows, k, device="meta", dtype=torch.bfloat16)
    w = torch.empty(experts, n, k, device="meta", dtype=torch.float8_e4m3fn)
    w_scale = torch.empty(experts, n, device="meta")
    out = expert_gemm(a, w, w_scale, torch.empty(experts, dtype=torch.int32, device="meta"))
    assert out.shape == (rows, n) and out.dtype == torch.bfloat16
