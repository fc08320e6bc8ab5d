"""MLA full-attention layer with NoPE (spec §4).

Only the compressed latent [c ; k_pe] (kv_lora_rank + qk_rope_head_dim values per token) is ever
cached. Decoding uses the absorbed (MQA) form: kv_b_proj is split into W_UK (absorbed into the query)
and W_UV (applied to the output), so one token reads the latent once. A prefill chunk of many tokens
is cheaper in the expanded form (per-head keys of 192 and values of 128 instead of 576 and 512): when
the context offers `mla_cached_keys`, the cached latent is decompressed through kv_b_proj and attended
with scaled_dot_product_attention (flash kernels on the GPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

from backend.config import KimiLinearConfig
from backend.context import ForwardContext
from backend.norms import rms_norm

_FUSED_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
"""Never the math fallback on the GPU: at long context it would materialise [H, T, L] scores."""
LATENT_NORM_EPS = 1e-6  # kv_a_layernorm / q_a_layernorm use the default eps, not rms_norm_eps (spec §8.11)


class KimiMLAAttention(nn.Module):
    def __init__(self, config: KimiLinearConfig, mla_index: int):
        super().__init__()
        self.mla_index = mla_index
        self.num_heads = h = config.num_attention_heads
        self.nope_dim, self.rope_dim = config.qk_nope_head_dim, config.qk_rope_head_dim
        self.v_dim, self.rank = config.v_head_dim, config.kv_lora_rank
        self.scale = config.qk_head_dim ** -0.5
        hidden = config.hidden_size
        if config.q_lora_rank is None:
            self.q_proj = nn.Linear(hidden, h * config.qk_head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(hidden, config.q_lora_rank, bias=False)
            self.q_a_layernorm = nn.Module()
            self.q_a_layernorm.weight = nn.Parameter(torch.ones(config.q_lora_rank))
            self.q_b_proj = nn.Linear(config.q_lora_rank, h * config.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(hidden, self.rank + self.rope_dim, bias=False)
        self.kv_a_layernorm = nn.Module()
        self.kv_a_layernorm.weight = nn.Parameter(torch.ones(self.rank))
        self.kv_b_proj = nn.Linear(self.rank, h * (self.nope_dim + self.v_dim), bias=False)
        self.o_proj = nn.Linear(h * self.v_dim, hidden, bias=False)

    def _query(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "q_proj"):
            return self.q_proj(x)
        return self.q_b_proj(rms_norm(self.q_a_proj(x), self.q_a_layernorm.weight, LATENT_NORM_EPS))

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        n, t, _ = x.shape
        q = self._query(x).view(n, t, self.num_heads, self.nope_dim + self.rope_dim)
        q_nope, q_pe = q.split([self.nope_dim, self.rope_dim], dim=-1)
        kv = self.kv_a_proj_with_mqa(x)
        latent = torch.cat([rms_norm(kv[..., : self.rank], self.kv_a_layernorm.weight, LATENT_NORM_EPS),
                            kv[..., self.rank:]], dim=-1)
        cached_keys = getattr(ctx, "mla_cached_keys", None)
        keys = cached_keys(self.mla_index, latent) if cached_keys is not None and t > 1 else None
        if keys is not None:
            o = torch.stack([self._attend_expanded(q_nope[i], q_pe[i], k) for i, k in enumerate(keys)])
            return self.o_proj(o.reshape(n, t, self.num_heads * self.v_dim))
        w_kv = self.kv_b_proj.weight.view(self.num_heads, self.nope_dim + self.v_dim, self.rank)
        w_uk, w_uv = w_kv[:, : self.nope_dim], w_kv[:, self.nope_dim:]
        q_latent = torch.einsum("nthd,hdr->nthr", q_nope, w_uk)
        o_latent = ctx.mla_attend(self.mla_index, q_latent, q_pe.contiguous(), latent, self.scale)
        o = torch.einsum("nthr,hvr->nthv", o_latent, w_uv)
        return self.o_proj(o.reshape(n, t, self.num_heads * self.v_dim))

    def _attend_expanded(self, q_nope: torch.Tensor, q_pe: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """One sequence: queries [T, H, *] are the last T of the cached latent keys [L, R+P]; returns [T, H, V]."""
        t, h, length = q_nope.shape[0], self.num_heads, keys.shape[0]
        kv = self.kv_b_proj(keys[:, :self.rank]).view(length, h, self.nope_dim + self.v_dim)
        k_nope, v = kv.split([self.nope_dim, self.v_dim], dim=-1)
        k = torch.cat([k_nope, keys[:, None, self.rank:].expand(length, h, self.rope_dim)], dim=-1)
        q = torch.cat([q_nope, q_pe], dim=-1)
        head_dim = q.shape[-1]
        v = F.pad(v, (0, head_dim - self.v_dim))  # equal head dims let SDPA pick its flash kernel
        q, k, v = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))  # fused kernels want [B, H, T, D]
        with sdpa_kernel(_FUSED_ATTENTION if q.is_cuda else [SDPBackend.MATH]):
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(t, length), scale=self.scale)
        return o[0].transpose(0, 1)[..., :self.v_dim]
