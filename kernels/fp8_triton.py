"""FP8 linear layers on the GPU: weight-only for a few rows, FP8 tensor cores for many.

A few rows (decode) are bound by reading the weight: the expert GEMM kernel of kernels/moe_triton.py, run as one
expert, reads the FP8 tiles, converts them in registers and multiplies in the activations' dtype, so the weight
costs half its bf16 bytes and the activations are not quantised at all. Many rows (prefill) are bound by the
multiplies: the activations are quantised per row on the fly, one launch for all rows (vLLM's dynamic per-token
FP8), and torch._scaled_mm runs the FP8 GEMM with both sides' scales. Same contract as kernels/fp8_reference.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .fp8_reference import FP8, FP8_MAX
from .mla_triton import _sm_count
from .moe_triton import BLOCK_M, _block_n, _empty, _expert_gemm_kernel

WEIGHT_ONLY_ROWS = 32
"""Rows up to which reading the FP8 weight into a bf16 GEMM beats quantising the activations for _scaled_mm."""


def _filling_block_n(n: int, blocks: int, device: torch.device) -> int:
    """The widest column tile that still gives every SM a program: a few rows times a 2,304-column weight in
    64-column tiles is 36 programs, too few to stream the weight at full bandwidth (on the H100 the 6,144-column
    weight in 32-column tiles, 192 programs, beat 16-column ones: benchmarks/RESULTS.md)."""
    return next((bn for bn in (64, 32) if blocks * triton.cdiv(n, bn) >= _sm_count(device)), 16)


def weight_only_fp8_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, *,
                           block_n: int | None = None, block_k: int = 128) -> torch.Tensor:
    """x [M, K] times the FP8 weight [N, K] read tile by tile into a GEMM in x's dtype: [M, N]."""
    m, (n, k) = x.shape[0], weight.shape
    blocks = triton.cdiv(m, BLOCK_M)
    out = _empty(m, n, device=x.device, dtype=x.dtype)
    bn = block_n or min(_block_n(n), _filling_block_n(n, blocks, x.device))
    _expert_gemm_kernel[(blocks, triton.cdiv(n, bn))](
        x, weight, weight_scale, weight_scale, weight_scale, weight_scale, out, m, 1, n, k, A_ROWS_PER_PAIR=1,
        GATED=False, HAS_SCALE=True, WEIGHTED=False, BM=BLOCK_M, BN=bn, BK=min(block_k, triton.next_power_of_2(k)),
        DOT_PREC="ieee" if x.dtype == torch.float32 else "tf32", DENSE=True, num_warps=4, num_stages=3)
    return out


@triton.jit
def _quantize_rows_kernel(x, xq, scale, cols, BK: tl.constexpr, FP8_LIMIT: tl.constexpr):
    """One program a row: its largest magnitude over FP8_LIMIT is its scale, then the row over that scale, in FP8."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BK)
    amax = tl.zeros([BK], dtype=tl.float32)
    for start in range(0, cols, BK):
        v = tl.load(x + row * cols + start + offs, mask=start + offs < cols, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(v))
    s = tl.maximum(tl.max(amax, axis=0), 1e-12) / FP8_LIMIT
    tl.store(scale + row, s)
    for start in range(0, cols, BK):
        v = tl.load(x + row * cols + start + offs, mask=start + offs < cols, other=0.0).to(tl.float32)
        q = tl.minimum(tl.maximum(v / s, -FP8_LIMIT), FP8_LIMIT)
        tl.store(xq + row * cols + start + offs, q.to(xq.dtype.element_ty), mask=start + offs < cols)


def quantize_rows_triton(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as kimi_swarm.kernels.fp8_reference.quantize_rows for contiguous x [M, K], in one launch (the
    same maths as a chain of PyTorch ops costs eight launches before every FP8 GEMM of a decode step)."""
    x = x.contiguous()
    rows, cols = x.shape
    xq = _empty(rows, cols, device=x.device, dtype=FP8)
    scale = _empty(rows, device=x.device, dtype=torch.float32)
    block = min(triton.next_power_of_2(cols), 4096)
    if rows:
        _quantize_rows_kernel[(rows,)](x, xq, scale, cols, BK=block, FP8_LIMIT=FP8_MAX,
                                       num_warps=4 if block <= 1024 else 8)
    return xq, scale


def _fp8_tensor_cores(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    xq, x_scale = quantize_rows_triton(x)
    return torch._scaled_mm(xq, weight.t(), scale_a=x_scale[:, None], scale_b=weight_scale[None, :].float(),
                            out_dtype=x.dtype)


def fp8_linear_triton(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    """Same contract as kimi_swarm.kernels.fp8_reference.fp8_linear_reference."""
    if weight.dtype != FP8:
        raise ValueError(f"fp8_linear: weight must be {FP8}, got {weight.dtype}")
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    many = flat.shape[0] > WEIGHT_ONLY_ROWS and x.dtype in (torch.bfloat16, torch.float16)
    out = (_fp8_tensor_cores if many else weight_only_fp8_linear)(flat, weight, weight_scale)
    return out.view(*x.shape[:-1], weight.shape[0])
