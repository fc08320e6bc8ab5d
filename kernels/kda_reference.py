"""PyTorch references for Kimi Delta Attention: the oracle for the Triton kernels and the CPU path.

Layout contract (everywhere: prefill, decode, cache): q, k [B, T, H, K]; v [B, T, H, V];
g [B, T, H, K] log-decay (<= 0); beta [B, T, H]; recurrent state [N, H, K, V] in fp32
(or float64 when the inputs are float64, for tests).

Per token and head the recurrence is (spec §3.6)
    S <- exp(g_t)[:, None] * S;  u = beta_t (v_t - S^T k_t);  S <- S + k_t u^T;  o_t = S^T q_t.
"""

from __future__ import annotations

import torch


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """FLA's l2norm: x / sqrt(sum(x^2) + eps), with eps inside the root."""
    return x / torch.sqrt((x * x).sum(dim=-1, keepdim=True) + eps)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _prepare(q, k, v, g, beta, scale, use_qk_l2norm):
    dtype = _compute_dtype(q)
    q, k, v, g, beta = (t.to(dtype) for t in (q, k, v, g, beta))
    if use_qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return q * scale, k, v, g, beta


def _initial_state(initial_state, n, h, kd, vd, like):
    if initial_state is None:
        return like.new_zeros(n, h, kd, vd)
    return initial_state.to(like.dtype).clone()


def naive_recurrent_kda(q, k, v, g, beta, *, scale=None, initial_state=None,
                        output_final_state=False, use_qk_l2norm=False):
    """Token-by-token recurrence; the slow but obviously correct oracle."""
    in_dtype = q.dtype
    q, k, v, g, beta = _prepare(q, k, v, g, beta, scale, use_qk_l2norm)
    b, t, h, kd = k.shape
    state = _initial_state(initial_state, b, h, kd, v.shape[-1], v)
    out = torch.empty_like(v)
    for i in range(t):
        state = state * g[:, i].exp()[..., None]
        u = beta[:, i, :, None] * (v[:, i] - torch.einsum("bhkv,bhk->bhv", state, k[:, i]))
        state = state + k[:, i, :, :, None] * u[:, :, None, :]
        out[:, i] = torch.einsum("bhkv,bhk->bhv", state, q[:, i])
    return out.to(in_dtype), (state if output_final_state else None)


def _chunked_one_sequence(q, k, v, g, beta, state, chunk_size):
    """q..beta of one sequence as [H, T, *]; returns (o [H, T, V], final state [H, K, V])."""
    h, t, _ = q.shape
    out = torch.empty(h, t, v.shape[-1], dtype=v.dtype, device=v.device)
    for start in range(0, t, chunk_size):
        end = min(start + chunk_size, t)
        c = end - start
        qc, kc, vc, bc = q[:, start:end], k[:, start:end], v[:, start:end], beta[:, start:end]
        gc = g[:, start:end].cumsum(dim=1)
        # decay[i, j, :] = exp(G_i - G_j) * k_j, only used for j <= i where the exponent is <= 0 (no overflow).
        lower = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
        diff = (gc[:, :, None, :] - gc[:, None, :, :]).masked_fill_(~lower[None, :, :, None], float("-inf"))
        decay = diff.exp_().mul_(kc[:, None, :, :])
        # a[x, h, i, j] = sum_k x_i[k] decay[h, i, j, k] for x = k and q: one batched mat-vec, no [h,c,c,k] copies
        a_kk, a_qk = torch.matmul(decay, torch.stack([kc, qc])[..., None])[..., 0]
        a_kk = (a_kk * bc[:, :, None]).masked_fill_(lower[None].logical_not() | torch.eye(c, dtype=torch.bool,
                                                                                            device=q.device), 0.0)
        unit_lower = a_kk + torch.eye(c, dtype=a_kk.dtype, device=q.device)
        rhs = torch.cat([vc * bc[..., None], kc * bc[..., None] * gc.exp()], dim=-1)
        solved = torch.linalg.solve_triangular(unit_lower, rhs, upper=False, unitriangular=True)
        u, w = solved.split([vc.shape[-1], kc.shape[-1]], dim=-1)
        v_new = u - w @ state
        out[:, start:end] = (qc * gc.exp()) @ state + a_qk @ v_new
        g_last = gc[:, -1]
        state = state * g_last.exp()[..., None] + (kc * (g_last[:, None] - gc).exp()).transpose(1, 2) @ v_new
    return out, state


def chunk_kda_reference(q, k, v, g, beta, *, scale=None, initial_state=None, output_final_state=False,
                        cu_seqlens=None, use_qk_l2norm=False, chunk_size=32):
    """Chunked (WY / UT-transform) form of the same recurrence; any T, varlen via cu_seqlens (B=1).

    The intra-chunk work grows with chunk_size; 32 halves a CPU prefill against 64 (the Triton kernel's).
    """
    in_dtype = q.dtype
    q, k, v, g, beta = _prepare(q, k, v, g, beta, scale, use_qk_l2norm)
    b, t, h, kd = k.shape
    vd = v.shape[-1]
    if cu_seqlens is None:
        bounds = [(i, 0, t) for i in range(b)]
        n = b
    else:
        if b != 1:
            raise ValueError(f"cu_seqlens needs batch size 1, got {b}")
        cu = cu_seqlens.tolist()
        bounds = [(0, cu[i], cu[i + 1]) for i in range(len(cu) - 1)]
        n = len(bounds)
    states = _initial_state(initial_state, n, h, kd, vd, v)
    out = torch.empty_like(v)
    for seq, (row, start, end) in enumerate(bounds):
        per_head = [x[row, start:end].transpose(0, 1) for x in (q, k, v, g)]
        o, states[seq] = _chunked_one_sequence(*per_head, beta[row, start:end].transpose(0, 1), states[seq],
                                                chunk_size)
        out[row, start:end] = o.transpose(0, 1)
    return out.to(in_dtype), (states if output_final_state else None)


def recurrent_kda_reference(q, k, v, g, beta, state_pool, state_indices, *, scale=None, use_qk_l2norm=False):
    """One new token per sequence; reads and writes `state_pool[state_indices]` in place, nothing else.

    naive_recurrent_kda's step for T = 1, written with in-place matmuls: it runs in every CPU decode step.
    """
    if q.shape[1] != 1:
        raise ValueError(f"recurrent_kda takes one token per sequence, got q {tuple(q.shape)}")
    in_dtype = q.dtype
    q, k, v, g, beta = (x[:, 0] for x in _prepare(q, k, v, g, beta, scale, use_qk_l2norm))  # [N, H, *]
    state = state_pool.index_select(0, state_indices).to(v.dtype)  # [N, H, K, V], a copy
    state.mul_(g.exp()[..., None])
    u = beta[..., None] * (v - torch.matmul(k[:, :, None, :], state)[:, :, 0])
    state.add_(k[..., None] * u[:, :, None, :])
    out = torch.matmul(q[:, :, None, :], state)[:, :, 0]
    state_pool.index_copy_(0, state_indices, state.to(state_pool.dtype))
    return out[:, None].to(in_dtype)
