"""Feed-forward blocks: the dense SwiGLU MLP and the sigmoid-routed MoE with a shared expert (spec §5)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from kimi_swarm.kernels import fused_moe, moe_combine, quantize_rows, route, silu_and_mul

from .config import KimiLinearConfig
from .fusion import fuse_linears_


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        self.fused = False
        """Whether gate and up run as one GEMM, gate_up_proj (fuse_projections_)."""

    def fuse_projections_(self) -> None:
        """Gate and up as one GEMM (backend/model/fusion.py)."""
        if not self.fused:
            self.fused = fuse_linears_(self, ("gate_proj", "up_proj"), "gate_up_proj") is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return self.down_proj(silu_and_mul(self.gate_up_proj(x)))
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


DENSE_EXPERT_WORK = 1 << 24
"""Multiply-adds per projection up to which running all experts densely beats looping over the chosen ones."""
FUSED_MOE_TOKENS = 32
"""Tokens up to which the fused kernel (each chosen expert's weights read once, two launches) beats the grouped
GEMM on the GPU. FP8 experts take the FP8 grouped GEMM beyond it where the GPU has one (Hopper), else the fused
kernel at every count."""


@functools.cache
def fp8_grouped_gemm_runs(device: torch.device) -> bool:
    """Whether torch._scaled_grouped_mm (FP8 grouped GEMM with row-wise scales) runs on this GPU: Hopper only."""
    return hasattr(torch, "_scaled_grouped_mm") and torch.cuda.get_device_capability(device) == (9, 0)


def expert_gemm(a: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor | None,
                offsets: torch.Tensor) -> torch.Tensor:
    """Rows of a [P, K], grouped by expert (offsets: where each expert's rows end), times their expert's w
    [E, N, K]: one grouped GEMM, bf16, or FP8 with a's rows quantised on the fly and both sides' row scales."""
    if w_scale is None:
        return torch._grouped_mm(a, w.transpose(1, 2), offs=offsets)
    aq, a_scale = quantize_rows(a)
    return torch._scaled_grouped_mm(aq, w.transpose(1, 2), a_scale, w_scale, offs=offsets, out_dtype=a.dtype)


class StackedExperts(nn.Module):
    """All routed experts as [E, out, in] tensors, loaded from per-expert tensors: w13 holds each expert's gate
    (w1) and up (w3) projections one above the other, so both run as one GEMM; w2 is the down projection.
    FP8 experts (backend/model/fp8.py) add w13_scale [E, 2I] and w2_scale [E, H], one scale per row."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int):
        super().__init__()
        self.w13 = nn.Parameter(torch.empty(num_experts, 2 * intermediate, hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, intermediate))
        self.register_parameter("w13_scale", None)
        self.register_parameter("w2_scale", None)

    def forward(self, x: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x [M, D]; expert_ids, weights [M, k] -> fp32 [M, D] (fp64 for fp64 x). Tokens are grouped by expert."""
        if self._grouped_pays(x):
            return self._grouped(x, expert_ids, weights)
        if self._dense_pays(x, expert_ids):
            return self._dense(x, expert_ids, weights)
        return fused_moe(x, self.w13, self.w2, expert_ids, weights, self.w13_scale, self.w2_scale)

    def _grouped_pays(self, x: torch.Tensor) -> bool:
        if not (x.is_cuda and x.dtype == torch.bfloat16 and x.shape[0] > FUSED_MOE_TOKENS):
            return False
        return hasattr(torch, "_grouped_mm") if self.w13_scale is None else fp8_grouped_gemm_runs(x.device)

    def _dense_pays(self, x: torch.Tensor, expert_ids: torch.Tensor) -> bool:
        """Small experts, a few tokens routed to most of them, on CPU: a per-expert loop costs more in dispatch
        than running every expert on every token (the small default model's batched decode)."""
        num_experts, m = self.w2.shape[0], x.shape[0]
        work = m * num_experts * self.w2[0].numel()
        return (not x.is_cuda and x.dtype != torch.float64 and self.w13_scale is None
                and expert_ids.numel() >= num_experts and work <= DENSE_EXPERT_WORK)

    def _dense(self, x: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Every expert on every token as two batched matmuls, weighted by a dense [M, E] routing map."""
        num_experts, m = self.w2.shape[0], x.shape[0]
        routing = torch.zeros(m, num_experts, dtype=torch.float32, device=x.device)
        routing.scatter_(1, expert_ids, weights.float())
        xe = x.unsqueeze(0).expand(num_experts, m, x.shape[-1])
        h = silu_and_mul(torch.bmm(xe, self.w13.transpose(1, 2)))
        y = torch.bmm(h, self.w2.transpose(1, 2))  # [E, M, D]
        return torch.einsum("emd,me->md", y.float(), routing)

    def _grouped(self, x: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Grouped GEMMs for all experts, gate and up in one: no host sync, two GEMM launches (FP8 experts: two
        activation quantisations too), the activation in one pass, and each token's rows gathered and summed in
        one launch."""
        flat_ids = expert_ids.reshape(-1)
        order = flat_ids.argsort(stable=True)
        token_of = order // expert_ids.shape[1]
        counts = torch.zeros(self.w2.shape[0], dtype=torch.int32, device=x.device)
        counts.scatter_add_(0, flat_ids, torch.ones_like(flat_ids, dtype=torch.int32))  # bincount syncs on CUDA
        offsets = counts.cumsum(0, dtype=torch.int32)
        h = x.index_select(0, token_of)
        y = expert_gemm(silu_and_mul(expert_gemm(h, self.w13, self.w13_scale, offsets)), self.w2, self.w2_scale,
                        offsets)
        return moe_combine(y, order, weights)


class Router(nn.Module):
    def __init__(self, config: KimiLinearConfig):
        super().__init__()
        self.top_k = config.num_experts_per_token
        self.renormalize = config.moe_renormalize
        self.scaling = config.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        self.e_score_correction_bias = nn.Parameter(torch.zeros(config.num_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Select on sigmoid score + bias; weight by the unbiased score (vLLM/transformers, spec §5.4)."""
        logits = x.float() @ self.weight.float().T
        return route(logits, self.e_score_correction_bias, self.top_k, self.renormalize, self.scaling)


class SparseMoE(nn.Module):
    def __init__(self, config: KimiLinearConfig):
        super().__init__()
        self.gate = Router(config)
        self.experts = StackedExperts(config.num_experts, config.hidden_size, config.moe_intermediate_size)
        self.shared_experts = (
            SwiGLU(config.hidden_size, config.moe_intermediate_size * config.num_shared_experts)
            if config.num_shared_experts > 0 else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        ids, weights = self.gate(flat)
        out = self.experts(flat, ids, weights).to(x.dtype).view_as(x)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out
