"""attention_with_lse: outputs equal SDPA's, the log-sum-exp merges partial attentions exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from kimi_swarm.backend.model import attention
from kimi_swarm.kernels.mla_reference import merge_attention


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("max_scores", [1 << 26, 40])
def test_matches_sdpa_in_one_block_or_many(monkeypatch, causal, max_scores):
    monkeypatch.setattr(attention, "MAX_SCORES", max_scores)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(*shape, generator=gen) for shape in [(5, 3, 8), (11, 3, 8), (11, 3, 6)])
    out, lse = attention.attention_with_lse(q, k, v, 0.3, causal=causal)
    mask = causal_lower_right(5, 11) if causal else None
    want = F.scaled_dot_product_attention(*(x.transpose(0, 1) for x in (q, k, v)), attn_mask=mask, scale=0.3)
    assert torch.allclose(out, want.transpose(0, 1), atol=1e-5)
    assert lse.shape == (5, 3) and lse.dtype == torch.float32


def test_two_halves_merged_by_lse_equal_attention_over_all_keys():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(*shape, generator=gen) for shape in [(4, 2, 8), (20, 2, 8), (20, 2, 8)])
    whole, _ = attention.attention_with_lse(q, k, v, 0.5)
    first, lse_first = attention.attention_with_lse(q, k[:13], v[:13], 0.5)
    rest, lse_rest = attention.attention_with_lse(q, k[13:], v[13:], 0.5)
    assert torch.allclose(merge_attention(first, lse_first, rest, lse_rest), whole, atol=1e-5)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused attention kernels run on CUDA only")


@needs_cuda
@pytest.mark.parametrize("m, length, d", [(27, 192, 96), (300, 2000, 192)])
def test_flash_path_matches_float64_on_cuda(m, length, d):
    """Output and log-sum-exp of the bf16 flash path against float64, at the small preset's and 48B's head dims."""
    gen = torch.Generator(device="cuda").manual_seed(2)
    q, k, v = (torch.randn(n, 8, d, device="cuda", generator=gen).bfloat16() for n in (m, length, length))
    out, lse = attention.attention_with_lse(q, k, v, d ** -0.5)
    want, want_lse = attention.attention_with_lse(q.double(), k.double(), v.double(), d ** -0.5)
    assert float((out.double() - want).norm() / want.norm()) < 2e-2
    assert float((lse.double() - want_lse).abs().max()) < 2e-2


@needs_cuda
def test_fused_lower_right_causal_attention_matches_float64_on_cuda():
    """The per-sequence prefill path (SDPA, causal_lower_right, fused kernels): T new tokens after L - T cached."""
    from torch.nn.attention import sdpa_kernel

    from kimi_swarm.backend.model.mla_layer import _FUSED_ATTENTION

    gen = torch.Generator(device="cuda").manual_seed(3)
    q, k, v = (torch.randn(1, 8, n, 96, device="cuda", generator=gen).bfloat16() for n in (9, 206, 206))
    with sdpa_kernel(_FUSED_ATTENTION):
        got = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(9, 206), scale=0.1)
    want, _ = attention.attention_with_lse(*(x[0].transpose(0, 1).double() for x in (q, k, v)), 0.1, causal=True)
    assert float((got[0].transpose(0, 1).double() - want).norm() / want.norm()) < 2e-2


@pytest.mark.parametrize("preset, crossover", [("48b", 186), ("small", None)])
def test_mla_chunks_expand_the_cache_only_when_that_is_cheaper(preset, crossover):
    """Expanding the cached latent costs rank x H x (nope + v) per cached token, once; the absorbed form costs
    H x (2 rank + rope) per query and cached token. On the CPU few queries stay absorbed; the GPU expands."""
    from kimi_swarm.backend.model.mla_layer import KimiMLAAttention
    from kimi_swarm.backend.model.presets import preset_config

    config = preset_config(preset)
    with torch.device("meta"):
        layer = KimiMLAAttention(config, 0)
    cpu = torch.device("cpu")
    per_query = 2 * layer.rank + layer.rope_dim - 2 * (layer.nope_dim + layer.rope_dim)
    expected = crossover or layer.rank * (layer.nope_dim + layer.v_dim) // per_query
    assert not layer._expanding_pays(1, cpu) and not layer._expanding_pays(expected, cpu)
    assert layer._expanding_pays(expected + 1, cpu) and layer._expanding_pays(4096, cpu)
    assert layer._expanding_pays(1, torch.device("cuda"))
