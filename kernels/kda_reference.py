"""PyTorch references for Kimi Delta Attention: the oracle for the Triton kernels and the CPU path.

Layout contract (everywhere: prefill, decode, cache): q, k [B, T, H, K]; v [B, T, H, V];
g [B, T, H, K] log-decay (<= 0); beta [B, T, H]; recurrent state [N, H, K, V] in fp32
(or float64 when the inputs are float64, for tests).

Per token and head the recurrence is (spec §3.6)
    S <- exp(g_t)[:, None] * S;  u = beta_t (v_t - S^T k_t);  S <- S + k_t u^T;  o_t = S^T q_t.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .norm_reference import gated_rms_norm_reference


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


def naive_recurrent_kda(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, *,
                        scale: float | None = None, initial_state: torch.Tensor | None = None,
                        output_final_state: bool = False,
                        use_qk_l2norm: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
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


SUB_BLOCK = 4
"""Positions per sub-block of a chunk: exact pairwise decays inside one, factorised products across them.
The pairwise part costs c * SUB_BLOCK * K elementwise and the factorised part about c^2 / (2 SUB_BLOCK) * K,
so 4 does the least work in a chunk of 32."""


def _intra_chunk_scores(q: torch.Tensor, k: torch.Tensor, gc: torch.Tensor) -> torch.Tensor:
    """[a_qk, a_kk] stacked: a_x[..., i, j] = sum_k x_i[k] exp(gc_i[k] - gc_j[k]) k_j[k] for j <= i, else 0.

    q, k and gc [..., c, K], gc the within-chunk cumulative log-decay. Decays in a trained model span
    hundreds of nats within a chunk, so exp(gc_i) * exp(-gc_j) would overflow. Across sub-blocks both
    factors are taken relative to r, the decay just before i's sub-block: exp(gc_i - r) <= 1 and
    exp(r - gc_j) <= 1, so nothing overflows and a product that underflows is truly negligible; one
    matmul per sub-block. Inside a sub-block the exact pairwise form [s, s, K] stays, small enough to
    cost little.
    """
    c = k.shape[-2]
    s = SUB_BLOCK if c % SUB_BLOCK == 0 else c
    blocks = c // s
    x = torch.stack([q, k])
    scores = x.new_zeros(*x.shape[:-1], c)
    lower = torch.ones(s, s, dtype=torch.bool, device=k.device).tril()
    gs, ks, xs = gc.unflatten(-2, (blocks, s)), k.unflatten(-2, (blocks, s)), x.unflatten(-2, (blocks, s))
    decay = (gs[..., :, None, :] - gs[..., None, :, :]).masked_fill(~lower[..., None], float("-inf"))
    decay = decay.exp() * ks[..., None, :, :]  # [..., blocks, i, j, K]; out of place, so autograd can train through it
    inside = (decay @ xs.movedim(0, -1)).movedim(-1, 0)  # [2, ..., blocks, i, j]: one matmul, decay read once
    for b in range(blocks):
        rows = slice(b * s, (b + 1) * s)
        scores[..., rows, rows] = inside[..., b, :, :]
        if b:
            r = gc[..., b * s - 1:b * s, :]
            before = k[..., :b * s, :] * (r - gc[..., :b * s, :]).exp()
            scores[..., rows, :b * s] = (x[..., rows, :] * (gc[..., rows, :] - r).exp()) @ before.transpose(-1, -2)
    return scores


def _chunk_length(t: int, chunk_size: int) -> int:
    """The chunk for T tokens: `chunk_size`, or for fewer tokens the shortest whole number of sub-blocks
    that holds them (T itself up to one sub-block). A decode wave of forks feeding 2 tokens each, or a
    speculative check of 9, would otherwise pay for a full chunk of padding in every row."""
    if t >= chunk_size:
        return chunk_size
    return t if t <= SUB_BLOCK else -(-t // SUB_BLOCK) * SUB_BLOCK


def _unit_lower_inverse(a: torch.Tensor) -> torch.Tensor:
    """(I + a)^-1 for strictly lower-triangular a [..., c, c], as (I + M)(I + M^2)(I + M^4)... with M = -a
    (M^c = 0): log2(c) batched matmuls. A batched triangular solve costs about 45 us per small matrix on
    the CPU, which made it the largest op of a forward over a few tokens for many forks."""
    m = -a
    inverse = m + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    power = m
    for _ in range(max(a.shape[-1] - 1, 1).bit_length() - 1):
        power = power @ power
        inverse = inverse + inverse @ power
    return inverse


def _chunked_rows(q, k, v, g, beta, state, chunk_size):
    """The chunked recurrence for R independent rows (heads, or batch x heads) of one length.

    q, k, g [R, T, K]; v [R, T, V]; beta [R, T]; state [R, K, V] -> (o [R, T, V], final state [R, K, V]).
    Everything inside a chunk is computed for all chunks at once; across chunks the state follows
    S <- P_n S + U_n, one fused op per chunk (P_n, U_n fold the chunk's decay, keys and UT transform).
    """
    rows, t, kd = k.shape
    vd = v.shape[-1]
    if t == 0:  # an empty sequence of a varlen batch: no output, its state passes through
        return v, state
    c = _chunk_length(t, chunk_size)
    pad = (-t) % c
    if pad:  # zero keys, values and beta and zero log-decay leave the state untouched
        q, k, v, g = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v, g))
        beta = F.pad(beta, (0, pad))
    n = (t + pad) // c
    q, k, v, g = (x.unflatten(1, (n, c)) for x in (q, k, v, g))
    beta = beta.unflatten(1, (n, c))
    gc = g.cumsum(dim=-2)
    a_qk, a_kk = _intra_chunk_scores(q, k, gc)
    a_kk = (a_kk * beta[..., None]).masked_fill(torch.eye(c, dtype=torch.bool, device=q.device), 0.0)
    rhs = torch.cat([v * beta[..., None], k * beta[..., None] * gc.exp()], dim=-1)
    u, w = (_unit_lower_inverse(a_kk) @ rhs).split([vd, kd], dim=-1)
    g_last = gc[..., -1, :]  # [R, n, K]
    k_to_end = (k * (g_last[..., None, :] - gc).exp()).transpose(-1, -2)  # [R, n, K, c]
    carry = torch.diag_embed(g_last.exp()) - k_to_end @ w  # P_n [R, n, K, K]
    added = k_to_end @ u  # U_n [R, n, K, V]
    befores = []
    for p_n, u_n in zip(carry.unbind(1), added.unbind(1)):
        befores.append(state)
        state = torch.baddbmm(u_n, p_n, state)
    before = torch.stack(befores, dim=1)  # [R, n, K, V]: the state entering each chunk
    o = a_qk @ u + (q * gc.exp() - a_qk @ w) @ before
    return o.flatten(1, 2)[:, :t], state


def chunk_kda_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, *,
                        scale: float | None = None, initial_state: torch.Tensor | None = None,
                        output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None,
                        use_qk_l2norm: bool = False, chunk_size: int = 32) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked (WY / UT-transform) form of the same recurrence; any T, varlen via cu_seqlens (B=1).

    Equal-length batch rows run together, every (row, head) pair as one row of `_chunked_rows`: a
    batch of forks prefilling a few tokens each costs about one forward, not one per fork. Chunks of 32
    and 64 (the Triton kernel's) prefill at the same speed on the CPU.
    """
    in_dtype = q.dtype
    q, k, v, g, beta = _prepare(q, k, v, g, beta, scale, use_qk_l2norm)
    b, t, h, kd = k.shape
    vd = v.shape[-1]
    if cu_seqlens is None:
        rows = [x.transpose(1, 2).flatten(0, 1) for x in (q, k, v, g, beta)]  # [b*h, t, ...]
        state = _initial_state(initial_state, b, h, kd, vd, v).flatten(0, 1)
        o, state = _chunked_rows(*rows, state, chunk_size)
        out, states = o.unflatten(0, (b, h)).transpose(1, 2), state.unflatten(0, (b, h))
        return out.to(in_dtype), (states if output_final_state else None)
    if b != 1:
        raise ValueError(f"cu_seqlens needs batch size 1, got {b}")
    cu = cu_seqlens.tolist()
    bounds = list(zip(cu[:-1], cu[1:]))
    states = _initial_state(initial_state, len(bounds), h, kd, vd, v)
    out = torch.empty_like(v)
    for seq, (start, end) in enumerate(bounds):
        per_head = [x[0, start:end].transpose(0, 1) for x in (q, k, v, g, beta)]
        o, states[seq] = _chunked_rows(*per_head, states[seq], chunk_size)
        out[0, start:end] = o.transpose(0, 1)
    return out.to(in_dtype), (states if output_final_state else None)


def recurrent_kda_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                            state_pool: torch.Tensor, state_indices: torch.Tensor, *, scale: float | None = None,
                            use_qk_l2norm: bool = False) -> torch.Tensor:
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


def shift_conv_window(conv_pool: torch.Tensor, state_indices: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
    """[cached window ; new inputs] per channel for the short convolution (mixed [N, C, T]); the last W-1 inputs
    are stored back into conv_pool [slots, C, W-1] in place."""
    full = torch.cat([conv_pool.index_select(0, state_indices).to(mixed.dtype), mixed], dim=-1)
    conv_pool.index_copy_(0, state_indices, full[..., -conv_pool.shape[-1]:].to(conv_pool.dtype))
    return full


def short_conv_reference(mixed: torch.Tensor, conv_pool: torch.Tensor, state_indices: torch.Tensor,
                         taps: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The q, k and v short convolutions of a prefill: mixed [N, T, 3P] (the three projections side by side; the
    last dim unit-stride) after each sequence's cached window, causal and depthwise with taps [P, 1, W] each, then
    silu: (q, k, v) [N, T, P] in mixed's dtype. The last W-1 inputs go back into conv_pool [slots, 3P, W-1]."""
    full = shift_conv_window(conv_pool, state_indices, mixed.transpose(1, 2))
    weight = torch.cat(taps, dim=0)
    out = F.silu(F.conv1d(full.to(weight.dtype), weight, groups=weight.shape[0])).to(mixed.dtype)
    return out.transpose(1, 2).chunk(3, dim=-1)


def kda_gates(f: torch.Tensor, b: torch.Tensor, dt_bias: torch.Tensor, a_log: torch.Tensor,
              shape: tuple[int, int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The decay g = -exp(A_log) * softplus(f + dt_bias), fp32 [N, T, H, D] (`shape`), and beta = sigmoid(b), fp32
    [N, T, H], from the layer's f and b projections."""
    raw = f.float() + dt_bias.float()
    g = -a_log.float().exp() * F.softplus(raw.view(shape), beta=1.0, threshold=20.0)
    return g, torch.sigmoid(b.float()).view(shape[:-1])


def kda_decode_step_reference(mixed: torch.Tensor, conv_pool: torch.Tensor,
                              conv_weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor], f: torch.Tensor,
                              dt_bias: torch.Tensor, a_log: torch.Tensor, b: torch.Tensor, gate: torch.Tensor,
                              norm_weight: torch.Tensor, state_pool: torch.Tensor, state_indices: torch.Tensor,
                              eps: float) -> torch.Tensor:
    """A KDA layer's decode step between its input projections and o_proj, one token per sequence.

    mixed [N, 3P]: the q, k and v projections before the short convolution (P = H * D); conv_pool
    [slots, 3P, W-1]: each slot's last W-1 inputs, updated in place; conv_weights: the q, k, v convolutions'
    [P, 1, W] taps; f [N, P] and b [N, H]: the decay and beta projections before dt_bias, softplus and sigmoid;
    gate [N, P]: the output gate's projection; state_pool [slots, H, D, D] fp32, updated in place. Returns the
    gated, normalised output [N, P] in mixed's dtype: the short convolution, the gates, the recurrent step
    with l2-normalised q and k, and the gated RMSNorm, in the layer's own order and dtypes.
    """
    n, heads = mixed.shape[0], b.shape[-1]
    d = f.shape[-1] // heads
    full = shift_conv_window(conv_pool, state_indices, mixed[:, :, None])
    weight = torch.cat(conv_weights, dim=0)[:, 0]
    conv = F.silu((full.to(weight.dtype) * weight).sum(-1)).to(mixed.dtype)
    q, k, v = (part.reshape(n, 1, heads, d) for part in conv.chunk(3, dim=-1))
    g, beta = kda_gates(f, b, dt_bias, a_log, (n, 1, heads, d))
    o = recurrent_kda_reference(q, k, v, g, beta, state_pool, state_indices, use_qk_l2norm=True)
    return gated_rms_norm_reference(o, gate.view(n, 1, heads, d), norm_weight, eps).reshape(n, heads * d)
