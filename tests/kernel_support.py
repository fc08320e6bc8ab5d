"""Inputs and error measure shared by the kernel tests (Triton kernels and the PyTorch references)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kda_inputs(b, t, h, kd, vd, *, gate_scale=1.0):
    q, k = torch.randn(b, t, h, kd), torch.randn(b, t, h, kd)
    v = torch.randn(b, t, h, vd)
    g = F.logsigmoid(torch.randn(b, t, h, kd)) * gate_scale
    beta = torch.rand(b, t, h)
    return q, k, v, g, beta


def float64(*xs):
    return [x.double() for x in xs]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()
