"""The engine's GPU path: grouped MoE GEMMs, Triton kernels inside the model, fork equivalence on CUDA.

These need a CUDA GPU and are run on the GPU machine (benchmarks/RESULTS.md has the command); the
same engine logic runs on CPU in test_engine.py.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from backend import Engine, SamplingParams
from backend.moe import StackedExperts
from benchmarks.common import preset_config, random_model
from tests.model_support import extend_then_generate, forks_prefilled_with_and_without_sharing

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU path is "
                                                                       "covered by test_engine.py)")


def test_grouped_expert_gemms_match_per_expert_loop():
    torch.manual_seed(0)
    experts = StackedExperts(64, 512, 256).cuda().bfloat16()
    for p in experts.parameters():
        p.data.normal_(0, 0.05)
    ref = StackedExperts(64, 512, 256).cuda().double()
    ref.load_state_dict({k: v.double() for k, v in experts.state_dict().items()})
    for tokens in (1, 7, 100, 1000):
        x = torch.randn(tokens, 512, device="cuda", dtype=torch.bfloat16)
        ids = torch.stack([torch.randperm(64, device="cuda")[:8] for _ in range(tokens)])
        weights = torch.rand(tokens, 8, device="cuda")
        got = experts._grouped(x, ids, weights)
        want = ref._per_expert(x.double(), ids, weights.double())
        err = (got.double() - want).norm() / want.norm()
        assert err < 1e-2, f"{tokens} tokens: relative error {err:.2e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
async def test_forks_equal_fresh_sessions_on_cuda(dtype):
    config = preset_config("small")
    engine = Engine(random_model(config, torch.device("cuda"), dtype, seed=1), None, max_sessions=32,
                    memory=1 << 30, page_size=64)
    try:
        gen = torch.Generator().manual_seed(0)
        prefix = torch.randint(0, config.vocab_size, (300,), generator=gen).tolist()
        suffixes = [torch.randint(0, config.vocab_size, (n,), generator=gen).tolist() for n in (1, 5, 64, 130)]
        params = SamplingParams(max_tokens=8, stop_token_ids=[])
        root = await engine.session(prefix)
        children = root.fork(len(suffixes))

        outs = await asyncio.gather(*(extend_then_generate(c, s, params) for c, s in zip(children, suffixes)))
        matches = 0
        for suffix, out in zip(suffixes, outs):
            fresh = await engine.session(prefix + suffix)
            want = await fresh.generate(params)
            matches += out.token_ids == want.token_ids
        # fp32 must match exactly; bf16 rounding differs between batched and single runs, so most must
        assert matches == len(suffixes) if dtype == torch.float32 else matches >= len(suffixes) - 1, matches
    finally:
        engine.shutdown()


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=pytest.mark.xfail(
    strict=True, reason="H200, 2026-11-23: logits differ by 16% in bf16 (fp32 agrees to 1e-5); suspects: the "
                        "flash log-sum-exp path or the fused lower-right causal SDPA (tests/test_attention.py "
                        "checks each against float64); the engine keeps shared prefill off on CUDA meanwhile"))])
def test_shared_prefix_prefill_on_cuda_matches_prefilling_each_fork_alone(dtype):
    """The flash path of attention_with_lse (bf16) and the merge, inside the model on the GPU."""
    engine = Engine(random_model(preset_config("small"), torch.device("cuda"), dtype, seed=2), None, max_sessions=16,
                    memory=1 << 30, page_size=64)
    try:
        together, alone = forks_prefilled_with_and_without_sharing(engine.model, engine.cache, seed=3)
        error = float((together - alone).norm() / alone.norm())
        assert error < (1e-5 if dtype == torch.float32 else 2e-2), f"relative logit difference {error:.2e}"
    finally:
        engine.shutdown()
