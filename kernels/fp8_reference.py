"""FP8 weights: float8_e4m3fn with one fp32 scale per output row, and the linear layer over them in PyTorch.

The reference dequantises the whole weight for each call: the CPU path of an FP8 model (which saves no time
there, only memory on disk and in the GPU path) and the oracle of kernels/fp8_triton.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [..., out, in] -> (FP8 [..., out, in], fp32 scales [..., out]): each row scaled so its largest magnitude
    is FP8_MAX (an all-zero row gets a tiny scale and stays zero)."""
    wf = w.float()
    scale = wf.abs().amax(dim=-1).clamp(min=1e-12) / FP8_MAX
    return (wf / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (q.float() * scale[..., None]).to(dtype)


def fp8_linear_reference(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    """x [..., in] @ dequantised weight [out, in].T -> [..., out] in x's dtype."""
    return F.linear(x, dequantize_rows(weight, weight_scale, x.dtype))
