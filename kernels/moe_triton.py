"""Fused MoE for a few tokens: the chosen experts' weights read once, in two launches.

At small batches (batch-1 decode, a handful of agents) the routed experts are bound by reading their weights,
and a grouped GEMM over all experts spends its time on bookkeeping for the many experts no token chose. Here the
(token, expert) pairs are sorted by expert and padded per expert to blocks of BLOCK_M rows (vLLM's
moe_align_block_size, in a few tensor ops without a host sync, so it runs inside CUDA graphs); each program takes
one block, so one expert, and one tile of output columns. The first kernel computes silu(gate) * up from w13 for
its rows, the second the down projection times the routing weight; the k partial rows of each token are summed
last. FP8 weights (float8_e4m3fn with a scale per output row) are converted tile by tile in registers and the
scales applied to the accumulators: weight-only FP8, half the bytes of bf16. Up to PAIRWISE_TOKENS tokens
(batch-1 decode, a few agents) the pairs are not sorted at all: each runs as a GEMV. The routing before them (sigmoid,
selection bias, top-k, renormalisation, scaling: a dozen small PyTorch ops) is one launch too. Same maths as
kernels/moe_reference.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_M = 16
"""Rows (token, expert pairs) of one program for a few tokens: the smallest tile tl.dot takes."""
LARGE_BLOCK_M = 64
"""Rows of one program once the average expert has that many pairs (FP8 prefill, where this kernel runs too)."""
PAIRWISE_TOKENS = 8
"""Tokens up to which each (token, expert) pair runs as its own GEMV: no alignment pass (a dozen small launches
of sorting and counting per MoE layer), at the price of reading an expert once per token that chose it, which
few tokens seldom share."""
PAIR_BLOCK_N, PAIR_BLOCK_K = 16, 256
"""A pairwise program's output columns and the K slice it reads at a time (16 rows of 512 bytes in bf16)."""


def _empty(*shape: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Every output buffer comes from here, so tests can poison them (fill with NaN) before a run."""
    return torch.empty(*shape, device=device, dtype=dtype)


@triton.jit
def _scaled_and_gated(acc, acc_up, w_scale, expert, w_rows, N, cols, col_ok, GATED: tl.constexpr,
                      HAS_SCALE: tl.constexpr):
    """The accumulators of output columns `cols` (last axis) times their FP8 row scales when HAS_SCALE, then
    silu(gate) * up when GATED (acc the gate rows, acc_up the up rows N below them)."""
    if HAS_SCALE:
        acc *= tl.load(w_scale + expert * w_rows + cols, mask=col_ok, other=0.0)
        if GATED:
            acc_up *= tl.load(w_scale + expert * w_rows + N + cols, mask=col_ok, other=0.0)
    if GATED:
        acc = acc * tl.sigmoid(acc) * acc_up
    return acc


@triton.jit
def _expert_gemm_kernel(a, w, w_scale, sorted_pairs, block_expert, route_weight, out, pairs, num_experts,
                        N, K, A_ROWS_PER_PAIR: tl.constexpr, GATED: tl.constexpr, HAS_SCALE: tl.constexpr,
                        WEIGHTED: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                        DOT_PREC: tl.constexpr, DENSE: tl.constexpr = False):
    """out[pair, n] for one block of pairs sorted by expert: GATED reads w as [E, 2N, K] (gate rows then up rows)
    and writes silu(gate) * up; otherwise w is [E, N, K] and the result is times the pair's routing weight when
    WEIGHTED. a's row of a pair is pair // A_ROWS_PER_PAIR (the token for w13, the pair itself for w2). DENSE: one
    expert and rows in order, a plain linear layer over `pairs` rows (sorted_pairs and block_expert unread)."""
    block = tl.program_id(0)
    if DENSE:
        expert = 0
        rows = block * BM + tl.arange(0, BM)
    else:
        expert = tl.load(block_expert + block).to(tl.int64)
        if expert >= num_experts:
            return
        rows = tl.load(sorted_pairs + block * BM + tl.arange(0, BM))
    valid = rows < pairs
    a_rows = (rows // A_ROWS_PER_PAIR).to(tl.int64)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    col_ok = cols < N
    w_rows = 2 * N if GATED else N
    w_base = w + expert * w_rows * K
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    acc_up = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        k_ok = ks < K
        b_a = tl.load(a + a_rows[:, None] * K + ks[None, :], mask=valid[:, None] & k_ok[None, :], other=0.0)
        w_mask = k_ok[:, None] & col_ok[None, :]
        b_w = tl.load(w_base + cols[None, :].to(tl.int64) * K + ks[:, None], mask=w_mask, other=0.0)
        acc = tl.dot(b_a, b_w.to(b_a.dtype), acc, input_precision=DOT_PREC)
        if GATED:
            b_u = tl.load(w_base + (N + cols[None, :]).to(tl.int64) * K + ks[:, None], mask=w_mask, other=0.0)
            acc_up = tl.dot(b_a, b_u.to(b_a.dtype), acc_up, input_precision=DOT_PREC)
    acc = _scaled_and_gated(acc, acc_up, w_scale, expert, w_rows, N, cols, col_ok, GATED, HAS_SCALE)
    if WEIGHTED:
        acc *= tl.load(route_weight + rows, mask=valid, other=0.0).to(tl.float32)[:, None]
    out_ptrs = out + rows[:, None].to(tl.int64) * N + cols[None, :]
    tl.store(out_ptrs, acc.to(out.dtype.element_ty), mask=valid[:, None] & col_ok[None, :])


@triton.jit
def _pair_gemv_kernel(a, w, w_scale, expert_ids, route_weight, out, N, K, A_ROWS_PER_PAIR: tl.constexpr,
                      GATED: tl.constexpr, HAS_SCALE: tl.constexpr, WEIGHTED: tl.constexpr, BN: tl.constexpr,
                      BK: tl.constexpr):
    """out[pair, n] for one (token, expert) pair and one tile of BN output columns, as _expert_gemm_kernel computes
    it for a block of pairs (same weights layout, gating, scales and routing weight), with the pair's expert read
    from expert_ids [pairs] instead of a sorted block."""
    pair = tl.program_id(0).to(tl.int64)
    expert = tl.load(expert_ids + pair).to(tl.int64)
    a_row = pair // A_ROWS_PER_PAIR
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    col_ok = cols < N
    w_rows = 2 * N if GATED else N
    w_base = w + expert * w_rows * K
    acc = tl.zeros((BN,), dtype=tl.float32)
    acc_up = tl.zeros((BN,), dtype=tl.float32)
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        k_ok = ks < K
        b_a = tl.load(a + a_row * K + ks, mask=k_ok, other=0.0).to(tl.float32)
        w_mask = col_ok[:, None] & k_ok[None, :]
        b_w = tl.load(w_base + cols[:, None].to(tl.int64) * K + ks[None, :], mask=w_mask, other=0.0)
        acc += tl.sum(b_w.to(tl.float32) * b_a[None, :], axis=1)
        if GATED:
            b_u = tl.load(w_base + (N + cols[:, None]).to(tl.int64) * K + ks[None, :], mask=w_mask, other=0.0)
            acc_up += tl.sum(b_u.to(tl.float32) * b_a[None, :], axis=1)
    acc = _scaled_and_gated(acc, acc_up, w_scale, expert, w_rows, N, cols, col_ok, GATED, HAS_SCALE)
    if WEIGHTED:
        acc *= tl.load(route_weight + pair).to(tl.float32)
    tl.store(out + pair * N + cols, acc.to(out.dtype.element_ty), mask=col_ok)


def align_block_size(expert_ids: torch.Tensor, num_experts: int,
                     block_m: int = BLOCK_M) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted_pairs, block_expert): pair indices (row-major over expert_ids [M, k]) grouped by expert, each group
    padded to a multiple of block_m with the index M*k; and the expert of each block, num_experts for a block past
    the last group. Sized for the worst case so nothing depends on the routing: no host sync."""
    flat = expert_ids.reshape(-1)
    pairs, device = flat.numel(), flat.device
    order = flat.argsort(stable=True)
    sorted_expert = flat[order]
    counts = torch.zeros(num_experts, dtype=torch.int64, device=device).scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = padded.cumsum(0)
    rank = torch.arange(pairs, device=device) - (counts.cumsum(0) - counts)[sorted_expert]
    position = (padded_end - padded)[sorted_expert] + rank
    max_blocks = pairs // block_m + min(num_experts, pairs) + 1
    sorted_pairs = torch.full((max_blocks * block_m,), pairs, dtype=torch.int64, device=device)
    sorted_pairs.scatter_(0, position, order)
    starts = torch.arange(max_blocks, device=device) * block_m
    block_expert = torch.searchsorted(padded_end, starts, right=True)
    return sorted_pairs, block_expert


def _block_n(n: int) -> int:
    return min(64, triton.next_power_of_2(n))


def fused_moe_triton(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, expert_ids: torch.Tensor,
                     weights: torch.Tensor, w13_scale: torch.Tensor | None = None,
                     w2_scale: torch.Tensor | None = None, *, block_k: int = 64, num_warps: int = 4,
                     num_stages: int = 3, block_m: int | None = None, block_n: int | None = None,
                     pairwise: bool | None = None) -> torch.Tensor:
    """Same contract as kimi_swarm.kernels.moe_reference.fused_moe_reference. pairwise (default: up to
    PAIRWISE_TOKENS tokens) runs each (token, expert) pair as a GEMV instead of blocks of pairs sorted by expert."""
    m, k = expert_ids.shape
    num_experts, two_i, hidden = w13.shape
    inter = two_i // 2
    if x.shape != (m, hidden) or w2.shape != (num_experts, hidden, inter):
        raise ValueError(f"fused_moe: x {tuple(x.shape)}, w13 {tuple(w13.shape)} and w2 {tuple(w2.shape)} "
                         f"do not fit [M, H], [E, 2I, H], [E, H, I] with M = {m}")
    if (w13_scale is None) != (w2_scale is None):
        raise ValueError("fused_moe: FP8 weights need both w13_scale and w2_scale")
    pairs = m * k
    if pairwise is None:
        pairwise = 0 < m <= PAIRWISE_TOKENS and block_m is None
    if pairwise:
        return _fused_moe_pairwise(x.contiguous(), w13, w2, expert_ids, weights, w13_scale, w2_scale)
    if block_m is None:
        block_m = LARGE_BLOCK_M if pairs >= LARGE_BLOCK_M * num_experts else BLOCK_M
    sorted_pairs, block_expert = align_block_size(expert_ids, num_experts, block_m)
    blocks = block_expert.shape[0]
    prec = "ieee" if x.dtype == torch.float32 else "tf32"
    x = x.contiguous()
    act = _empty(pairs, inter, device=x.device, dtype=x.dtype)
    scale13 = w13_scale if w13_scale is not None else w13
    scale2 = w2_scale if w2_scale is not None else w2
    bn, bk = block_n or _block_n(inter), min(block_k, triton.next_power_of_2(hidden))
    _expert_gemm_kernel[(blocks, triton.cdiv(inter, bn))](
        x, w13, scale13, sorted_pairs, block_expert, weights, act, pairs, num_experts, inter, hidden,
        A_ROWS_PER_PAIR=k, GATED=True, HAS_SCALE=w13_scale is not None, WEIGHTED=False, BM=block_m, BN=bn, BK=bk,
        DOT_PREC=prec, num_warps=num_warps, num_stages=num_stages)
    partial = _empty(pairs, hidden, device=x.device, dtype=torch.float32)
    bn, bk = block_n or _block_n(hidden), min(block_k, triton.next_power_of_2(inter))
    _expert_gemm_kernel[(blocks, triton.cdiv(hidden, bn))](
        act, w2, scale2, sorted_pairs, block_expert, weights.reshape(-1).contiguous(), partial, pairs, num_experts,
        hidden, inter, A_ROWS_PER_PAIR=1, GATED=False, HAS_SCALE=w2_scale is not None, WEIGHTED=True, BM=block_m,
        BN=bn, BK=bk, DOT_PREC=prec, num_warps=num_warps, num_stages=num_stages)
    return partial.view(m, k, hidden).sum(dim=1)


def _fused_moe_pairwise(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, expert_ids: torch.Tensor,
                        weights: torch.Tensor, w13_scale: torch.Tensor | None,
                        w2_scale: torch.Tensor | None) -> torch.Tensor:
    """fused_moe_triton for a few tokens: two GEMV launches over every (token, expert) pair, then the sum per token."""
    m, k = expert_ids.shape
    _, two_i, hidden = w13.shape
    inter, pairs = two_i // 2, m * k
    flat_ids = expert_ids.reshape(-1).contiguous()
    act = _empty(pairs, inter, device=x.device, dtype=x.dtype)
    _pair_gemv_kernel[(pairs, triton.cdiv(inter, PAIR_BLOCK_N))](
        x, w13, w13_scale if w13_scale is not None else w13, flat_ids, weights, act, inter, hidden,
        A_ROWS_PER_PAIR=k, GATED=True, HAS_SCALE=w13_scale is not None, WEIGHTED=False, BN=PAIR_BLOCK_N,
        BK=min(PAIR_BLOCK_K, triton.next_power_of_2(hidden)), num_warps=4)
    partial = _empty(pairs, hidden, device=x.device, dtype=torch.float32)
    _pair_gemv_kernel[(pairs, triton.cdiv(hidden, PAIR_BLOCK_N))](
        act, w2, w2_scale if w2_scale is not None else w2, flat_ids, weights.reshape(-1).contiguous(), partial,
        hidden, inter, A_ROWS_PER_PAIR=1, GATED=False, HAS_SCALE=w2_scale is not None, WEIGHTED=True,
        BN=PAIR_BLOCK_N, BK=min(PAIR_BLOCK_K, triton.next_power_of_2(inter)), num_warps=4)
    return partial.view(m, k, hidden).sum(dim=1)


@triton.jit
def _route_kernel(logits, bias, ids, weights, num_experts, scaling, TOP_K: tl.constexpr, BK: tl.constexpr,
                  BE: tl.constexpr, RENORMALIZE: tl.constexpr):
    """One program a token: its TOP_K experts by score plus bias, taken one by one (the first index of the
    largest), and their unbiased scores as weights."""
    row = tl.program_id(0).to(tl.int64)
    experts = tl.arange(0, BE)
    valid = experts < num_experts
    scores = tl.sigmoid(tl.load(logits + row * num_experts + experts, mask=valid, other=0.0).to(tl.float32))
    ranked = tl.where(valid, scores + tl.load(bias + experts, mask=valid, other=0.0).to(tl.float32), float("-inf"))
    slots = tl.arange(0, BK)
    chosen = tl.zeros([BK], dtype=tl.int64)
    chosen_scores = tl.zeros([BK], dtype=tl.float32)
    for i in tl.static_range(TOP_K):
        best = tl.max(ranked, axis=0)
        index = tl.minimum(tl.min(tl.where(ranked == best, experts, BE), axis=0), num_experts - 1)
        chosen = tl.where(slots == i, index.to(tl.int64), chosen)
        chosen_scores = tl.where(slots == i, tl.sum(tl.where(experts == index, scores, 0.0), axis=0), chosen_scores)
        ranked = tl.where(experts == index, float("-inf"), ranked)
    if RENORMALIZE:
        chosen_scores = chosen_scores / (tl.sum(chosen_scores, axis=0) + 1e-20)
    tl.store(ids + row * TOP_K + slots, chosen, mask=slots < TOP_K)
    tl.store(weights + row * TOP_K + slots, chosen_scores * scaling, mask=slots < TOP_K)


def route_triton(logits: torch.Tensor, bias: torch.Tensor, top_k: int, renormalize: bool,
                 scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as kimi_swarm.kernels.moe_reference.route_reference for fp32 logits, in one launch."""
    m, num_experts = logits.shape
    if logits.dtype != torch.float32:
        raise ValueError(f"route: logits must be float32, got {logits.dtype}")
    if not 0 < top_k <= num_experts:
        raise ValueError(f"route: top_k must be in [1, {num_experts}], got {top_k}")
    ids = _empty(m, top_k, device=logits.device, dtype=torch.int64)
    weights = _empty(m, top_k, device=logits.device, dtype=torch.float32)
    if m:
        _route_kernel[(m,)](logits.contiguous(), bias.contiguous(), ids, weights, num_experts, float(scaling),
                            TOP_K=top_k, BK=triton.next_power_of_2(top_k), BE=triton.next_power_of_2(num_experts),
                            RENORMALIZE=renormalize)
    return ids, weights


@triton.jit
def _silu_and_mul_kernel(x, out, inter, BI: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BI + tl.arange(0, BI)
    ok = cols < inter
    gate = tl.load(x + row * 2 * inter + cols, mask=ok, other=0.0).to(tl.float32)
    up = tl.load(x + row * 2 * inter + inter + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(out + row * inter + cols, (gate * tl.sigmoid(gate) * up).to(out.dtype.element_ty), mask=ok)


def silu_and_mul_triton(x: torch.Tensor) -> torch.Tensor:
    """Same contract as kimi_swarm.kernels.moe_reference.silu_and_mul_reference, in one pass (computed in fp32,
    rounded once) instead of three."""
    two_i = x.shape[-1]
    if two_i % 2:
        raise ValueError(f"silu_and_mul: the last dim must be even (gate then up), got {two_i}")
    flat = x.reshape(-1, two_i).contiguous()
    out = _empty(*x.shape[:-1], two_i // 2, device=x.device, dtype=x.dtype)
    block = min(1024, triton.next_power_of_2(max(two_i // 2, 1)))
    if flat.shape[0] and two_i:
        _silu_and_mul_kernel[(flat.shape[0], triton.cdiv(two_i // 2, block))](flat, out, two_i // 2, BI=block,
                                                                              num_warps=4)
    return out


@triton.jit
def _moe_combine_kernel(y, position, weights, out, H, K: tl.constexpr, BK: tl.constexpr, BH: tl.constexpr):
    """One token and BH columns: its K rows of y (found through position) times their weights, summed in fp32."""
    token = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BH + tl.arange(0, BH)
    choice = tl.arange(0, BK)
    c_ok = choice < K
    rows = tl.load(position + token * K + choice, mask=c_ok, other=0)
    w = tl.load(weights + token * K + choice, mask=c_ok, other=0.0).to(tl.float32)
    ok = c_ok[:, None] & (cols < H)[None, :]
    vals = tl.load(y + rows[:, None].to(tl.int64) * H + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    tl.store(out + token * H + cols, tl.sum(vals * w[:, None], axis=0), mask=cols < H)


def moe_combine_triton(y: torch.Tensor, order: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Same contract as kimi_swarm.kernels.moe_reference.moe_combine_reference: each token gathers its k rows
    (no fp32 copy of y, no atomic scatter-add), one launch after the inverse permutation."""
    m, k = weights.shape
    pairs, hidden = y.shape
    if pairs != m * k or order.shape != (pairs,):
        raise ValueError(f"moe_combine: y {tuple(y.shape)} and order {tuple(order.shape)} must hold the {m * k} "
                         f"pairs of weights {tuple(weights.shape)}")
    position = torch.empty_like(order).scatter_(0, order, torch.arange(pairs, device=y.device, dtype=order.dtype))
    out = _empty(m, hidden, device=y.device, dtype=torch.float32)
    block = min(1024, triton.next_power_of_2(max(hidden, 1)))
    if m and hidden:
        _moe_combine_kernel[(m, triton.cdiv(hidden, block))](y.contiguous(), position, weights.contiguous(), out,
                                                             hidden, K=k, BK=triton.next_power_of_2(k), BH=block,
                                                             num_warps=4)
    return out
