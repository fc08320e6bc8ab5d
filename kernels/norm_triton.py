"""Triton RMSNorm for the GPU: one launch per norm instead of PyTorch's chain of small kernels.

At batch-1 decode an eager RMSNorm is a chain of about six elementwise and reduction launches (cast,
square, mean, rsqrt, scale, cast back, weight) and every layer has several norms, so their launch latency
outweighs the few kilobytes they touch, in eager mode and inside CUDA graphs alike. This kernel reads
each row once, keeps the statistics in fp32 and writes the result once; rows of a small hidden size
share a program. Rows may be strided (the MLA latent norm reads a slice of a wider projection) as long
as the last dim is unit-stride. Same maths and dtypes as kernels/norm_reference.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_TILE = 1024
"""Elements one program aims to normalise: several short rows (KDA heads of 128) or one long row."""


def _empty(*shape: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Every output buffer comes from here, so tests can poison them (fill with NaN) before a run."""
    return torch.empty(*shape, device=device, dtype=dtype)


@triton.jit
def _rms_norm_kernel(x, gate, weight, out, rows, x_stride, gate_stride, eps,
                     D: tl.constexpr, BD: tl.constexpr, BR: tl.constexpr, GATED: tl.constexpr):
    row = (tl.program_id(0) * BR + tl.arange(0, BR)).to(tl.int64)
    col = tl.arange(0, BD)
    mask = (row[:, None] < rows) & (col[None, :] < D)
    b_x = tl.load(x + row[:, None] * x_stride + col[None, :], mask=mask, other=0.0)
    b_w = tl.load(weight + col, mask=col < D, other=0.0).to(tl.float32)[None, :]
    xf = b_x.to(tl.float32)
    normed = xf * tl.rsqrt(tl.sum(xf * xf, axis=1) / D + eps)[:, None]
    if GATED:
        b_g = tl.load(gate + row[:, None] * gate_stride + col[None, :], mask=mask, other=0.0).to(tl.float32)
        y = normed * b_w * tl.sigmoid(b_g)
    else:
        y = b_w * normed.to(b_x.dtype).to(tl.float32)  # rounded to the input dtype before the weight, as HF
    tl.store(out + row[:, None] * D + col[None, :], y.to(out.dtype.element_ty), mask=mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """t as [rows, D]: a view (any row stride) when its leading dims collapse, else a copy."""
    flat = t.reshape(-1, t.shape[-1])
    return flat if flat.stride(-1) == 1 else flat.contiguous()


def _norm(x: torch.Tensor, gate: torch.Tensor | None, weight: torch.Tensor, eps: float,
          out_dtype: torch.dtype) -> torch.Tensor:
    d = x.shape[-1]
    if weight.shape != (d,):
        raise ValueError(f"weight {tuple(weight.shape)} must be ({d},) for x {tuple(x.shape)}")
    if gate is not None and gate.shape != x.shape:
        raise ValueError(f"gate {tuple(gate.shape)} must match x {tuple(x.shape)}")
    xr = _rows(x)
    gr = xr if gate is None else _rows(gate)
    out = _empty(*x.shape, device=x.device, dtype=out_dtype)
    rows, bd = xr.shape[0], triton.next_power_of_2(d)
    br = min(max(1, _TILE // bd), triton.next_power_of_2(max(rows, 1)))
    _rms_norm_kernel[(triton.cdiv(rows, br),)](
        xr, gr, weight.contiguous(), out, rows, xr.stride(0), gr.stride(0), eps,
        D=d, BD=bd, BR=br, GATED=gate is not None, num_warps=max(1, min(8, bd * br // 256)))
    return out


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Same contract as kimi_swarm.kernels.norm_reference.rms_norm_reference."""
    return _norm(x, None, weight, eps, torch.promote_types(weight.dtype, x.dtype))


def gated_rms_norm_triton(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Same contract as kimi_swarm.kernels.norm_reference.gated_rms_norm_reference."""
    return _norm(x, gate, weight, eps, x.dtype)
