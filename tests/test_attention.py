"""attention_with_lse: outputs equal SDPA's, the log-sum-exp merges partial attentions exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from backend import attention
from kernels.mla_reference import merge_attention


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
