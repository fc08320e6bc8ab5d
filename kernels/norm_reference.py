"""RMSNorm variants as Kimi Linear computes them: statistics in fp32, weight applied after the cast back.

The CPU path and the oracle for kernels/norm_triton.py.
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
