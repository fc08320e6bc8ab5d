"""RMSNorm variants as Kimi Linear computes them: statistics in fp32, weight applied after the cast back.

The CPU path; `rms_norm_float64` is the exact maths that tests and benchmarks hold
kernels/norm_triton.py to.
"""

from __future__ import annotations

import torch


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF KimiRMSNorm: normalise in fp32, cast to the input dtype, then scale by the weight."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def gated_rms_norm_reference(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """KDA output norm: per-head RMSNorm times sigmoid(gate), all in fp32 (FLA FusedRMSNormGated)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * weight.float() * torch.sigmoid(gate.float())).to(x.dtype)


def rms_norm_float64(x: torch.Tensor, weight: torch.Tensor, eps: float, gate: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """float64 RMSNorm over the last dim times weight (and sigmoid(gate)): the exact maths, no casts between."""
    x = x.double()
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.double()
    return y if gate is None else y * torch.sigmoid(gate.double())
