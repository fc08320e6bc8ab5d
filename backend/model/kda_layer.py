"""Kimi Delta Attention layer (spec §3): projections, short conv, gates, the KDA recurrence, gated norm."""

from __future__ import annotations

import torch
from torch import nn

from kimi_swarm.kernels import chunk_kda, gated_rms_norm, kda_decode_step, kda_gates, short_conv

from .config import KimiLinearConfig
from .context import ForwardContext
from .fusion import fuse_linears_

IN_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "f_a_proj", "b_proj", "g_a_proj")
"""The projections of the layer's input, in the order of the fused in_proj's output."""


class KimiDeltaAttention(nn.Module):
    def __init__(self, config: KimiLinearConfig, kda_index: int):
        super().__init__()
        self.kda_index = kda_index
        self.num_heads = h = config.kda_heads
        self.head_dim = d = config.kda_head_dim
        w = config.conv_size
        self.eps = config.rms_norm_eps
        p, hidden = h * d, config.hidden_size
        self.q_proj = nn.Linear(hidden, p, bias=False)
        self.k_proj = nn.Linear(hidden, p, bias=False)
        self.v_proj = nn.Linear(hidden, p, bias=False)
        self.q_conv1d = nn.Conv1d(p, p, w, groups=p, bias=False)
        self.k_conv1d = nn.Conv1d(p, p, w, groups=p, bias=False)
        self.v_conv1d = nn.Conv1d(p, p, w, groups=p, bias=False)
        self.f_a_proj = nn.Linear(hidden, d, bias=False)
        self.f_b_proj = nn.Linear(d, p, bias=False)
        self.dt_bias = nn.Parameter(torch.zeros(p, dtype=torch.float32))
        self.A_log = nn.Parameter(torch.zeros(1, 1, h, 1, dtype=torch.float32))
        self.b_proj = nn.Linear(hidden, h, bias=False)
        self.g_a_proj = nn.Linear(hidden, d, bias=False)
        self.g_b_proj = nn.Linear(d, p, bias=False)
        self.o_norm = nn.Module()
        self.o_norm.weight = nn.Parameter(torch.ones(d))
        self.o_proj = nn.Linear(p, hidden, bias=False)
        self.in_widths: tuple[int, ...] | None = None
        """The widths of IN_PROJECTIONS once fused into in_proj (fuse_projections_), else None."""

    def fuse_projections_(self) -> None:
        """The six projections of the input as one GEMM (backend/model/fusion.py)."""
        if self.in_widths is None:
            self.in_widths = fuse_linears_(self, IN_PROJECTIONS, "in_proj")

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q, k and v side by side before the short convolution, f_a, b, g_a) of the layer's input; fused, the
        four are column slices of one GEMM's output."""
        if self.in_widths is not None:
            q, k, v, *rest = self.in_widths
            return tuple(self.in_proj(x).split([q + k + v, *rest], dim=-1))
        return (torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1), self.f_a_proj(x),
                self.b_proj(x), self.g_a_proj(x))

    def _taps(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The q, k and v short convolutions' [P, 1, W] taps."""
        return self.q_conv1d.weight, self.k_conv1d.weight, self.v_conv1d.weight

    def _decode(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """One token per sequence: the projections, then everything up to o_proj in one kernel."""
        n = x.shape[0]
        recurrent_pool, conv_pool, slots = ctx.kda_state(self.kda_index)
        mixed, f_a, b, g_a = self._project(x)
        y = kda_decode_step(mixed.view(n, -1), conv_pool, self._taps(), self.f_b_proj(f_a).view(n, -1),
                            self.dt_bias, self.A_log, b.view(n, -1), self.g_b_proj(g_a).view(n, -1),
                            self.o_norm.weight, recurrent_pool, slots, self.eps)
        return self.o_proj(y.view(n, 1, -1))

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        n, t, _ = x.shape
        if t == 1:
            return self._decode(x, ctx)
        shape = (n, t, self.num_heads, self.head_dim)
        recurrent_pool, conv_pool, slots = ctx.kda_state(self.kda_index)
        mixed, f_a, b, g_a = self._project(x)
        q, k, v = (part.reshape(shape) for part in short_conv(mixed, conv_pool, slots, self._taps()))
        g, beta = kda_gates(self.f_b_proj(f_a), b, self.dt_bias, self.A_log, shape)
        o, final = chunk_kda(q, k, v, g, beta, initial_state=recurrent_pool.index_select(0, slots),
                             output_final_state=True, use_qk_l2norm=True)
        recurrent_pool.index_copy_(0, slots, final.to(recurrent_pool.dtype))
        gate = self.g_b_proj(g_a).view(shape)
        y = gated_rms_norm(o, gate, self.o_norm.weight, self.eps)
        return self.o_proj(y.reshape(n, t, -1))
