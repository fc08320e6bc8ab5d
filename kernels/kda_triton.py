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
def _load_block(q, k, v, g, beta, tok, valid, gref, scale, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                BK: tl.constexpr, BV: tl.constexpr, L2NORM: tl.constexpr, i_h):
    """One 16-token block: l2-normed, scaled q and k, v, beta, and G = gref + in-block cumsum of g."""
    ck = tl.arange(0, BK)
    cv = tl.arange(0, BV)
    mask_k = valid[:, None] & (ck[None, :] < K)
    offs_k = (tok[:, None] * H + i_h) * K + ck[None, :]
    b_q = tl.load(q + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    b_k = tl.load(k + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    b_g = tl.load(g + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    b_v = tl.load(v + (tok[:, None] * H + i_h) * V + cv[None, :], mask=valid[:, None] & (cv[None, :] < V),
                  other=0.0).to(tl.float32)
    b_beta = tl.load(beta + tok * H + i_h, mask=valid, other=0.0).to(tl.float32)
    if L2NORM:
        b_q = b_q / tl.sqrt(tl.sum(b_q * b_q, axis=1) + 1e-6)[:, None]
        b_k = b_k / tl.sqrt(tl.sum(b_k * b_k, axis=1) + 1e-6)[:, None]
    return b_q * scale, b_k, b_v, b_beta, gref[None, :] + tl.cumsum(b_g, axis=0)


@triton.jit
def _diag_products(b_q, b_k, b_G, gref, BC: tl.constexpr, MAX_DECAY: tl.constexpr, DOT_PREC: tl.constexpr):
    """A_qk (lower incl. diagonal) and A_kk (strictly lower) inside one block.

    exp(G_i - G_j) = exp(G_i - gref) exp(gref - G_j): exact while the block decays by at most MAX_DECAY
    (the second factor is <= e^MAX_DECAY); faster-decaying blocks take the exact row-by-row form.
    """
    rows = tl.arange(0, BC)
    if tl.max(tl.max(gref[None, :] - b_G, axis=1), axis=0) <= MAX_DECAY:
        k_down = tl.trans(b_k * tl.exp(gref[None, :] - b_G))
        up = tl.exp(b_G - gref[None, :])
        a_qk = tl.dot(b_q * up, k_down, input_precision=DOT_PREC)
        a_kk = tl.dot(b_k * up, k_down, input_precision=DOT_PREC)
    else:
        a_qk = tl.zeros([BC, BC], dtype=tl.float32)
        a_kk = tl.zeros([BC, BC], dtype=tl.float32)
        for r in range(BC):
            row = rows[:, None] == r
            q_r = tl.sum(tl.where(row, b_q, 0.0), axis=0)
            k_r = tl.sum(tl.where(row, b_k, 0.0), axis=0)
            G_r = tl.sum(tl.where(row, b_G, 0.0), axis=0)
            decayed = b_k * tl.exp(tl.where(rows[:, None] <= r, G_r[None, :] - b_G, float("-inf")))
            a_qk = tl.where(row, tl.sum(decayed * q_r[None, :], axis=1)[None, :], a_qk)
            a_kk = tl.where(row, tl.sum(decayed * k_r[None, :], axis=1)[None, :], a_kk)
    return (tl.where(rows[:, None] >= rows[None, :], a_qk, 0.0),
            tl.where(rows[:, None] > rows[None, :], a_kk, 0.0))


@triton.jit
def _off_products(q_up, k_up, gref_i, k_end, gend_j, DOT_PREC: tl.constexpr):
    """A_qk and A_kk between row block i and an earlier column block j, through the end of block j.

    exp(G_r - G_c) = [exp(G_r - gref_i)] exp(gref_i - gend_j) [exp(gend_j - G_c)]: every factor <= 1.
    """
    bridge = tl.exp(gref_i - gend_j)[None, :]
    return (tl.dot(q_up * bridge, k_end, input_precision=DOT_PREC),
            tl.dot(k_up * bridge, k_end, input_precision=DOT_PREC))


@triton.jit
def _invert_unit_lower(a, BC: tl.constexpr, DOT_PREC: tl.constexpr):
    """(I + a)^-1 for strictly lower a (a^16 = 0): (I - a)(I + a^2)(I + a^4)(I + a^8)."""
    rows = tl.arange(0, BC)
    power = -a
    inv = tl.where(rows[:, None] == rows[None, :], 1.0, 0.0) + power
    for _ in tl.static_range(3):
        power = tl.dot(power, power, input_precision=DOT_PREC)
        inv = inv + tl.dot(inv, power, input_precision=DOT_PREC)
    return inv


@triton.jit
def _store_block(w, u, qd, kd, aqk, tok, valid, i_h, b_w, b_u, b_q, b_k, b_G, G_last,
                 a0, a1, a2, a3, N_COLS: tl.constexpr,
                 H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                 BC: tl.constexpr, C: tl.constexpr):
    ck = tl.arange(0, BK)
    cv = tl.arange(0, BV)
    cc = tl.arange(0, BC)
    ty = w.dtype.element_ty
    mask_k = valid[:, None] & (ck[None, :] < K)
    offs_k = (tok[:, None] * H + i_h) * K + ck[None, :]
    tl.store(w + offs_k, b_w.to(ty), mask=mask_k)
    tl.store(qd + offs_k, (b_q * tl.exp(b_G)).to(ty), mask=mask_k)
    tl.store(kd + offs_k, (b_k * tl.exp(G_last[None, :] - b_G)).to(ty), mask=mask_k)
    tl.store(u + (tok[:, None] * H + i_h) * V + cv[None, :], b_u.to(ty), mask=valid[:, None] & (cv[None, :] < V))
    p_a = aqk + (tok[:, None] * H + i_h) * C + cc[None, :]
    tl.store(p_a, a0.to(ty), mask=valid[:, None])
    if N_COLS > 1:
        tl.store(p_a + BC, a1.to(ty), mask=valid[:, None])
    if N_COLS > 2:
        tl.store(p_a + 2 * BC, a2.to(ty), mask=valid[:, None])
    if N_COLS > 3:
        tl.store(p_a + 3 * BC, a3.to(ty), mask=valid[:, None])


@triton.jit
def _kda_intra_kernel(q, k, v, g, beta, chunk_starts, chunk_ends, w, u, qd, kd, aqk, glast, scale,
                      H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                      C: tl.constexpr, BC: tl.constexpr, L2NORM: tl.constexpr, DOT_PREC: tl.constexpr,
                      MAX_DECAY: tl.constexpr):
    """The chunk as four 16-token blocks, streamed in order: block i needs only blocks j < i."""
    tl.static_assert(C == 4 * BC)
    i_c = tl.program_id(0)
    i_h = tl.program_id(1)
    start = tl.load(chunk_starts + i_c).to(tl.int64)
    end = tl.load(chunk_ends + i_c).to(tl.int64)
    cc = tl.arange(0, BC)
    ck = tl.arange(0, BK)

    # G_last first: kd = k exp(G_last - G) is written block by block.
    G_last = tl.zeros([BK], dtype=tl.float32)
    for i_b in tl.static_range(4):
        tok = start + i_b * BC + cc
        m = (tok < end)[:, None] & (ck[None, :] < K)
        G_last += tl.sum(tl.load(g + (tok[:, None] * H + i_h) * K + ck[None, :], mask=m, other=0.0).to(tl.float32),
                         axis=0)
    tl.store(glast + (i_c * H + i_h) * BK + ck, tl.exp(G_last))
    zero = tl.zeros([BC, BC], dtype=tl.float32)

    # block 0
    tok0 = start + cc
    ok0 = tok0 < end
    gref0 = tl.zeros([BK], dtype=tl.float32)
    q0, k0, v0, b0, G0 = _load_block(q, k, v, g, beta, tok0, ok0, gref0, scale, H, K, V, BK, BV, L2NORM, i_h)
    gend0 = tl.sum(tl.where(cc[:, None] == BC - 1, G0, 0.0), axis=0)
    aq00, ak00 = _diag_products(q0, k0, G0, gref0, BC, MAX_DECAY, DOT_PREC)
    t00 = _invert_unit_lower(ak00 * b0[:, None], BC, DOT_PREC)
    kb0 = k0 * tl.exp(G0) * b0[:, None]
    vb0 = v0 * b0[:, None]
    _store_block(w, u, qd, kd, aqk, tok0, ok0, i_h,
                 tl.dot(t00, kb0, input_precision=DOT_PREC), tl.dot(t00, vb0, input_precision=DOT_PREC),
                 q0, k0, G0, G_last, aq00, zero, zero, zero, 1, H, K, V, BK, BV, BC, C)
    kend0 = tl.trans(k0 * tl.exp(gend0[None, :] - G0))

    # block 1
    tok1 = start + BC + cc
    ok1 = tok1 < end
    q1, k1, v1, b1, G1 = _load_block(q, k, v, g, beta, tok1, ok1, gend0, scale, H, K, V, BK, BV, L2NORM, i_h)
    gend1 = tl.sum(tl.where(cc[:, None] == BC - 1, G1, 0.0), axis=0)
    up1 = tl.exp(G1 - gend0[None, :])
    aq11, ak11 = _diag_products(q1, k1, G1, gend0, BC, MAX_DECAY, DOT_PREC)
    aq10, ak10 = _off_products(q1 * up1, k1 * up1, gend0, kend0, gend0, DOT_PREC)
    t11 = _invert_unit_lower(ak11 * b1[:, None], BC, DOT_PREC)
    t10 = -tl.dot(t11, tl.dot(ak10 * b1[:, None], t00, input_precision=DOT_PREC), input_precision=DOT_PREC)
    kb1 = k1 * tl.exp(G1) * b1[:, None]
    vb1 = v1 * b1[:, None]
    w1 = tl.dot(t10, kb0, input_precision=DOT_PREC) + tl.dot(t11, kb1, input_precision=DOT_PREC)
    u1 = tl.dot(t10, vb0, input_precision=DOT_PREC) + tl.dot(t11, vb1, input_precision=DOT_PREC)
    _store_block(w, u, qd, kd, aqk, tok1, ok1, i_h, w1, u1, q1, k1, G1, G_last, aq10, aq11, zero, zero, 2,
                 H, K, V, BK, BV, BC, C)
    kend1 = tl.trans(k1 * tl.exp(gend1[None, :] - G1))

    # block 2
    tok2 = start + 2 * BC + cc
    ok2 = tok2 < end
    q2, k2, v2, b2, G2 = _load_block(q, k, v, g, beta, tok2, ok2, gend1, scale, H, K, V, BK, BV, L2NORM, i_h)
    gend2 = tl.sum(tl.where(cc[:, None] == BC - 1, G2, 0.0), axis=0)
    up2 = tl.exp(G2 - gend1[None, :])
    aq22, ak22 = _diag_products(q2, k2, G2, gend1, BC, MAX_DECAY, DOT_PREC)
    aq20, ak20 = _off_products(q2 * up2, k2 * up2, gend1, kend0, gend0, DOT_PREC)
    aq21, ak21 = _off_products(q2 * up2, k2 * up2, gend1, kend1, gend1, DOT_PREC)
    t22 = _invert_unit_lower(ak22 * b2[:, None], BC, DOT_PREC)
    l20 = ak20 * b2[:, None]
    l21 = ak21 * b2[:, None]
    t21 = -tl.dot(t22, tl.dot(l21, t11, input_precision=DOT_PREC), input_precision=DOT_PREC)
    t20 = -tl.dot(t22, tl.dot(l20, t00, input_precision=DOT_PREC) + tl.dot(l21, t10, input_precision=DOT_PREC),
                  input_precision=DOT_PREC)
    kb2 = k2 * tl.exp(G2) * b2[:, None]
    vb2 = v2 * b2[:, None]
    w2 = (tl.dot(t20, kb0, input_precision=DOT_PREC) + tl.dot(t21, kb1, input_precision=DOT_PREC)
          + tl.dot(t22, kb2, input_precision=DOT_PREC))
    u2 = (tl.dot(t20, vb0, input_precision=DOT_PREC) + tl.dot(t21, vb1, input_precision=DOT_PREC)
          + tl.dot(t22, vb2, input_precision=DOT_PREC))
    _store_block(w, u, qd, kd, aqk, tok2, ok2, i_h, w2, u2, q2, k2, G2, G_last, aq20, aq21, aq22, zero, 3,
                 H, K, V, BK, BV, BC, C)
    kend2 = tl.trans(k2 * tl.exp(gend2[None, :] - G2))

    # block 3
    tok3 = start + 3 * BC + cc
    ok3 = tok3 < end
    q3, k3, v3, b3, G3 = _load_block(q, k, v, g, beta, tok3, ok3, gend2, scale, H, K, V, BK, BV, L2NORM, i_h)
    up3 = tl.exp(G3 - gend2[None, :])
    aq33, ak33 = _diag_products(q3, k3, G3, gend2, BC, MAX_DECAY, DOT_PREC)
    aq30, ak30 = _off_products(q3 * up3, k3 * up3, gend2, kend0, gend0, DOT_PREC)
    aq31, ak31 = _off_products(q3 * up3, k3 * up3, gend2, kend1, gend1, DOT_PREC)
    aq32, ak32 = _off_products(q3 * up3, k3 * up3, gend2, kend2, gend2, DOT_PREC)
    t33 = _invert_unit_lower(ak33 * b3[:, None], BC, DOT_PREC)
    l30 = ak30 * b3[:, None]
    l31 = ak31 * b3[:, None]
    l32 = ak32 * b3[:, None]
    t32 = -tl.dot(t33, tl.dot(l32, t22, input_precision=DOT_PREC), input_precision=DOT_PREC)
    t31 = -tl.dot(t33, tl.dot(l31, t11, input_precision=DOT_PREC) + tl.dot(l32, t21, input_precision=DOT_PREC),
                  input_precision=DOT_PREC)
    t30 = -tl.dot(t33, tl.dot(l30, t00, input_precision=DOT_PREC) + tl.dot(l31, t10, input_precision=DOT_PREC)
                  + tl.dot(l32, t20, input_precision=DOT_PREC), input_precision=DOT_PREC)
    kb3 = k3 * tl.exp(G3) * b3[:, None]
    vb3 = v3 * b3[:, None]
    w3 = (tl.dot(t30, kb0, input_precision=DOT_PREC) + tl.dot(t31, kb1, input_precision=DOT_PREC)
          + tl.dot(t32, kb2, input_precision=DOT_PREC) + tl.dot(t33, kb3, input_precision=DOT_PREC))
    u3 = (tl.dot(t30, vb0, input_precision=DOT_PREC) + tl.dot(t31, vb1, input_precision=DOT_PREC)
          + tl.dot(t32, vb2, input_precision=DOT_PREC) + tl.dot(t33, vb3, input_precision=DOT_PREC))
    _store_block(w, u, qd, kd, aqk, tok3, ok3, i_h, w3, u3, q3, k3, G3, G_last, aq30, aq31, aq32, aq33, 4,
                 H, K, V, BK, BV, BC, C)


@triton.jit
def _kda_inter_kernel(w, u, qd, kd, aqk, glast, cu_seqlens, chunk_first, h0, ht, o,
                      H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                      C: tl.constexpr, BC: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
                      DOT_PREC: tl.constexpr):
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
        causal = valid[:, None] & (rows[None, :] // BC <= rows[:, None] // BC)  # blocks above are never written
        b_a = tl.load(aqk + (tok[:, None] * H + i_h) * C + rows[None, :], mask=causal, other=0.0)
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
                     cu_seqlens=None, use_qk_l2norm=False, block_v=None, intra_warps=4):
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
            MAX_DECAY=MAX_BLOCK_DECAY, num_warps=intra_warps)
    o = _empty(b, t, h, vd, device=q.device, dtype=ty)
    final = _empty(n, h, kd, vd, device=q.device, dtype=torch.float32) if output_final_state else None
    h0 = initial_state.to(torch.float32).contiguous() if initial_state is not None else None
    _kda_inter_kernel[(triton.cdiv(vd, block_v), n * h)](
        w, u, qd, kdec, aqk, glast, cu, first, h0, final, o,
        H=h, K=kd, V=vd, BK=bk, BV=block_v, C=CHUNK, BC=SUB, HAS_H0=h0 is not None, STORE_HT=final is not None,
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
