"""Inputs and error measure shared by the kernel tests (Triton kernels and the PyTorch references)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kimi_swarm.kernels import kda_reference


def kda_inputs(b, t, h, kd, vd, *, gate_scale=1.0):
    q, k = torch.randn(b, t, h, kd), torch.randn(b, t, h, kd)
    v = torch.randn(b, t, h, vd)
    g = F.logsigmoid(torch.randn(b, t, h, kd)) * gate_scale
    beta = torch.rand(b, t, h)
    return q, k, v, g, beta


def kda_decode_step_float64(mixed, conv_pool, taps, f, dt_bias, a_log, b, gate, norm_weight, state_pool, slots,
                            eps=1e-5):
    """The fused KDA decode step's float64 reference on copies of its inputs: (output, conv pool, state pool) as
    the step leaves them."""
    conv, state = conv_pool.double(), state_pool.double()
    out = kda_reference.kda_decode_step_reference(
        mixed.double(), conv, tuple(t.double() for t in taps), f.double(), dt_bias.double(), a_log.double(),
        b.double(), gate.double(), norm_weight.double(), state, slots, eps)
    return out, conv, state


def float64(*xs):
    return [x.double() for x in xs]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()
