"""Triton kernels for Kimi Delta Attention: chunked prefill and the pooled one-token decode step.

Chunked prefill is four launches:
  0. `_kda_block_local_kernel`, one program per (64-token chunk, head, 16-token block): l2norm, the gate's
     cumsum inside the block, the block's rows decayed from its start (q, beta k) and to its end (k), and the
     gate summed over the block; no tile products (only a block decaying too fast writes its exact diagonal
     tiles here), which keeps this launch light on registers.
  1. `_kda_blockrow_kernel`, one program per (chunk, head, block row), all in parallel: the tiles of A_qk
     against the block itself and earlier blocks, and the rows decayed from the chunk's start (q e^G) and to
     its end (k e^(G_last - G)) for the inter-chunk pass.
  2. `_kda_solve_kernel`, one program per (chunk, head): the tiles of beta A_kk (formed here, so they never
     leave the chip), the UT transform T = (I + beta A_kk)^-1 by 16x16 blocks, then w = T (beta k e^G) and
     u = T (beta v).
  3. `_kda_inter_kernel`, one program per (sequence, head, V block), walks its chunks in order and
     carries the fp32 state S [K, BV]:  v' = u - w S;  o = (q e^G) S + A_qk v';
     S <- e^(G_last) S + (k e^(G_last - G))^T v'. The output is written here, so the per-chunk states
     never leave the chip.
The decay products need exp(G_r - G_c) per key channel without overflow. Against earlier blocks they
factor through the block boundaries between r and c, every factor <= 1. Inside a block they factor through
the block's start and end with e^(-block sum) between, exact while the block decays by at most
MAX_BLOCK_DECAY; faster-decaying blocks (rare) take an exact row-by-row form. Same maths and layouts as
kernels/kda_reference.py.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

CHUNK = 64
SUB = 16
MAX_HEAD_DIM = 128
"""The largest K and V the kernels take: at 256 the chunked pass's tiles need more shared memory than an SM has."""
MAX_BLOCK_DECAY = 80.0  # e^80 < fp32 max / 1e3: the factored products cannot overflow below this


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact fp32 products; bf16/fp16 inputs use tensor cores throughout."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _empty(*shape: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Every output buffer comes from here, so tests can poison them (fill with NaN) before a run."""
    return torch.empty(*shape, device=device, dtype=dtype)


@triton.jit
def _slow_block(s, MAX_DECAY: tl.constexpr):
    """Whether a block whose gate sums to s [BK] decays by more than MAX_DECAY in some channel: then its
    diagonal tiles take the exact row-by-row form (rare). Every kernel decides from the same stored sums."""
    return tl.max(-s, axis=0) > MAX_DECAY


@triton.jit
def _diag_exact(b_q, b_k, b_G, BC: tl.constexpr):
    """A_qk (lower incl. diagonal) and A_kk (strictly lower) inside one 16-token block, row by row with
    exp(G_r - G_c) formed directly: for blocks that decay too fast for the factored form."""
    rows = tl.arange(0, BC)
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
def _chunk_program(chunk_starts, chunk_ends, H: tl.constexpr, NB: tl.constexpr):
    """This program's chunk, head and 16-token block of a flat grid over (chunk, block, head), head fastest, and
    the chunk's token range. Programs that run side by side then read adjacent memory (a token's heads are
    contiguous) and the blocks of one chunk and head run close together, so the rows they share stay in L2."""
    pid = tl.program_id(0)
    i_h = pid % H
    i_b = (pid // H) % NB
    i_c = pid // (H * NB)
    start = tl.load(chunk_starts + i_c).to(tl.int64)
    end = tl.load(chunk_ends + i_c).to(tl.int64)
    return i_c, i_h, i_b, start, end


@triton.jit
def _kda_block_local_kernel(q, k, g, beta, chunk_starts, chunk_ends, qup, kbup, kend, bsum, aqk, akk_diag, scale,
                            H: tl.constexpr, K: tl.constexpr, BK: tl.constexpr, C: tl.constexpr, BC: tl.constexpr,
                            L2NORM: tl.constexpr, MAX_DECAY: tl.constexpr):
    """What one 16-token block gives alone: its rows decayed from the block's start, q e^(G - G_start) and
    beta k e^(G - G_start) (as a row block), and to the block's end, k e^(G_end - G) (as a column block), each
    factor <= 1; the gate summed over the block; and, only for a block decaying faster than MAX_DECAY, its
    diagonal tiles of A_qk and beta A_kk in the exact form (the block rows and the solve form the others from
    these rows)."""
    i_c, i_h, i_b, start, end = _chunk_program(chunk_starts, chunk_ends, H, C // BC)
    b_q = _rows(q, start, end, i_h, i_b, K, BK, H, BC)
    b_k = _rows(k, start, end, i_h, i_b, K, BK, H, BC)
    b_beta = _rows(beta, start, end, i_h, i_b, 1, 1, H, BC)
    if L2NORM:
        b_q = b_q / tl.sqrt(tl.sum(b_q * b_q, axis=1) + 1e-6)[:, None]
        b_k = b_k / tl.sqrt(tl.sum(b_k * b_k, axis=1) + 1e-6)[:, None]
    b_q = b_q * scale
    b_g = _rows(g, start, end, i_h, i_b, K, BK, H, BC)
    within = tl.cumsum(b_g, axis=0)
    # G_end - G as a sum over the later tokens only: a difference of two prefix sums would cancel (the last
    # token's exponent must be exactly 0, not the rounding error of the block's sum)
    after = tl.cumsum(b_g, axis=0, reverse=True) - b_g
    _store_rows(kend, b_k * tl.exp(after), start, end, i_h, i_b, K, BK, H, BC)
    b_s = tl.sum(b_g, axis=0)
    tl.store(bsum + ((i_c * H + i_h) * (C // BC) + i_b) * BK + tl.arange(0, BK), b_s)
    if _slow_block(b_s, MAX_DECAY):
        d_qk, d_kk = _diag_exact(b_q, b_k, within, BC)
        cc = tl.arange(0, BC)
        tok = start + i_b * BC + cc
        ok = (tok < end)[:, None]
        tl.store(aqk + (tok[:, None] * H + i_h) * C + i_b * BC + cc[None, :], d_qk.to(aqk.dtype.element_ty),
                 mask=ok)
        tl.store(akk_diag + (tok[:, None] * H + i_h) * BC + cc[None, :], d_kk * b_beta, mask=ok)
    up = tl.exp(within)
    _store_rows(qup, b_q * up, start, end, i_h, i_b, K, BK, H, BC)
    _store_rows(kbup, b_k * up * b_beta, start, end, i_h, i_b, K, BK, H, BC)


@triton.jit
def _chunk_gate_sums(bsum, i_c, i_h, H: tl.constexpr, BK: tl.constexpr, C: tl.constexpr, BC: tl.constexpr):
    """The gate summed over each 16-token block of one chunk and head, [C / BC, BK], and the block indices."""
    blocks = tl.arange(0, C // BC)
    return tl.load(bsum + ((i_c * H + i_h) * (C // BC) + blocks[:, None]) * BK + tl.arange(0, BK)[None, :]), blocks


@triton.jit
def _gate_between(sums, blocks, lo, hi):
    """The gate summed over blocks lo < j < hi of a chunk, [BK] (sums is [C / BC, BK])."""
    return tl.sum(tl.where((blocks[:, None] > lo) & (blocks[:, None] < hi), sums, 0.0), axis=0)


@triton.jit
def _kda_blockrow_kernel(qup, kend, bsum, chunk_starts, chunk_ends, aqk, qd, kd, glast,
                         H: tl.constexpr, K: tl.constexpr, BK: tl.constexpr, C: tl.constexpr, BC: tl.constexpr,
                         DOT_PREC: tl.constexpr, MAX_DECAY: tl.constexpr):
    """Block row i (16 tokens) of one chunk: A_qk[i, j] for j <= i (the diagonal tile unless the block decays
    too fast, when the block-local kernel wrote it), and the rows decayed from the chunk's start (q e^G) and to
    its end (k e^(G_last - G)).

    Tile (i, j < i) factors exp(G_r - G_c) = e^(G_r - gref) e^(skip) e^(G_end(j) - G_c): gref is G just before
    block i, skip the gate summed over the blocks between j and i; the first factor is in qup and the last in
    kend. Every factor is <= 1, so nothing overflows however fast the gate decays.
    """
    i_c, i_h, i_b, start, end = _chunk_program(chunk_starts, chunk_ends, H, C // BC)
    sums, blocks = _chunk_gate_sums(bsum, i_c, i_h, H, BK, C, BC)
    cc = tl.arange(0, BC)
    ty = qd.dtype.element_ty
    q_up = _rows(qup, start, end, i_h, i_b, K, BK, H, BC)
    _store_rows(qd, q_up * tl.exp(_gate_between(sums, blocks, -1, i_b))[None, :], start, end, i_h, i_b, K, BK, H, BC)
    k_end = _rows(kend, start, end, i_h, i_b, K, BK, H, BC)
    _store_rows(kd, k_end * tl.exp(_gate_between(sums, blocks, i_b, C // BC))[None, :], start, end, i_h, i_b, K, BK,
                H, BC)
    tok_i = start + i_b * BC + cc
    row_a = (tok_i[:, None] * H + i_h) * C
    # tile (i, j < i) through the blocks between, e^(between) <= 1; the diagonal tile (j = i) through the block's
    # own start and end, e^(-block sum) <= e^MAX_DECAY, unless the block decays faster (then it is already written,
    # and the capped factor only keeps the unused product finite)
    s_i = _gate_between(sums, blocks, i_b - 1, i_b + 1)
    diagonal_exact = _slow_block(s_i, MAX_DECAY)
    for j in range(0, i_b + 1):
        cols = _rows(kend, start, end, i_h, j, K, BK, H, BC)
        across = tl.exp(tl.where(j < i_b, _gate_between(sums, blocks, j, i_b), tl.minimum(-s_i, MAX_DECAY)))[None, :]
        a_qk = tl.dot(q_up * across, tl.trans(cols), input_precision=DOT_PREC)
        a_qk = tl.where((j < i_b) | (cc[:, None] >= cc[None, :]), a_qk, 0.0)
        if (j < i_b).to(tl.int32) >= diagonal_exact.to(tl.int32):  # every earlier block; the diagonal unless exact
            tl.store(aqk + row_a + j * BC + cc[None, :], a_qk.to(ty), mask=(tok_i < end)[:, None])
    if i_b == 0:
        tl.store(glast + (i_c * H + i_h) * BK + tl.arange(0, BK), tl.exp(tl.sum(sums, axis=0)))


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
def _tile(ptr, start, end, i_h, r: tl.constexpr, c: tl.constexpr, H: tl.constexpr, C: tl.constexpr,
          BC: tl.constexpr):
    """Block (r, c) of one chunk's [C, C] matrix stored per token."""
    cc = tl.arange(0, BC)
    tok = start + r * BC + cc
    return tl.load(ptr + (tok[:, None] * H + i_h) * C + c * BC + cc[None, :], mask=(tok < end)[:, None], other=0.0)


@triton.jit
def _rows(ptr, start, end, i_h, r, D: tl.constexpr, BD: tl.constexpr, H: tl.constexpr,
          BC: tl.constexpr):
    """Rows of block r of a per-token [*, H, D] tensor, as fp32 [BC, BD]."""
    cc = tl.arange(0, BC)
    cd = tl.arange(0, BD)
    tok = start + r * BC + cc
    return tl.load(ptr + (tok[:, None] * H + i_h) * D + cd[None, :], mask=(tok < end)[:, None] & (cd[None, :] < D),
                   other=0.0).to(tl.float32)


@triton.jit
def _store_rows(ptr, x, start, end, i_h, r, D: tl.constexpr, BD: tl.constexpr, H: tl.constexpr,
                BC: tl.constexpr):
    cc = tl.arange(0, BC)
    cd = tl.arange(0, BD)
    tok = start + r * BC + cc
    tl.store(ptr + (tok[:, None] * H + i_h) * D + cd[None, :], x.to(ptr.dtype.element_ty),
             mask=(tok < end)[:, None] & (cd[None, :] < D))


@triton.jit
def _store_block_lower_product(dst, t00, t10, t11, t20, t21, t22, t30, t31, t32, t33, x0, x1, x2, x3,
                               start, end, i_h, D: tl.constexpr, BD: tl.constexpr, H: tl.constexpr,
                               BC: tl.constexpr, DOT_PREC: tl.constexpr):
    """Row blocks 0..3 of T x into dst, for T block lower-triangular (4x4 tiles) and x given by its row blocks."""
    _store_rows(dst, tl.dot(t00, x0, input_precision=DOT_PREC), start, end, i_h, 0, D, BD, H, BC)
    _store_rows(dst, tl.dot(t10, x0, input_precision=DOT_PREC) + tl.dot(t11, x1, input_precision=DOT_PREC),
                start, end, i_h, 1, D, BD, H, BC)
    _store_rows(dst, tl.dot(t20, x0, input_precision=DOT_PREC) + tl.dot(t21, x1, input_precision=DOT_PREC)
                + tl.dot(t22, x2, input_precision=DOT_PREC), start, end, i_h, 2, D, BD, H, BC)
    _store_rows(dst, tl.dot(t30, x0, input_precision=DOT_PREC) + tl.dot(t31, x1, input_precision=DOT_PREC)
                + tl.dot(t32, x2, input_precision=DOT_PREC) + tl.dot(t33, x3, input_precision=DOT_PREC),
                start, end, i_h, 3, D, BD, H, BC)


@triton.jit
def _akk_tile(kbup, kend, sums, blocks, start, end, i_h, r: tl.constexpr, c: tl.constexpr, K: tl.constexpr,
              BK: tl.constexpr, H: tl.constexpr, BC: tl.constexpr, DOT_PREC: tl.constexpr):
    """beta A_kk tile (r, c < r), factored through the block boundaries as in _kda_blockrow_kernel."""
    across = tl.exp(_gate_between(sums, blocks, c, r))[None, :]
    return tl.dot(_rows(kbup, start, end, i_h, r, K, BK, H, BC) * across,
                  tl.trans(_rows(kend, start, end, i_h, c, K, BK, H, BC)), input_precision=DOT_PREC)


@triton.jit
def _akk_diag_tile(akk_diag, kbup, kend, sums, blocks, start, end, i_h, b: tl.constexpr, K: tl.constexpr,
                   BK: tl.constexpr, H: tl.constexpr, BC: tl.constexpr, DOT_PREC: tl.constexpr,
                   MAX_DECAY: tl.constexpr):
    """Diagonal tile b of beta A_kk (strictly lower), read where the block-local kernel wrote the exact form for a
    fast-decaying block, else formed from its rows: exp(G_r - G_c) = e^(G_r - G_start) e^(-s) e^(G_end - G_c), s the
    gate summed over the block, the middle factor <= e^MAX_DECAY."""
    s = _gate_between(sums, blocks, b - 1, b + 1)
    if _slow_block(s, MAX_DECAY):
        a = _tile(akk_diag, start, end, i_h, b, 0, H, BC, BC)
    else:
        rows = tl.arange(0, BC)
        a = tl.dot(_rows(kbup, start, end, i_h, b, K, BK, H, BC) * tl.exp(-s)[None, :],
                   tl.trans(_rows(kend, start, end, i_h, b, K, BK, H, BC)), input_precision=DOT_PREC)
        a = tl.where(rows[:, None] > rows[None, :], a, 0.0)
    return a


@triton.jit
def _kb_rows(kbup, sums, blocks, start, end, i_h, r: tl.constexpr, K: tl.constexpr, BK: tl.constexpr,
             H: tl.constexpr, BC: tl.constexpr):
    """beta k e^G for block r: its rows decayed from the block's start, times the decay of the blocks before."""
    return _rows(kbup, start, end, i_h, r, K, BK, H, BC) * tl.exp(_gate_between(sums, blocks, -1, r))[None, :]


@triton.jit
def _kda_solve_kernel(akk_diag, kbup, kend, bsum, v, beta, chunk_starts, chunk_ends, w, u,
                      H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                      C: tl.constexpr, BC: tl.constexpr, DOT_PREC: tl.constexpr, MAX_DECAY: tl.constexpr):
    """T = (I + beta A_kk)^-1 by 16x16 blocks, then w = T (beta k e^G) and u = T (beta v). The tiles of beta A_kk
    are formed here from the block-local rows, so they never leave the chip (but for the exact diagonal tiles of
    a fast-decaying block)."""
    i_c, i_h, _, start, end = _chunk_program(chunk_starts, chunk_ends, H, 1)
    sums, blocks = _chunk_gate_sums(bsum, i_c, i_h, H, BK, C, BC)
    t00 = _invert_unit_lower(_akk_diag_tile(akk_diag, kbup, kend, sums, blocks, start, end, i_h, 0, K, BK, H,
                                             BC, DOT_PREC, MAX_DECAY), BC, DOT_PREC)
    t11 = _invert_unit_lower(_akk_diag_tile(akk_diag, kbup, kend, sums, blocks, start, end, i_h, 1, K, BK, H,
                                             BC, DOT_PREC, MAX_DECAY), BC, DOT_PREC)
    t22 = _invert_unit_lower(_akk_diag_tile(akk_diag, kbup, kend, sums, blocks, start, end, i_h, 2, K, BK, H,
                                             BC, DOT_PREC, MAX_DECAY), BC, DOT_PREC)
    t33 = _invert_unit_lower(_akk_diag_tile(akk_diag, kbup, kend, sums, blocks, start, end, i_h, 3, K, BK, H,
                                             BC, DOT_PREC, MAX_DECAY), BC, DOT_PREC)
    l10 = _akk_tile(kbup, kend, sums, blocks, start, end, i_h, 1, 0, K, BK, H, BC, DOT_PREC)
    l20 = _akk_tile(kbup, kend, sums, blocks, start, end, i_h, 2, 0, K, BK, H, BC, DOT_PREC)
    l21 = _akk_tile(kbup, kend, sums, blocks, start, end, i_h, 2, 1, K, BK, H, BC, DOT_PREC)
    l30 = _akk_tile(kbup, kend, sums, blocks, start, end, i_h, 3, 0, K, BK, H, BC, DOT_PREC)
    l31 = _akk_tile(kbup, kend, sums, blocks, start, end, i_h, 3, 1, K, BK, H, BC, DOT_PREC)
    l32 = _akk_tile(kbup, kend, sums, blocks, start, end, i_h, 3, 2, K, BK, H, BC, DOT_PREC)
    # T_ij = -T_ii sum_{j <= m < i} L_im T_mj
    t10 = -tl.dot(t11, tl.dot(l10, t00, input_precision=DOT_PREC), input_precision=DOT_PREC)
    t21 = -tl.dot(t22, tl.dot(l21, t11, input_precision=DOT_PREC), input_precision=DOT_PREC)
    t32 = -tl.dot(t33, tl.dot(l32, t22, input_precision=DOT_PREC), input_precision=DOT_PREC)
    t20 = -tl.dot(t22, tl.dot(l20, t00, input_precision=DOT_PREC) + tl.dot(l21, t10, input_precision=DOT_PREC),
                  input_precision=DOT_PREC)
    t31 = -tl.dot(t33, tl.dot(l31, t11, input_precision=DOT_PREC) + tl.dot(l32, t21, input_precision=DOT_PREC),
                  input_precision=DOT_PREC)
    t30 = -tl.dot(t33, tl.dot(l30, t00, input_precision=DOT_PREC) + tl.dot(l31, t10, input_precision=DOT_PREC)
                  + tl.dot(l32, t20, input_precision=DOT_PREC), input_precision=DOT_PREC)

    kb0 = _kb_rows(kbup, sums, blocks, start, end, i_h, 0, K, BK, H, BC)
    kb1 = _kb_rows(kbup, sums, blocks, start, end, i_h, 1, K, BK, H, BC)
    kb2 = _kb_rows(kbup, sums, blocks, start, end, i_h, 2, K, BK, H, BC)
    kb3 = _kb_rows(kbup, sums, blocks, start, end, i_h, 3, K, BK, H, BC)
    _store_block_lower_product(w, t00, t10, t11, t20, t21, t22, t30, t31, t32, t33, kb0, kb1, kb2, kb3,
                               start, end, i_h, K, BK, H, BC, DOT_PREC)
    vb0 = _rows(v, start, end, i_h, 0, V, BV, H, BC) * _rows(beta, start, end, i_h, 0, 1, 1, H, BC)
    vb1 = _rows(v, start, end, i_h, 1, V, BV, H, BC) * _rows(beta, start, end, i_h, 1, 1, 1, H, BC)
    vb2 = _rows(v, start, end, i_h, 2, V, BV, H, BC) * _rows(beta, start, end, i_h, 2, 1, 1, H, BC)
    vb3 = _rows(v, start, end, i_h, 3, V, BV, H, BC) * _rows(beta, start, end, i_h, 3, 1, 1, H, BC)
    _store_block_lower_product(u, t00, t10, t11, t20, t21, t22, t30, t31, t32, t33, vb0, vb1, vb2, vb3,
                               start, end, i_h, V, BV, H, BC, DOT_PREC)


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
        b_q = _l2norm(b_q)
        b_k = _l2norm(b_k)
    b_q = b_q * scale
    offs = ((slot * H + i_h) * K + ck[:, None]) * V + cv[None, :]
    o_row = _delta_rule_step(pool, offs, mk[:, None] & mv[None, :], b_q, b_k, b_v, b_g, b_beta)
    tl.store(o + (i_n * H + i_h) * V + cv, o_row.to(o.dtype.element_ty), mask=mv)


@triton.jit
def _l2norm(x):
    """One token's q or k over its l2 norm, eps inside the root (kda_reference.l2norm)."""
    return x / tl.sqrt(tl.sum(x * x) + 1e-6)


@triton.jit
def _decay(raw, a_log):
    """The gate -exp(A_log) * softplus(raw), raw = f + dt_bias, softplus linear past 20 (kda_reference.kda_gates)."""
    return -tl.exp(a_log) * tl.where(raw > 20.0, raw, tl.log(1.0 + tl.exp(tl.minimum(raw, 20.0))))


@triton.jit
def _delta_rule_step(pool, offs, smask, b_q, b_k, b_v, b_g, b_beta):
    """One token of the gated delta rule on a state tile in place: decay, correct towards v along k, read with
    q (already scaled); returns the output row."""
    state = tl.load(pool + offs, mask=smask, other=0.0) * tl.exp(b_g)[:, None]
    b_u = b_beta * (b_v - tl.sum(state * b_k[:, None], axis=0))
    state += b_k[:, None] * b_u[None, :]
    tl.store(pool + offs, state, mask=smask)
    return tl.sum(state * b_q[:, None], axis=0)


def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _inter_stages(device: torch.device, dtype: torch.dtype) -> int:
    """Three pipeline stages for the inter-chunk pass (faster on Hopper) where an SM has the shared memory for
    them (about 190 KB for 2-byte inputs at K = V = 128; fp32 needs twice that), else two."""
    if device.type != "cuda" or dtype.itemsize > 2:
        return 2
    return 3 if torch.cuda.get_device_properties(device).shared_memory_per_block_optin >= 200 * 1024 else 2


def _check_kda_inputs(q, k, v, g, beta):
    if q.dim() != 4 or q.shape != k.shape or q.shape != g.shape:
        raise ValueError(f"q, k, g must be [B, T, H, K] alike, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(g.shape)}")
    if v.shape[:3] != q.shape[:3] or beta.shape != q.shape[:3]:
        raise ValueError(f"v {tuple(v.shape)} and beta {tuple(beta.shape)} do not match q {tuple(q.shape)}")
    if max(q.shape[-1], v.shape[-1]) > MAX_HEAD_DIM:
        raise ValueError(f"the Triton KDA kernels take head dims K, V up to {MAX_HEAD_DIM}, got K={q.shape[-1]}, "
                         f"V={v.shape[-1]}; kimi_swarm.kernels.chunk_kda runs larger ones on the PyTorch reference")


@functools.lru_cache(maxsize=64)
def _chunk_table(bounds: tuple[int, ...], device: torch.device):
    """Sequence bounds, per-chunk [start, end) token ranges and each sequence's first chunk index, as int32 on
    `device`. Built on the host from bounds the caller already holds there, so a call makes no device sync, and
    kept per layout, so repeated shapes make no copies either."""
    starts, ends, first = [], [], []
    for lo, hi in zip(bounds, bounds[1:]):
        first.append(len(starts))
        own = range(lo, hi, CHUNK)
        starts.extend(own)
        ends.extend(min(s + CHUNK, hi) for s in own)
    return tuple(torch.tensor(x, dtype=torch.int32).to(device, non_blocking=True)
                 for x in (list(bounds), starts, ends, first))


def chunk_kda_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, *,
                     scale: float | None = None, initial_state: torch.Tensor | None = None,
                     output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None,
                     use_qk_l2norm: bool = False, block_v: int | None = None, local_warps: int = 4, row_warps: int = 2,
                     solve_warps: int = 2, inter_warps: int = 4,
                     inter_stages: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same contract as kimi_swarm.kernels.kda_reference.chunk_kda_reference, on CUDA (or the Triton interpreter).

    block_v and the *_warps / inter_stages knobs are launch shapes only (benchmarks/kernel_bench.py sweeps them);
    the defaults are the fastest measured on H100 (benchmarks/history/kernels.md). fp16 inputs are computed in
    fp32: the chunk-local decayed keys and queries that strong gates give exceed fp16's range (bf16 has fp32's).
    """
    _check_kda_inputs(q, k, v, g, beta)
    if q.dtype == torch.float16:
        o, final = chunk_kda_triton(
            *(x.float() for x in (q, k, v, g, beta)), scale=scale, initial_state=initial_state,
            output_final_state=output_final_state, cu_seqlens=cu_seqlens, use_qk_l2norm=use_qk_l2norm,
            block_v=block_v, local_warps=local_warps, row_warps=row_warps, solve_warps=solve_warps,
            inter_warps=inter_warps, inter_stages=inter_stages)
        return o.to(torch.float16), final
    b, t, h, kd = q.shape
    vd = v.shape[-1]
    if cu_seqlens is None:
        bounds = tuple(range(0, (b + 1) * t, t)) if t else (0,) * (b + 1)
    else:
        if b != 1:
            raise ValueError(f"cu_seqlens needs batch size 1, got {b}")
        bounds = tuple(int(x) for x in cu_seqlens.tolist())
        if bounds[0] != 0 or bounds[-1] != t or any(hi < lo for lo, hi in zip(bounds, bounds[1:])):
            raise ValueError(f"cu_seqlens must rise from 0 to T={t}, got {list(bounds)}")
    cu, starts, ends, first = _chunk_table(bounds, q.device)
    n = len(cu) - 1
    if initial_state is not None and initial_state.shape != (n, h, kd, vd):
        raise ValueError(f"initial_state must be {(n, h, kd, vd)}, got {tuple(initial_state.shape)}")
    q, k, v, g, beta = (x.contiguous() for x in (q, k, v, g, beta))
    scale = kd ** -0.5 if scale is None else scale
    bk, bv = _block(kd), _block(vd)
    block_v = block_v or min(bv, 32)
    n_chunks = len(starts)
    ty = q.dtype
    w, qd, kdec = (_empty(b * t, h, kd, device=q.device, dtype=ty) for _ in range(3))
    u = _empty(b * t, h, vd, device=q.device, dtype=ty)
    aqk = _empty(b * t, h, CHUNK, device=q.device, dtype=ty)
    akk_diag = _empty(b * t, h, SUB, device=q.device, dtype=torch.float32)
    glast = _empty(n_chunks, h, bk, device=q.device, dtype=torch.float32)
    prec = _dot_precision(ty)
    if n_chunks:
        qup, kbup, kend = (_empty(b * t, h, kd, device=q.device, dtype=ty) for _ in range(3))
        bsum = _empty(n_chunks, h, CHUNK // SUB, bk, device=q.device, dtype=torch.float32)
        _kda_block_local_kernel[(n_chunks * h * (CHUNK // SUB),)](
            q, k, g, beta, starts, ends, qup, kbup, kend, bsum, aqk, akk_diag, scale,
            H=h, K=kd, BK=bk, C=CHUNK, BC=SUB, L2NORM=use_qk_l2norm, MAX_DECAY=MAX_BLOCK_DECAY,
            num_warps=local_warps)
        _kda_blockrow_kernel[(n_chunks * h * (CHUNK // SUB),)](
            qup, kend, bsum, starts, ends, aqk, qd, kdec, glast,
            H=h, K=kd, BK=bk, C=CHUNK, BC=SUB, DOT_PREC=prec, MAX_DECAY=MAX_BLOCK_DECAY, num_warps=row_warps)
        _kda_solve_kernel[(n_chunks * h,)](
            akk_diag, kbup, kend, bsum, v, beta, starts, ends, w, u,
            H=h, K=kd, V=vd, BK=bk, BV=bv, C=CHUNK, BC=SUB, DOT_PREC=prec, MAX_DECAY=MAX_BLOCK_DECAY,
            num_warps=solve_warps)
    o = _empty(b, t, h, vd, device=q.device, dtype=ty)
    final = _empty(n, h, kd, vd, device=q.device, dtype=torch.float32) if output_final_state else None
    h0 = initial_state.to(torch.float32).contiguous() if initial_state is not None else None
    _kda_inter_kernel[(triton.cdiv(vd, block_v), n * h)](
        w, u, qd, kdec, aqk, glast, cu, first, h0, final, o,
        H=h, K=kd, V=vd, BK=bk, BV=block_v, C=CHUNK, BC=SUB, HAS_H0=h0 is not None, STORE_HT=final is not None,
        DOT_PREC=prec, num_warps=inter_warps, num_stages=inter_stages or _inter_stages(q.device, ty))
    return o, final


def recurrent_kda_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                         state_pool: torch.Tensor, state_indices: torch.Tensor, *, scale: float | None = None,
                         use_qk_l2norm: bool = False, block_v: int | None = None) -> torch.Tensor:
    """Same contract as kimi_swarm.kernels.kda_reference.recurrent_kda_reference: in-place fp32 pool rows."""
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


@triton.jit
def _short_conv_head(mixed, mixed_stride, conv_pool, taps, i_n, slot, chan0, tap0, P3, D: tl.constexpr,
                     W: tl.constexpr, BD: tl.constexpr, BW: tl.constexpr):
    """silu of the short convolution over [window ; new input] for D channels from chan0; returns the new window
    (to store once every read of the old one is done) and the output, both fp32."""
    cd = tl.arange(0, BD)
    cw = tl.arange(0, BW)
    md = cd < D
    chan = chan0 + cd
    rows = (slot * P3 + chan[:, None]) * (W - 1)
    new = tl.load(mixed + i_n * mixed_stride + chan, mask=md, other=0.0).to(tl.float32)
    old = tl.load(conv_pool + rows + cw[None, :], mask=md[:, None] & (cw[None, :] < W - 1), other=0.0)
    full = tl.where(cw[None, :] == W - 1, new[:, None], old.to(tl.float32))
    ahead = tl.load(conv_pool + rows + cw[None, :] + 1, mask=md[:, None] & (cw[None, :] < W - 2), other=0.0)
    window = tl.where(cw[None, :] == W - 2, new[:, None], ahead.to(tl.float32))
    b_taps = tl.load(taps + (tap0 + cd[:, None]) * W + cw[None, :], mask=md[:, None] & (cw[None, :] < W),
                     other=0.0).to(tl.float32)
    out = tl.sum(full * b_taps, axis=1)
    return window, out * tl.sigmoid(out)


@triton.jit
def _store_window(conv_pool, window, slot, chan0, P3, D: tl.constexpr, W: tl.constexpr, BD: tl.constexpr,
                  BW: tl.constexpr):
    cd = tl.arange(0, BD)
    cw = tl.arange(0, BW)
    rows = (slot * P3 + chan0 + cd[:, None]) * (W - 1)
    tl.store(conv_pool + rows + cw[None, :], window.to(conv_pool.dtype.element_ty),
             mask=(cd[:, None] < D) & (cw[None, :] < W - 1))


@triton.jit
def _kda_decode_step_kernel(mixed, mixed_stride, conv_pool, wq, wk, wv, f, dt_bias, a_log, b, b_stride, gate,
                            norm_w, pool, slots, y, eps, scale, H: tl.constexpr, D: tl.constexpr, W: tl.constexpr,
                            BD: tl.constexpr, BW: tl.constexpr):
    """One program per (sequence, head): short convolution of q, k, v with its window update, the decay and
    beta gates, the recurrent step on the head's [D, D] state, and the gated RMSNorm of the output. mixed and b
    may be column slices of a wider projection (their row strides)."""
    i_nh = tl.program_id(0)
    i_n = i_nh // H
    i_h = i_nh % H
    P = H * D
    slot = tl.load(slots + i_n).to(tl.int64)
    win_q, b_q = _short_conv_head(mixed, mixed_stride, conv_pool, wq, i_n, slot, i_h * D, i_h * D, 3 * P, D, W,
                                  BD, BW)
    win_k, b_k = _short_conv_head(mixed, mixed_stride, conv_pool, wk, i_n, slot, P + i_h * D, i_h * D, 3 * P, D,
                                  W, BD, BW)
    win_v, b_v = _short_conv_head(mixed, mixed_stride, conv_pool, wv, i_n, slot, 2 * P + i_h * D, i_h * D, 3 * P,
                                  D, W, BD, BW)
    tl.debug_barrier()  # every thread has read the old windows before any overwrites them
    _store_window(conv_pool, win_q, slot, i_h * D, 3 * P, D, W, BD, BW)
    _store_window(conv_pool, win_k, slot, P + i_h * D, 3 * P, D, W, BD, BW)
    _store_window(conv_pool, win_v, slot, 2 * P + i_h * D, 3 * P, D, W, BD, BW)

    cd = tl.arange(0, BD)
    md = cd < D
    head = i_n * P + i_h * D + cd
    raw = tl.load(f + head, mask=md, other=0.0).to(tl.float32) + tl.load(dt_bias + i_h * D + cd, mask=md,
                                                                            other=0.0).to(tl.float32)
    b_g = _decay(raw, tl.load(a_log + i_h).to(tl.float32))
    b_beta = tl.sigmoid(tl.load(b + i_n * b_stride + i_h).to(tl.float32))
    b_q = _l2norm(b_q) * scale
    b_k = _l2norm(b_k)

    offs = ((slot * H + i_h) * D + cd[:, None]) * D + cd[None, :]
    o = _delta_rule_step(pool, offs, md[:, None] & md[None, :], b_q, b_k, b_v, b_g, b_beta)

    o = o * tl.rsqrt(tl.sum(o * o) / D + eps)
    b_gate = tl.load(gate + head, mask=md, other=0.0).to(tl.float32)
    out = o * tl.load(norm_w + cd, mask=md, other=0.0).to(tl.float32) * tl.sigmoid(b_gate)
    tl.store(y + head, out.to(y.dtype.element_ty), mask=md)


def kda_decode_step_triton(mixed: torch.Tensor, conv_pool: torch.Tensor,
                           conv_weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor], f: torch.Tensor,
                           dt_bias: torch.Tensor, a_log: torch.Tensor, b: torch.Tensor, gate: torch.Tensor,
                           norm_weight: torch.Tensor, state_pool: torch.Tensor, state_indices: torch.Tensor,
                           eps: float) -> torch.Tensor:
    """Same contract as kimi_swarm.kernels.kda_reference.kda_decode_step_reference, in one launch."""
    n, heads = b.shape
    p = f.shape[-1]
    d, width = p // heads, conv_weights[0].shape[-1]
    if mixed.shape != (n, 3 * p) or conv_pool.shape[1:] != (3 * p, width - 1) or gate.shape != (n, p):
        raise ValueError(f"kda_decode_step: mixed {tuple(mixed.shape)}, conv_pool {tuple(conv_pool.shape)} and "
                         f"gate {tuple(gate.shape)} do not fit {heads} heads of {d} and a {width}-tap convolution")
    if state_pool.dtype != torch.float32 or state_pool.shape[1:] != (heads, d, d) or not state_pool.is_contiguous():
        raise ValueError(f"state_pool must be contiguous fp32 [slots, {heads}, {d}, {d}], got "
                         f"{state_pool.dtype} {tuple(state_pool.shape)}")
    if not conv_pool.is_contiguous():
        raise ValueError("kda_decode_step: conv_pool must be contiguous")
    y = _empty(n, p, device=mixed.device, dtype=mixed.dtype)
    wq, wk, wv = (w.contiguous() for w in conv_weights)
    mixed, b = (t if t.stride(-1) == 1 else t.contiguous() for t in (mixed, b))
    _kda_decode_step_kernel[(n * heads,)](
        mixed, mixed.stride(0), conv_pool, wq, wk, wv, f.contiguous(), dt_bias.contiguous(), a_log.contiguous(),
        b, b.stride(0), gate.contiguous(), norm_weight.contiguous(), state_pool, state_indices.contiguous(), y, eps,
        d ** -0.5, H=heads, D=d, W=width, BD=_block(d), BW=triton.next_power_of_2(width), num_warps=8)
    return y


@triton.jit
def _short_conv_kernel(mixed, stride_n, stride_t, conv_pool, taps, slots, out, N, T, P,
                       W: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    """silu of the causal depthwise convolution for BT positions of one sequence and BC channels of one of q, k, v
    (program axis 1: part * channel blocks + block); positions before the first read the sequence's cached window.
    Writes out [3, N, T, P]."""
    i_nt = tl.program_id(0)
    blocks = tl.cdiv(P, BC)
    part = tl.program_id(1) // blocks
    local = (tl.program_id(1) % blocks) * BC + tl.arange(0, BC)
    c_ok = local < P
    chan = part * P + local
    i_n = i_nt // tl.cdiv(T, BT)
    t = (i_nt % tl.cdiv(T, BT)) * BT + tl.arange(0, BT)
    slot = tl.load(slots + i_n).to(tl.int64)
    acc = tl.zeros((BT, BC), dtype=tl.float32)
    for j in tl.static_range(W):
        pos = t - (W - 1) + j
        in_x = (pos >= 0) & (pos < T)
        x = tl.load(mixed + i_n * stride_n + pos[:, None].to(tl.int64) * stride_t + chan[None, :],
                    mask=in_x[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
        in_window = (pos < 0) & (pos >= -(W - 1))
        old = tl.load(conv_pool + (slot * 3 * P + chan[None, :]) * (W - 1) + (pos[:, None] + W - 1),
                      mask=in_window[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
        tap = tl.load(taps + chan * W + j, mask=c_ok, other=0.0).to(tl.float32)
        acc += (x + old) * tap[None, :]
    y = acc * tl.sigmoid(acc)
    dst = out + ((part * N + i_n) * T + t[:, None].to(tl.int64)) * P + local[None, :]
    tl.store(dst, y.to(out.dtype.element_ty), mask=(t[:, None] < T) & c_ok[None, :])


@triton.jit
def _conv_window_kernel(mixed, stride_n, stride_t, conv_pool, slots, T, C, W: tl.constexpr, BW: tl.constexpr,
                        BC: tl.constexpr):
    """The last W-1 inputs of [cached window ; new inputs] into the sequence's window, for BC channels: read
    everything first, then write (the window shifts within itself when T < W-1)."""
    i_n = tl.program_id(0)
    chan = tl.program_id(1) * BC + tl.arange(0, BC)
    c_ok = chan < C
    j = tl.arange(0, BW)
    j_ok = j < W - 1
    slot = tl.load(slots + i_n).to(tl.int64)
    pos = T - (W - 1) + j
    rows = (slot * C + chan[:, None]) * (W - 1)
    x = tl.load(mixed + i_n * stride_n + pos[None, :].to(tl.int64) * stride_t + chan[:, None],
                mask=c_ok[:, None] & (j_ok & (pos >= 0))[None, :], other=0.0)
    old = tl.load(conv_pool + rows + (j + T)[None, :], mask=c_ok[:, None] & (j_ok & (pos < 0))[None, :], other=0.0)
    window = tl.where((pos >= 0)[None, :], x.to(conv_pool.dtype.element_ty), old)
    tl.debug_barrier()
    tl.store(conv_pool + rows + j[None, :], window, mask=c_ok[:, None] & j_ok[None, :])


def short_conv_triton(mixed: torch.Tensor, conv_pool: torch.Tensor, state_indices: torch.Tensor,
                      taps: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as kimi_swarm.kernels.kda_reference.short_conv_reference, in two launches that read mixed
    where it lies (a slice of a wider projection): no concatenation, no transposes."""
    n, t, c = mixed.shape
    p, width = taps[0].shape[0], taps[0].shape[-1]
    if c != 3 * p or conv_pool.shape[1:] != (c, width - 1) or mixed.stride(-1) != 1:
        raise ValueError(f"short_conv: mixed {tuple(mixed.shape)} (unit-stride last dim) and conv_pool "
                         f"{tuple(conv_pool.shape)} do not fit three {width}-tap convolutions of {p} channels")
    if not conv_pool.is_contiguous():
        raise ValueError("short_conv: conv_pool must be contiguous")
    out = _empty(3, n, t, p, device=mixed.device, dtype=mixed.dtype)
    slots = state_indices.contiguous()
    if n and t:
        block_t, block_c = 32, 64
        _short_conv_kernel[(n * triton.cdiv(t, block_t), 3 * triton.cdiv(p, block_c))](
            mixed, mixed.stride(0), mixed.stride(1), conv_pool, torch.cat(taps).view(c, width).contiguous(), slots,
            out, n, t, p, W=width, BT=block_t, BC=block_c, num_warps=4)
        _conv_window_kernel[(n, triton.cdiv(c, 128))](
            mixed, mixed.stride(0), mixed.stride(1), conv_pool, slots, t, c, W=width,
            BW=triton.next_power_of_2(width - 1), BC=128, num_warps=4)
    return out[0], out[1], out[2]


@triton.jit
def _kda_gates_kernel(f, dt_bias, a_log, b, b_stride, g, beta, P, H, D: tl.constexpr, BP: tl.constexpr,
                      BH: tl.constexpr):
    """One token and BP channels of g = -exp(A_log) * softplus(f + dt_bias); the first column block also writes
    the token's beta = sigmoid(b) for every head."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BP + tl.arange(0, BP)
    ok = cols < P
    raw = tl.load(f + row * P + cols, mask=ok, other=0.0).to(tl.float32) + tl.load(dt_bias + cols, mask=ok,
                                                                                  other=0.0).to(tl.float32)
    tl.store(g + row * P + cols, _decay(raw, tl.load(a_log + cols // D, mask=ok, other=0.0).to(tl.float32)),
             mask=ok)
    if tl.program_id(1) == 0:
        heads = tl.arange(0, BH)
        b_row = tl.load(b + row * b_stride + heads, mask=heads < H, other=0.0).to(tl.float32)
        tl.store(beta + row * H + heads, tl.sigmoid(b_row), mask=heads < H)


def kda_gates_triton(f: torch.Tensor, b: torch.Tensor, dt_bias: torch.Tensor, a_log: torch.Tensor,
                     shape: tuple[int, int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as kimi_swarm.kernels.kda_reference.kda_gates, in one launch (b may be a column slice of a
    wider projection)."""
    n, t, heads, d = shape
    p, rows = heads * d, n * t
    flat_f = f.reshape(rows, p).contiguous()
    flat_b = b.reshape(rows, heads)
    if flat_b.stride(-1) != 1:
        flat_b = flat_b.contiguous()
    g = _empty(n, t, heads, d, device=f.device, dtype=torch.float32)
    beta = _empty(n, t, heads, device=f.device, dtype=torch.float32)
    block = min(1024, triton.next_power_of_2(p))
    if rows:
        _kda_gates_kernel[(rows, triton.cdiv(p, block))](
            flat_f, dt_bias.contiguous(), a_log.reshape(-1).contiguous(), flat_b, flat_b.stride(0), g, beta, p,
            heads, D=d, BP=block, BH=triton.next_power_of_2(heads), num_warps=4)
    return g, beta
