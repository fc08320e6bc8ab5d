"""Triton kernels for Kimi Delta Attention: chunked prefill and the pooled one-token decode step.

Chunked prefill is two launches:
  1. `_kda_intra_kernel`, one program per (64-token chunk, head), all chunks in parallel: l2norm, the
     gate's in-chunk cumsum G, the decay-weighted products A_qk and A_kk, the UT transform
     T = (I + A_kk)^-1 and from it w = T (beta k e^G), u = T (beta v); plus q e^G, k e^(G_last - G).
  2. `_kda_inter_kernel`, one program per (sequence, head, V block), walks its chunks in order and
     carries the fp32 state S [K, BV]:  v' = u - w S;  o = (q e^G) S + A_qk v';
     S <- e^(G_last) S + (k e^(G_last - G))^T v'. The output is written here, so the per-chunk states
     never leave the chip.
The decay products need exp(G_i - G_j) per key channel. They are factored through a reference point
r per 16-row block, exp(G_i - G_r) exp(G_r - G_j), which is exact while the in-block decay stays under
MAX_BLOCK_DECAY; chunks whose gates decay faster take an exact (slower) per-channel path instead.
Same maths and layouts as kernels/kda_reference.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK = 64
SUB = 16
MAX_BLOCK_DECAY = 80.0  # e^80 < fp32 max / 1e3: the factored products cannot overflow below this


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact fp32 products; bf16/fp16 inputs use tensor cores throughout."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _empty(*shape: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Every output buffer comes from here, so tests can poison them (fill with NaN) before a run."""
    return torch.empty(*shape, device=device, dtype=dtype)


@triton.jit
def _kda_intra_kernel(q, k, v, g, beta, chunk_starts, chunk_ends, w, u, qd, kd, aqk, glast, scale,
                      H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                      C: tl.constexpr, BC: tl.constexpr, L2NORM: tl.constexpr, DOT_PREC: tl.constexpr,
                      MAX_DECAY: tl.constexpr, NEUMANN_STEPS: tl.constexpr):
    i_c = tl.program_id(0)
    i_h = tl.program_id(1)
    start = tl.load(chunk_starts + i_c).to(tl.int64)
    end = tl.load(chunk_ends + i_c).to(tl.int64)
    rows = tl.arange(0, C)
    tok = start + rows
    valid = tok < end
    ck = tl.arange(0, BK)
    cv = tl.arange(0, BV)
    mask_k = valid[:, None] & (ck[None, :] < K)
    mask_v = valid[:, None] & (cv[None, :] < V)
    offs_k = (tok[:, None] * H + i_h) * K + ck[None, :]
    offs_v = (tok[:, None] * H + i_h) * V + cv[None, :]
    b_q = tl.load(q + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    b_k = tl.load(k + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    b_g = tl.load(g + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    b_v = tl.load(v + offs_v, mask=mask_v, other=0.0).to(tl.float32)
    b_beta = tl.load(beta + tok * H + i_h, mask=valid, other=0.0).to(tl.float32)
    if L2NORM:
        inv_q = 1.0 / tl.sqrt(tl.sum(b_q * b_q, axis=1) + 1e-6)
        inv_k = 1.0 / tl.sqrt(tl.sum(b_k * b_k, axis=1) + 1e-6)
    else:
        inv_q = tl.full([C], 1.0, tl.float32)
        inv_k = tl.full([C], 1.0, tl.float32)
    inv_q = inv_q * scale
    b_q = b_q * inv_q[:, None]
    b_k = b_k * inv_k[:, None]
    b_G = tl.cumsum(b_g, axis=0)

    NB: tl.constexpr = C // BC
    sub = tl.arange(0, BC)
    blk = tl.arange(0, NB)
    G3 = tl.reshape(b_G, (NB, BC, BK))
    # G just before each block: the reference point of that block's rows.
    G_ref = tl.sum(tl.where(sub[None, :, None] == 0, G3 - tl.reshape(b_g, (NB, BC, BK)), 0.0), axis=1)
    G_end = tl.sum(tl.where(sub[None, :, None] == BC - 1, G3, 0.0), axis=1)
    worst_decay = tl.max(tl.max(G_ref - G_end, axis=1), axis=0)

    lower_incl = rows[:, None] >= rows[None, :]
    if worst_decay <= MAX_DECAY:
        row_scale = tl.exp(G3 - G_ref[:, None, :])
        seen = rows[None, :, None] < (blk[:, None, None] + 1) * BC
        col_scale = tl.exp(tl.where(seen, G_ref[:, None, :] - b_G[None, :, :], float("-inf")))
        k_cols = b_k[None, :, :] * col_scale
        a_qk = tl.reshape(tl.dot(tl.reshape(b_q, (NB, BC, BK)) * row_scale, tl.trans(k_cols, (0, 2, 1)),
                                 input_precision=DOT_PREC), (C, C))
        a_kk = tl.reshape(tl.dot(tl.reshape(b_k, (NB, BC, BK)) * row_scale, tl.trans(k_cols, (0, 2, 1)),
                                 input_precision=DOT_PREC), (C, C))
    else:
        a_qk = tl.zeros([C, C], dtype=tl.float32)
        a_kk = tl.zeros([C, C], dtype=tl.float32)
        base = tok * H + i_h
        for i_k in range(K):
            q_col = tl.load(q + base * K + i_k, mask=valid, other=0.0).to(tl.float32) * inv_q
            k_col = tl.load(k + base * K + i_k, mask=valid, other=0.0).to(tl.float32) * inv_k
            G_col = tl.cumsum(tl.load(g + base * K + i_k, mask=valid, other=0.0).to(tl.float32), axis=0)
            decay = tl.exp(tl.where(lower_incl, G_col[:, None] - G_col[None, :], float("-inf")))
            a_qk += q_col[:, None] * k_col[None, :] * decay
            a_kk += k_col[:, None] * k_col[None, :] * decay
    a_qk = tl.where(lower_incl, a_qk, 0.0)
    a_kk = tl.where(rows[:, None] > rows[None, :], a_kk * b_beta[:, None], 0.0)

    # (I + A)^-1 for strictly lower A (A^C = 0): (I - A)(I + A^2)(I + A^4)...(I + A^(C/2)).
    eye = tl.where(rows[:, None] == rows[None, :], 1.0, 0.0)
    power = -a_kk
    t_inv = eye + power
    for _ in tl.static_range(NEUMANN_STEPS):
        power = tl.dot(power, power, input_precision=DOT_PREC)
        t_inv = t_inv + tl.dot(t_inv, power, input_precision=DOT_PREC)

    b_decay = tl.exp(b_G)
    G_last = tl.sum(tl.where(rows[:, None] == C - 1, b_G, 0.0), axis=0)
    b_w = tl.dot(t_inv, b_k * b_decay * b_beta[:, None], input_precision=DOT_PREC)
    b_u = tl.dot(t_inv, b_v * b_beta[:, None], input_precision=DOT_PREC)
    out_ty = w.dtype.element_ty
    tl.store(w + offs_k, b_w.to(out_ty), mask=mask_k)
    tl.store(qd + offs_k, (b_q * b_decay).to(out_ty), mask=mask_k)
    tl.store(kd + offs_k, (b_k * tl.exp(G_last[None, :] - b_G)).to(out_ty), mask=mask_k)
    tl.store(u + offs_v, b_u.to(out_ty), mask=mask_v)
    tl.store(aqk + (tok[:, None] * H + i_h) * C + rows[None, :], a_qk.to(out_ty), mask=valid[:, None])
    tl.store(glast + (i_c * H + i_h) * BK + ck, tl.exp(G_last))


@triton.jit
def _kda_inter_kernel(w, u, qd, kd, aqk, glast, cu_seqlens, chunk_first, h0, ht, o,
                      H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                      C: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, DOT_PREC: tl.constexpr):
    i_v = tl.program_id(0)
    i_nh = tl.program_id(1)
    i_n = i_nh // H
    i_h = i_nh % H
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    c0 = tl.load(chunk_first + i_n).to(tl.int64)
    rows = tl.arange(0, C)
    ck = tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    state_offs = ((i_n * H + i_h) * K + ck[:, None]) * V + cv[None, :]
    state_mask = (ck[:, None] < K) & (cv[None, :] < V)
    if HAS_H0:
        state = tl.load(h0 + state_offs, mask=state_mask, other=0.0).to(tl.float32)
    else:
        state = tl.zeros([BK, BV], dtype=tl.float32)
    ty = w.dtype.element_ty
    n_chunks = tl.cdiv(eos - bos, C)
    for i_c in range(n_chunks):
        tok = bos + i_c * C + rows
        valid = tok < eos
        mask_k = valid[:, None] & (ck[None, :] < K)
        mask_v = valid[:, None] & (cv[None, :] < V)
        offs_k = (tok[:, None] * H + i_h) * K + ck[None, :]
        offs_v = (tok[:, None] * H + i_h) * V + cv[None, :]
        b_w = tl.load(w + offs_k, mask=mask_k, other=0.0)
        b_qd = tl.load(qd + offs_k, mask=mask_k, other=0.0)
        b_kd = tl.load(kd + offs_k, mask=mask_k, other=0.0)
        b_u = tl.load(u + offs_v, mask=mask_v, other=0.0).to(tl.float32)
        b_a = tl.load(aqk + (tok[:, None] * H + i_h) * C + rows[None, :], mask=valid[:, None], other=0.0)
        b_gl = tl.load(glast + ((c0 + i_c) * H + i_h) * BK + ck)
        s_in = state.to(ty)
        v_new = b_u - tl.dot(b_w, s_in, input_precision=DOT_PREC)
        v_in = v_new.to(ty)
        b_o = tl.dot(b_qd, s_in, input_precision=DOT_PREC) + tl.dot(b_a, v_in, input_precision=DOT_PREC)
        tl.store(o + offs_v, b_o.to(o.dtype.element_ty), mask=mask_v)
        state = state * b_gl[:, None] + tl.dot(tl.trans(b_kd), v_in, input_precision=DOT_PREC)
    if STORE_HT:
        tl.store(ht + state_offs, state, mask=state_mask)


@triton.jit
def _kda_decode_kernel(q, k, v, g, beta, pool, slots, o, scale,
                       H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                       L2NORM: tl.constexpr):
    i_v = tl.program_id(0)
    i_nh = tl.program_id(1)
    i_n = i_nh // H
    i_h = i_nh % H
    slot = tl.load(slots + i_n).to(tl.int64)
    ck = tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    mk = ck < K
    mv = cv < V
    b_q = tl.load(q + (i_n * H + i_h) * K + ck, mask=mk, other=0.0).to(tl.float32)
    b_k = tl.load(k + (i_n * H + i_h) * K + ck, mask=mk, other=0.0).to(tl.float32)
    b_g = tl.load(g + (i_n * H + i_h) * K + ck, mask=mk, other=0.0).to(tl.float32)
    b_v = tl.load(v + (i_n * H + i_h) * V + cv, mask=mv, other=0.0).to(tl.float32)
    b_beta = tl.load(beta + i_n * H + i_h).to(tl.float32)
    if L2NORM:
        b_q = b_q / tl.sqrt(tl.sum(b_q * b_q) + 1e-6)
        b_k = b_k / tl.sqrt(tl.sum(b_k * b_k) + 1e-6)
    b_q = b_q * scale
    offs = ((slot * H + i_h) * K + ck[:, None]) * V + cv[None, :]
    smask = mk[:, None] & mv[None, :]
    state = tl.load(pool + offs, mask=smask, other=0.0) * tl.exp(b_g)[:, None]
    b_u = b_beta * (b_v - tl.sum(state * b_k[:, None], axis=0))
    state += b_k[:, None] * b_u[None, :]
    tl.store(pool + offs, state, mask=smask)
    tl.store(o + (i_n * H + i_h) * V + cv, tl.sum(state * b_q[:, None], axis=0).to(o.dtype.element_ty), mask=mv)


def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _check_kda_inputs(q, k, v, g, beta):
    if q.dim() != 4 or q.shape != k.shape or q.shape != g.shape:
        raise ValueError(f"q, k, g must be [B, T, H, K] alike, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(g.shape)}")
    if v.shape[:3] != q.shape[:3] or beta.shape != q.shape[:3]:
        raise ValueError(f"v {tuple(v.shape)} and beta {tuple(beta.shape)} do not match q {tuple(q.shape)}")


def _chunk_table(cu_seqlens: torch.Tensor, total_tokens: int):
    """Per-chunk [start, end) token ranges, and each sequence's first chunk index."""
    lens = cu_seqlens[1:] - cu_seqlens[:-1]
    n_chunks = (lens + CHUNK - 1) // CHUNK
    first = torch.cumsum(n_chunks, 0) - n_chunks
    seq = torch.repeat_interleave(torch.arange(len(lens), device=lens.device), n_chunks)
    index = torch.arange(len(seq), device=lens.device) - first[seq]
    starts = cu_seqlens[seq] + index * CHUNK
    ends = torch.minimum(starts + CHUNK, cu_seqlens[seq + 1])
    return starts.to(torch.int32), ends.to(torch.int32), first.to(torch.int32)


def chunk_kda_triton(q, k, v, g, beta, *, scale=None, initial_state=None, output_final_state=False,
                     cu_seqlens=None, use_qk_l2norm=False, block_v=None):
    """Same contract as kernels.kda_reference.chunk_kda_reference, on CUDA (or the Triton interpreter)."""
    _check_kda_inputs(q, k, v, g, beta)
    b, t, h, kd = q.shape
    vd = v.shape[-1]
    if cu_seqlens is None:
        cu = torch.arange(0, (b + 1) * t, t, device=q.device, dtype=torch.int32)
    else:
        if b != 1:
            raise ValueError(f"cu_seqlens needs batch size 1, got {b}")
        cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
        if int(cu[0]) != 0 or int(cu[-1]) != t or bool((cu[1:] < cu[:-1]).any()):
            raise ValueError(f"cu_seqlens must rise from 0 to T={t}, got {cu.tolist()}")
    n = len(cu) - 1
    if initial_state is not None and initial_state.shape != (n, h, kd, vd):
        raise ValueError(f"initial_state must be {(n, h, kd, vd)}, got {tuple(initial_state.shape)}")
    q, k, v, g, beta = (x.contiguous() for x in (q, k, v, g, beta))
    scale = kd ** -0.5 if scale is None else scale
    bk, bv = _block(kd), _block(vd)
    block_v = block_v or min(bv, 32)
    starts, ends, first = _chunk_table(cu, b * t)
    n_chunks = len(starts)
    ty = q.dtype
    w, qd, kdec = (_empty(b * t, h, kd, device=q.device, dtype=ty) for _ in range(3))
    u = _empty(b * t, h, vd, device=q.device, dtype=ty)
    aqk = _empty(b * t, h, CHUNK, device=q.device, dtype=ty)
    glast = _empty(n_chunks, h, bk, device=q.device, dtype=torch.float32)
    prec = _dot_precision(ty)
    if n_chunks:
        _kda_intra_kernel[(n_chunks, h)](
            q, k, v, g, beta, starts, ends, w, u, qd, kdec, aqk, glast, scale,
            H=h, K=kd, V=vd, BK=bk, BV=bv, C=CHUNK, BC=SUB, L2NORM=use_qk_l2norm, DOT_PREC=prec,
            MAX_DECAY=MAX_BLOCK_DECAY, NEUMANN_STEPS=CHUNK.bit_length() - 2, num_warps=8)
    o = _empty(b, t, h, vd, device=q.device, dtype=ty)
    final = _empty(n, h, kd, vd, device=q.device, dtype=torch.float32) if output_final_state else None
    h0 = initial_state.to(torch.float32).contiguous() if initial_state is not None else None
    _kda_inter_kernel[(triton.cdiv(vd, block_v), n * h)](
        w, u, qd, kdec, aqk, glast, cu, first, h0, final, o,
        H=h, K=kd, V=vd, BK=bk, BV=block_v, C=CHUNK, HAS_H0=h0 is not None, STORE_HT=final is not None,
        DOT_PREC=prec, num_warps=4, num_stages=2)
    return o, final


def recurrent_kda_triton(q, k, v, g, beta, state_pool, state_indices, *, scale=None, use_qk_l2norm=False,
                         block_v=None):
    """Same contract as kernels.kda_reference.recurrent_kda_reference: in-place fp32 pool rows."""
    _check_kda_inputs(q, k, v, g, beta)
    n, t, h, kd = q.shape
    vd = v.shape[-1]
    if t != 1:
        raise ValueError(f"recurrent_kda takes one token per sequence, got T={t}")
    if state_pool.dtype != torch.float32 or state_pool.shape[1:] != (h, kd, vd) or not state_pool.is_contiguous():
        raise ValueError(f"state_pool must be contiguous fp32 [slots, {h}, {kd}, {vd}], got "
                         f"{state_pool.dtype} {tuple(state_pool.shape)}")
    if state_indices.shape != (n,):
        raise ValueError(f"state_indices must be [{n}], got {tuple(state_indices.shape)}")
    q, k, v, g, beta = (x.contiguous() for x in (q, k, v, g, beta))
    scale = kd ** -0.5 if scale is None else scale
    bv = _block(vd)
    block_v = block_v or min(bv, 32)
    o = _empty(n, 1, h, vd, device=q.device, dtype=q.dtype)
    _kda_decode_kernel[(triton.cdiv(vd, block_v), n * h)](
        q, k, v, g, beta, state_pool, state_indices.contiguous(), o, scale,
        H=h, K=kd, V=vd, BK=_block(kd), BV=block_v, L2NORM=use_qk_l2norm, num_warps=4)
    return o
