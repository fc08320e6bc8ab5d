"""The routing and the routed experts of a MoE layer in plain PyTorch: the CPU path, and the oracle of the fused
Triton kernels.

Weights are stacked per expert: w13 [E, 2I, H] holds each expert's gate (w1) and up (w3) projections one above
the other, w2 [E, H, I] its down projection. FP8 weights carry one fp32 scale per output row (w13_scale [E, 2I],
w2_scale [E, H]); only the experts the tokens reach are dequantised, so an FP8 model runs on the CPU without a
second full-precision copy of its experts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .fp8_reference import dequantize_rows


def expert_weight(w: torch.Tensor, scale: torch.Tensor | None, expert: int, dtype: torch.dtype) -> torch.Tensor:
    """Expert `expert`'s rows of w in dtype, dequantised by its per-row scales when w is FP8."""
    if scale is None:
        return w[expert]
    return dequantize_rows(w[expert], scale[expert], dtype)


def silu_and_mul_reference(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2I], the gate then the up projection -> silu(gate) * up [..., I]."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def fused_moe_reference(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, expert_ids: torch.Tensor,
                        weights: torch.Tensor, w13_scale: torch.Tensor | None = None,
                        w2_scale: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, H]; expert_ids, weights [M, k] -> sum over k of weight * expert(x), fp32 [M, H] (fp64 for fp64 x).
    Each expert with tokens runs one GEMM over them, in x's dtype."""
    m, k = expert_ids.shape
    acc = torch.promote_types(x.dtype, torch.float32)
    flat_ids = expert_ids.reshape(-1)
    order = flat_ids.argsort(stable=True)
    counts = torch.bincount(flat_ids, minlength=w2.shape[0]).tolist()
    token_of = order // k
    out = torch.zeros(m, x.shape[-1], dtype=acc, device=x.device)
    flat_weights = weights.reshape(-1).to(acc)
    start = 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue
        rows = order[start:start + count]
        tokens = token_of[start:start + count]
        start += count
        h = silu_and_mul_reference(x.index_select(0, tokens) @ expert_weight(w13, w13_scale, expert, x.dtype).T)
        y = h @ expert_weight(w2, w2_scale, expert, x.dtype).T
        out.index_add_(0, tokens, y.to(acc) * flat_weights[rows, None])
    return out


def moe_combine_reference(y: torch.Tensor, order: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """y [M * k, H], row i the output of pair order[i] (pair = token * k + choice); weights [M, k] -> fp32 [M, H]
    (fp64 for fp64 y): each token's rows times their weights, summed."""
    m, k = weights.shape
    acc = torch.promote_types(y.dtype, torch.float32)
    out = torch.zeros(m, y.shape[-1], dtype=acc, device=y.device)
    return out.index_add_(0, order // k, y.to(acc) * weights.reshape(-1)[order, None].to(acc))


def route_reference(logits: torch.Tensor, bias: torch.Tensor, top_k: int, renormalize: bool,
                    scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid routing with a selection bias (one expert group, as Kimi Linear's router): logits [M, E] ->
    (expert ids [M, top_k] int64, weights [M, top_k] in logits' dtype). Experts are chosen on sigmoid score plus
    bias and weighted by the unbiased score, renormalised to sum to one when asked, times scaling."""
    scores = torch.sigmoid(logits)
    ids = torch.topk(scores + bias.to(scores.dtype), top_k, dim=-1, sorted=False).indices
    weights = scores.gather(1, ids)
    if renormalize:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return ids, weights * scaling
