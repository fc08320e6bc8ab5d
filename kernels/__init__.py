"""Kernels for the GPU path beside their PyTorch references.

Each public function has one signature for both paths: CUDA tensors in bf16/fp16/fp32 go to the Triton
kernels (kernels/*_triton.py) when Triton can be imported; anything else (CPU, float64, no Triton, inputs
autograd must track: the kernels are forward-only; KDA head dims over 128) goes to the references
(kernels/*_reference.py), which are also the oracle in tests. Triton is imported only when a CUDA tensor
arrives, so CPU-only installs never load it.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

import torch

from . import fp8_reference, kda_reference, mla_reference, moe_reference, norm_reference

_TRITON_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@functools.cache
def _triton_module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f".{name}", __name__)
    except ImportError:
        return None


def _triton_path(name: str, *xs: torch.Tensor, weights: tuple[torch.Tensor, ...] = ()) -> ModuleType | None:
    """The Triton module to use for tensors xs, or None for the reference (also when training on the GPU:
    weights require grad there, and the Triton kernels have no backward)."""
    if not all(x.is_cuda and x.dtype in _TRITON_DTYPES for x in xs):
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in (*xs, *weights)):
        return None
    return _triton_module(name)


def _kda_path(x: torch.Tensor, head_dim: int, weights: tuple[torch.Tensor, ...] = ()) -> ModuleType | None:
    """The Triton KDA module for these inputs, or None for the reference: also for head dims the kernels do not
    take (kda_triton.MAX_HEAD_DIM), so every head dim the dispatcher accepts is computed correctly."""
    fast = _triton_path("kda_triton", x, weights=weights)
    return fast if fast is not None and head_dim <= fast.MAX_HEAD_DIM else None


def chunk_kda(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, *,
              scale: float | None = None, initial_state: torch.Tensor | None = None, output_final_state: bool = False,
              cu_seqlens: torch.Tensor | None = None,
              use_qk_l2norm: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """KDA over whole sequences (prefill): returns (o [B,T,H,V] in q's dtype, final state [N,H,K,V] fp32)."""
    fast = _kda_path(q, max(q.shape[-1], v.shape[-1]))
    impl = fast.chunk_kda_triton if fast else kda_reference.chunk_kda_reference
    return impl(q, k, v, g, beta, scale=scale, initial_state=initial_state, output_final_state=output_final_state,
                cu_seqlens=cu_seqlens, use_qk_l2norm=use_qk_l2norm)


def recurrent_kda(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                  state_pool: torch.Tensor, state_indices: torch.Tensor, *, scale: float | None = None,
                  use_qk_l2norm: bool = False) -> torch.Tensor:
    """One token per sequence; updates state_pool[state_indices] in place and returns o [N,1,H,V]."""
    fast = _kda_path(q, max(q.shape[-1], v.shape[-1]))
    impl = fast.recurrent_kda_triton if fast else kda_reference.recurrent_kda_reference
    return impl(q, k, v, g, beta, state_pool, state_indices, scale=scale, use_qk_l2norm=use_qk_l2norm)


def kda_decode_step(mixed: torch.Tensor, conv_pool: torch.Tensor,
                    conv_weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor], f: torch.Tensor,
                    dt_bias: torch.Tensor, a_log: torch.Tensor, b: torch.Tensor, gate: torch.Tensor,
                    norm_weight: torch.Tensor, state_pool: torch.Tensor, state_indices: torch.Tensor,
                    eps: float) -> torch.Tensor:
    """A KDA layer's decode step from its input projections to the gated norm (short convolution, gates,
    recurrent step, norm), one token per sequence: [N, H * D]. Updates both pools' rows in place; one launch on
    the GPU."""
    fast = _kda_path(mixed, f.shape[-1] // b.shape[-1], weights=(*conv_weights, dt_bias, a_log, norm_weight))
    impl = fast.kda_decode_step_triton if fast else kda_reference.kda_decode_step_reference
    return impl(mixed, conv_pool, conv_weights, f, dt_bias, a_log, b, gate, norm_weight, state_pool, state_indices,
                eps)


def kda_gates(f: torch.Tensor, b: torch.Tensor, dt_bias: torch.Tensor, a_log: torch.Tensor,
              shape: tuple[int, int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A KDA prefill's decay g = -exp(A_log) * softplus(f + dt_bias), fp32 [N, T, H, D] (`shape`), and beta =
    sigmoid(b), fp32 [N, T, H], from the f and b projections; one launch on the GPU."""
    fast = _kda_path(f, shape[-1], weights=(dt_bias, a_log))
    impl = fast.kda_gates_triton if fast else kda_reference.kda_gates
    return impl(f, b, dt_bias, a_log, shape)


def short_conv(mixed: torch.Tensor, conv_pool: torch.Tensor, state_indices: torch.Tensor,
               taps: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A KDA layer's q, k and v short convolutions over T new tokens a sequence: mixed [N, T, 3P] (the three
    projections side by side) -> silu of the causal depthwise convolutions after each sequence's cached window,
    (q, k, v) [N, T, P]; the windows in conv_pool [slots, 3P, W-1] move on in place."""
    fast = _triton_path("kda_triton", mixed, weights=taps)
    impl = fast.short_conv_triton if fast else kda_reference.short_conv_reference
    return impl(mixed, conv_pool, state_indices, taps)


def mla_decode(q_latent: torch.Tensor, q_pe: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
               seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """One query token per sequence over its paged latent cache: returns [N, H, R]."""
    fast = _triton_path("mla_triton", q_latent)
    impl = fast.mla_decode_triton if fast else mla_reference.mla_decode_reference
    return impl(q_latent, q_pe, kv_cache, block_tables, seq_lens, scale)


def mla_decode_from(q_latent: torch.Tensor, q_pe: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                    seq_lens: torch.Tensor, kv_start: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """mla_decode over keys kv_start.. only: ([N, H, R], natural log-sum-exp [N, H] fp32), to merge with a prefix
    attended elsewhere."""
    fast = _triton_path("mla_triton", q_latent)
    impl = fast.mla_decode_from_triton if fast else mla_reference.mla_decode_from_reference
    return impl(q_latent, q_pe, kv_cache, block_tables, seq_lens, kv_start, scale)


def mla_decode_shared(q_latent: torch.Tensor, q_pe: torch.Tensor, kv_cache: torch.Tensor, prefix_pages: torch.Tensor,
                      prefix_len: int, block_tables: torch.Tensor, seq_lens: torch.Tensor,
                      scale: float) -> torch.Tensor:
    """mla_decode for sequences that share their first prefix_len tokens: the prefix is read once."""
    fast = _triton_path("mla_triton", q_latent)
    impl = fast.mla_decode_shared_triton if fast else mla_reference.mla_decode_shared_reference
    return impl(q_latent, q_pe, kv_cache, prefix_pages, prefix_len, block_tables, seq_lens, scale)


def mla_prefill(q_latent: torch.Tensor, q_pe: torch.Tensor, kv_cache: torch.Tensor, block_table: torch.Tensor,
                start_pos: int, scale: float) -> torch.Tensor:
    """T new tokens of one sequence attend causally to its cache: returns [T, H, R]."""
    fast = _triton_path("mla_triton", q_latent)
    impl = fast.mla_prefill_triton if fast else mla_reference.mla_prefill_reference
    return impl(q_latent, q_pe, kv_cache, block_table, start_pos, scale)


def fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor,
              w13_scale: torch.Tensor | None = None, w2_scale: torch.Tensor | None = None) -> torch.Tensor:
    """The routed experts of a MoE layer for a few tokens, each chosen expert's weights read once: x [M, H],
    expert_ids and weights [M, k] -> fp32 [M, H]. FP8 weights come with per-row scales (w13_scale, w2_scale)."""
    fast = _triton_path("moe_triton", x, weights=(w13, w2))
    impl = fast.fused_moe_triton if fast else moe_reference.fused_moe_reference
    return impl(x, w13, w2, expert_ids, weights, w13_scale, w2_scale)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """SwiGLU's activation: x [..., 2I] (gate then up) -> silu(gate) * up [..., I] in x's dtype; one launch on
    the GPU."""
    fast = _triton_path("moe_triton", x)
    impl = fast.silu_and_mul_triton if fast else moe_reference.silu_and_mul_reference
    return impl(x)


def moe_combine(y: torch.Tensor, order: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The routed experts' outputs summed per token: y [M * k, H] holds pair order[i]'s output in row i (pairs
    sorted by expert; pair = token * k + choice), weights [M, k] -> fp32 [M, H] (fp64 for fp64 y), each token's
    k rows times their routing weights."""
    fast = _triton_path("moe_triton", y)
    impl = fast.moe_combine_triton if fast else moe_reference.moe_combine_reference
    return impl(y, order, weights)


def route(logits: torch.Tensor, bias: torch.Tensor, top_k: int, renormalize: bool,
          scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A MoE router's choice from its logits [M, E]: (expert ids [M, top_k], weights [M, top_k]), chosen on sigmoid
    score plus bias, weighted by the score (renormalised when asked) times scaling; one launch on the GPU."""
    fast = _triton_path("moe_triton", logits, weights=(bias,)) if logits.dtype == torch.float32 else None
    impl = fast.route_triton if fast else moe_reference.route_reference
    return impl(logits, bias, top_k, renormalize, scaling)


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    """x [..., in] times an FP8 weight [out, in] with per-row scales [out] -> [..., out] in x's dtype."""
    fast = _triton_path("fp8_triton", x)
    impl = fast.fp8_linear_triton if fast else fp8_reference.fp8_linear_reference
    return impl(x, weight, weight_scale)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (float8_e4m3fn [M, K], fp32 scales [M]): each row over its largest magnitude times FP8's
    largest value; one launch on the GPU."""
    fast = _triton_path("fp8_triton", x)
    impl = fast.quantize_rows_triton if fast else fp8_reference.quantize_rows
    return impl(x)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim (HF KimiRMSNorm): in x's dtype, then times weight with torch promotion."""
    fast = _triton_path("norm_triton", x, weight)
    impl = fast.rms_norm_triton if fast else norm_reference.rms_norm_reference
    return impl(x, weight, eps)


def gated_rms_norm(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim times weight and sigmoid(gate), in fp32; returned in x's dtype."""
    fast = _triton_path("norm_triton", x, gate, weight)
    impl = fast.gated_rms_norm_triton if fast else norm_reference.gated_rms_norm_reference
    return impl(x, gate, weight, eps)


__all__ = ["chunk_kda", "recurrent_kda", "kda_decode_step", "kda_gates", "short_conv", "fused_moe", "route",
           "silu_and_mul", "moe_combine", "fp8_linear", "quantize_rows", "mla_decode", "mla_decode_from",
           "mla_decode_shared", "mla_prefill", "rms_norm", "gated_rms_norm"]
