"""Kimi Delta Attention layer (spec §3): projections, short conv, gates, the KDA recurrence, gated norm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kimi_swarm.kernels import chunk_kda, gated_rms_norm, kda_decode_step
from kimi_swarm.kernels.kda_reference import kda_gates, shift_conv_window

from .config import KimiLinearConfig
from .context import ForwardContext


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

    def _short_conv(self, x: torch.Tensor, conv_pool: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Causal depthwise conv over [cached window ; new tokens]; stores the new pre-conv window."""
        full = shift_conv_window(conv_pool, slots, self._qkv(x).transpose(1, 2))
        weight = torch.cat(self._taps(), dim=0)
        out = F.conv1d(full.to(weight.dtype), weight, groups=weight.shape[0])
        return F.silu(out).to(x.dtype).transpose(1, 2)

    def _taps(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The q, k and v short convolutions' [P, 1, W] taps."""
        return self.q_conv1d.weight, self.k_conv1d.weight, self.v_conv1d.weight

    def _qkv(self, x: torch.Tensor) -> torch.Tensor:
        """The q, k and v projections side by side, before the short convolution."""
        return torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)

    def _decode(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """One token per sequence: the projections, then everything up to o_proj in one kernel."""
        n = x.shape[0]
        recurrent_pool, conv_pool, slots = ctx.kda_state(self.kda_index)
        y = kda_decode_step(self._qkv(x).view(n, -1), conv_pool, self._taps(),
                            self.f_b_proj(self.f_a_proj(x)).view(n, -1), self.dt_bias, self.A_log,
                            self.b_proj(x).view(n, -1), self.g_b_proj(self.g_a_proj(x)).view(n, -1),
                            self.o_norm.weight, recurrent_pool, slots, self.eps)
        return self.o_proj(y.view(n, 1, -1))

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        n, t, _ = x.shape
        if t == 1:
            return self._decode(x, ctx)
        shape = (n, t, self.num_heads, self.head_dim)
        recurrent_pool, conv_pool, slots = ctx.kda_state(self.kda_index)
        q, k, v = (part.reshape(shape) for part in self._short_conv(x, conv_pool, slots).chunk(3, dim=-1))
        g, beta = kda_gates(self.f_b_proj(self.f_a_proj(x)), self.b_proj(x), self.dt_bias, self.A_log, shape)
        o, final = chunk_kda(q, k, v, g, beta, initial_state=recurrent_pool.index_select(0, slots),
                             output_final_state=True, use_qk_l2norm=True)
        recurrent_pool.index_copy_(0, slots, final.to(recurrent_pool.dtype))
        gate = self.g_b_proj(self.g_a_proj(x)).view(shape)
        y = gated_rms_norm(o, gate, self.o_norm.weight, self.eps)
        return self.o_proj(y.reshape(n, t, -1))
