"""Softmax attention that also returns its log-sum-exp, so attention over disjoint key sets can be merged.

The engine's shared-prefix prefill attends many sessions' new tokens to the prefix they share in one
call and to each session's own keys separately, then merges the two partial results by log-sum-exp
(kimi_swarm.kernels.mla_reference.merge_attention).
"""

from __future__ import annotations

import torch

MAX_SCORES = 1 << 26
"""Score elements computed at once by the PyTorch path (256 MiB of fp32); longer inputs go in query blocks."""


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, *,
                       causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries [M, H, D] over keys [L, H, D] and values [L, H, Dv]: (output [M, H, Dv] in q's dtype, lse [M, H] fp32).

    causal: the queries are the last M of the L positions (bottom-right aligned) and see only keys up to
    their own position. Without a mask, half-precision CUDA inputs with equal head dims run through the
    flash kernel, which returns the log-sum-exp it computes anyway.
    """
    if not causal and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] == v.shape[-1]:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(
            *(x.transpose(0, 1).unsqueeze(0) for x in (q, k, v)), scale=scale)[:2]
        return out[0].transpose(0, 1), lse[0, :, :q.shape[0]].transpose(0, 1)
    return _attention_with_lse_reference(q, k, v, scale, causal)


def _attention_with_lse_reference(q, k, v, scale, causal):
    m, h, _ = q.shape
    length = k.shape[0]
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    k, v = k.to(dtype), v.to(dtype)
    block = max(1, MAX_SCORES // max(1, h * length))
    outs, lses = [], []
    for first in range(0, m, block):
        rows = q[first:first + block].to(dtype)
        scores = torch.einsum("mhd,lhd->hml", rows, k) * scale
        if causal:
            query_pos = torch.arange(length - m + first, length - m + first + rows.shape[0], device=q.device)
            scores = scores.masked_fill(torch.arange(length, device=q.device) > query_pos[:, None], float("-inf"))
        lse = torch.logsumexp(scores, dim=-1)
        outs.append(torch.einsum("hml,lhd->mhd", (scores - lse[..., None]).exp(), v))
        lses.append(lse.transpose(0, 1))
    return torch.cat(outs).to(q.dtype), torch.cat(lses).float()


def split_attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """attention_with_lse without a mask for few queries over many keys (decode over a decompressed prefix).

    The flash kernel parallelises over batch, heads and blocks of 128 queries: a hundred queries of 32 heads
    would occupy 32 programs. The keys are cut into `splits` equal runs attended as a batch, and the runs'
    partial results merged by log-sum-exp. Other inputs go to attention_with_lse.
    """
    length = k.shape[0]
    splits = _key_splits(q.shape[0], q.shape[1], length)
    if not (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] == v.shape[-1]) or splits == 1:
        return attention_with_lse(q, k, v, scale)
    m, h, d = q.shape
    runs = (x.view(splits, length // splits, h, d).transpose(1, 2) for x in (k, v))  # [C, H, L/C, D]
    queries = q.transpose(0, 1).unsqueeze(0).expand(splits, h, m, d).contiguous()
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention(queries, *runs, scale=scale)[:2]
    lse = lse[..., :m]  # [C, H, M]
    total = torch.logsumexp(lse, dim=0)
    weights = (lse - total).exp()
    merged = (out.float() * weights[..., None]).sum(0)
    return merged.transpose(0, 1).to(q.dtype), total.transpose(0, 1)


def _key_splits(queries: int, heads: int, length: int, programs: int = 512, min_keys: int = 1024) -> int:
    """A power of two dividing `length`: enough runs that they fill about `programs` flash programs (one per
    run, head and block of 128 queries), none shorter than min_keys."""
    per_run = heads * -(-queries // 128)
    splits = 1
    while (splits * per_run < programs and length % (2 * splits) == 0
           and length // (2 * splits) >= min_keys):
        splits *= 2
    return splits
