"""MLA full-attention layer with NoPE (spec §4).

Only the compressed latent [c ; k_pe] (kv_lora_rank + qk_rope_head_dim values per token) is ever
cached. Decoding uses the absorbed (MQA) form: kv_b_proj is split into W_UK (absorbed into the query)
and W_UV (applied to the output), so one token reads the latent once. A prefill chunk of many tokens
is cheaper in the expanded form (per-head keys of 192 and values of 128 instead of 576 and 512): when
the context offers `mla_cached_keys`, the cached latent is decompressed through kv_b_proj and attended
with scaled_dot_product_attention (flash kernels on the GPU). Forks prefilled together decompress and
attend the prefix they share once for all of them. On the CPU a chunk of few tokens stays absorbed
(_expanding_pays).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

from kimi_swarm.kernels import rms_norm
from kimi_swarm.kernels.mla_reference import merge_attention

from .attention import attention_with_lse, split_attention_with_lse
from .config import KimiLinearConfig
from .context import CachedLatents, ForwardContext
from .fusion import fuse_linears_

_FUSED_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
"""Never the math fallback on the GPU: at long context it would materialise [H, T, L] scores."""
_CPU_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]
"""The CPU flash kernel first (3-4x faster than math on a 512-token chunk); math for what it does not take."""
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
        self.low_rank_query = config.q_lora_rank is not None
        self.in_widths: tuple[int, ...] | None = None
        """The widths of the query and latent projections once fused into in_proj (fuse_projections_), else None."""
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

    def fuse_projections_(self) -> None:
        """The query (or its low-rank first half) and the latent projections as one GEMM
        (backend/model/fusion.py)."""
        if self.in_widths is None:
            query = "q_a_proj" if self.low_rank_query else "q_proj"
            self.in_widths = fuse_linears_(self, (query, "kv_a_proj_with_mqa"), "in_proj")

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(queries [..., H * (nope + rope)], the latent projection [..., rank + rope]) of the layer's input."""
        if self.in_widths is not None:
            q, kv = self.in_proj(x).split(self.in_widths, dim=-1)
        else:
            q, kv = (self.q_a_proj if self.low_rank_query else self.q_proj)(x), self.kv_a_proj_with_mqa(x)
        if self.low_rank_query:
            q = self.q_b_proj(rms_norm(q, self.q_a_layernorm.weight, LATENT_NORM_EPS))
        return q, kv

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        n, t, _ = x.shape
        q, kv = self._project(x)
        q_nope, q_pe = q.reshape(n, t, self.num_heads, self.nope_dim + self.rope_dim).split(
            [self.nope_dim, self.rope_dim], dim=-1)
        latent = torch.cat([rms_norm(kv[..., : self.rank], self.kv_a_layernorm.weight, LATENT_NORM_EPS),
                            kv[..., self.rank:]], dim=-1)
        cached_keys = getattr(ctx, "mla_cached_keys", None)
        expand = cached_keys is not None and t > 1 and self._expanding_pays(t, x.device)
        keys = cached_keys(self.mla_index, latent) if expand else None
        if keys is not None:
            o = self._attend_expanded(torch.cat([q_nope, q_pe], dim=-1), keys)
            return self.o_proj(o.reshape(n, t, self.num_heads * self.v_dim))
        w_kv = self.kv_b_proj.weight.view(self.num_heads, self.nope_dim + self.v_dim, self.rank)
        w_uk, w_uv = w_kv[:, : self.nope_dim], w_kv[:, self.nope_dim:]
        q_latent = torch.einsum("nthd,hdr->nthr", q_nope, w_uk)
        expanded = getattr(ctx, "mla_expanded_prefix", None)
        prefix = expanded(self.mla_index) if expanded is not None and t == 1 else None
        if prefix is not None:
            o = self._decode_over_expanded_prefix(q_nope, q_pe, q_latent, w_uv, latent, prefix, ctx)
            return self.o_proj(o.reshape(n, t, self.num_heads * self.v_dim))
        o_latent = ctx.mla_attend(self.mla_index, q_latent, q_pe.contiguous(), latent, self.scale)
        o = torch.einsum("nthr,hvr->nthv", o_latent, w_uv)
        return self.o_proj(o.reshape(n, t, self.num_heads * self.v_dim))

    def _decode_over_expanded_prefix(self, q_nope: torch.Tensor, q_pe: torch.Tensor, q_latent: torch.Tensor,
                                     w_uv: torch.Tensor, latent: torch.Tensor,
                                     prefix: tuple[torch.Tensor, torch.Tensor], ctx: ForwardContext) -> torch.Tensor:
        """A decode step of sessions sharing a prefix that the engine has decompressed ([E, H, nope+rope] keys and
        zero-padded values): every session's query attends it in the expanded form (192 + 128 multiply-adds per
        head and key instead of 576 + 512), its own later keys in the absorbed form, merged by log-sum-exp."""
        keys, values = prefix
        q = torch.cat([q_nope, q_pe], dim=-1)[:, 0]
        o_prefix, lse_prefix = split_attention_with_lse(q, keys, values, self.scale)
        o_latent, lse_own = ctx.mla_attend_after_prefix(self.mla_index, q_latent[:, 0], q_pe[:, 0].contiguous(),
                                                        latent, self.scale)
        o_own = torch.einsum("nhr,hvr->nhv", o_latent, w_uv)
        exact = torch.promote_types(q.dtype, torch.float32)
        merged = merge_attention(o_prefix[..., :self.v_dim].to(exact), lse_prefix, o_own.to(exact), lse_own)
        return merged.to(q.dtype).unsqueeze(1)

    def _expanding_pays(self, queries: int, device: torch.device) -> bool:
        """Whether `queries` new tokens of each sequence attend more cheaply in the expanded form than in the
        absorbed one.

        Per cached token, expanding costs rank x H x (nope + v) once plus 2 x H x (nope + rope) per query;
        the absorbed form costs H x (2 x rank + rope) per query. Each sequence's own rows are expanded for
        its queries alone, so the count is per sequence, not per batch: a wave of forks finishing a few
        tokens each stays absorbed, its shared prefix read once (PagedContext.mla_attend). On the CPU a few
        new tokens over a long cache (a speculative draft, a short turn) therefore stay absorbed; the GPU
        always expands, its flash kernels having been measured for that form only.
        """
        if device.type != "cpu":
            return True
        per_query = 2 * self.rank + self.rope_dim - 2 * (self.nope_dim + self.rope_dim)
        return per_query <= 0 or self.rank * (self.nope_dim + self.v_dim) < queries * per_query

    def _attend_expanded(self, q: torch.Tensor, keys: CachedLatents) -> torch.Tensor:
        """Queries [N, T, H, D] (the last T positions of each sequence) over their cached latent; returns
        [N, T, H, V]. A prefix the sequences share is decompressed once and attended by all N*T queries
        in one call, each sequence's own keys separately, and the two merged by log-sum-exp."""
        if keys.shared is None:
            return torch.stack([self._attend_causal(q[i], *self.decompress(k)) for i, k in enumerate(keys.private)])
        n, t, h, d = q.shape
        o_shared, lse_shared = attention_with_lse(q.reshape(n * t, h, d), *self.decompress(keys.shared), self.scale)
        o_shared, lse_shared = o_shared.view(n, t, h, -1), lse_shared.view(n, t, h)
        out = []
        for i, own in enumerate(keys.private):
            o_own, lse_own = attention_with_lse(q[i], *self.decompress(own), self.scale, causal=True)
            out.append(merge_attention(o_shared[i].float(), lse_shared[i], o_own.float(), lse_own).to(q.dtype))
        return torch.stack(out)[..., :self.v_dim]

    def decompress(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent rows [L, R+P] -> per-head keys [L, H, nope+rope] and values [L, H, nope+rope] (zero-padded
        from v_dim: equal head dims let SDPA pick its flash kernel)."""
        length, h = keys.shape[0], self.num_heads
        kv = self.kv_b_proj(keys[:, :self.rank]).view(length, h, self.nope_dim + self.v_dim)
        k_nope, v = kv.split([self.nope_dim, self.v_dim], dim=-1)
        k = torch.cat([k_nope, keys[:, None, self.rank:].expand(length, h, self.rope_dim)], dim=-1)
        return k, F.pad(v, (0, k.shape[-1] - self.v_dim))

    def _attend_causal(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """One sequence with nothing shared: queries [T, H, D] are the last T of keys [L, H, D]."""
        t, length = q.shape[0], k.shape[0]
        q, k, v = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))  # fused kernels want [B, H, T, D]
        if q.device.type == "cpu" and q.dtype == torch.float32 and length > t:
            o = _past_then_own(q, k, v, self.scale)
        else:
            with sdpa_kernel(_FUSED_ATTENTION if q.is_cuda else _CPU_ATTENTION):
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(t, length), scale=self.scale)
        return o[0].transpose(0, 1)[..., :self.v_dim]


def _past_then_own(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Bottom-right causal attention on the CPU for queries [1, H, T, D], the last T of keys [1, H, L, D]:
    the L - T earlier keys unmasked, the T own keys with the flash kernel's top-left causal mask, merged by
    log-sum-exp. Building the [T, L] mask for one masked call cost as much as the attention itself."""
    past = k.shape[-2] - q.shape[-2]
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    o_past, lse_past = flash(q, k[..., :past, :], v[..., :past, :], 0.0, False, scale=scale)[:2]
    o_own, lse_own = flash(q, k[..., past:, :], v[..., past:, :], 0.0, True, scale=scale)[:2]
    return merge_attention(o_past, lse_past, o_own, lse_own)
