"""Triton kernels for MLA attention over the paged latent cache (absorbed / MQA form).

One flash-attention kernel serves all three calls. Its query rows come in groups that share one block
table and one key range: a decode group is one sequence's H heads (its keys read once for all heads),
the shared-prefix pass is one group of all N*H rows against the prefix pages (the prefix is read once
and attended as a matrix product), prefill is one group of T*H rows with a causal limit per token.
The key range is split across programs for parallelism; each split writes a normalised partial output
and its log-sum-exp (base 2), and `_mla_merge_kernel` combines them. The shared-prefix mode writes the
prefix splits and the private-suffix splits side by side, so the same merge joins prefix and suffix.
Same maths and layouts as kernels/mla_reference.py.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


def _empty(*shape: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Every output buffer comes from here, so tests can poison them (fill with NaN) before a run."""
    return torch.empty(*shape, device=device, dtype=dtype)


@triton.jit
def _mla_attend_kernel(q_lat, q_pe, kv, block_tables, kv_lens, o, part_o, part_lse,
                       kv_start, qk_scale, table_stride, page_size, rows_per_group, q_tokens, blocks_per_group,
                       n_splits, split_offset, slots,
                       H: tl.constexpr, R: tl.constexpr, P: tl.constexpr, BR: tl.constexpr, BP: tl.constexpr,
                       BM: tl.constexpr, BN: tl.constexpr, CAUSAL: tl.constexpr, WRITE_PARTIAL: tl.constexpr,
                       DOT_PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    group = pid_m // blocks_per_group
    local = (pid_m % blocks_per_group) * BM + tl.arange(0, BM)
    row_ok = local < rows_per_group
    rows = (group * rows_per_group + local).to(tl.int64)
    cr = tl.arange(0, BR)
    cp = tl.arange(0, BP)
    b_q = tl.load(q_lat + rows[:, None] * R + cr[None, :], mask=row_ok[:, None] & (cr[None, :] < R), other=0.0)
    b_qp = tl.load(q_pe + rows[:, None] * P + cp[None, :], mask=row_ok[:, None] & (cp[None, :] < P), other=0.0)

    kv_end = tl.load(kv_lens + group)
    if CAUSAL:
        limit = kv_end - q_tokens + 1 + local // H
        last_row = tl.max(tl.minimum(local, rows_per_group - 1), axis=0)
        block_end = tl.minimum(kv_end, kv_end - q_tokens + 1 + last_row // H)
    else:
        limit = tl.full([BM], 0, tl.int32) + kv_end
        block_end = kv_end
    per_split = tl.cdiv(tl.cdiv(kv_end - kv_start, n_splits), BN) * BN
    lo = kv_start + pid_s * per_split
    hi = tl.minimum(lo + per_split, block_end)

    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], dtype=tl.float32)
    acc = tl.zeros([BM, BR], dtype=tl.float32)
    table = block_tables + group * table_stride
    ty = kv.dtype.element_ty
    for start in range(lo, hi, BN):
        pos = start + tl.arange(0, BN)
        pos_ok = pos < hi
        page = tl.load(table + pos // page_size, mask=pos_ok, other=0).to(tl.int64)
        base = (page * page_size + pos % page_size) * (R + P)
        k_lat = tl.load(kv + base[:, None] + cr[None, :], mask=pos_ok[:, None] & (cr[None, :] < R), other=0.0)
        k_pe = tl.load(kv + base[:, None] + R + cp[None, :], mask=pos_ok[:, None] & (cp[None, :] < P), other=0.0)
        s = tl.dot(b_q, tl.trans(k_lat), input_precision=DOT_PREC)
        s += tl.dot(b_qp, tl.trans(k_pe), input_precision=DOT_PREC)
        s = tl.where(pos_ok[None, :] & (pos[None, :] < limit[:, None]), s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(ty), k_lat, input_precision=DOT_PREC)
        m_i = m_new
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    if WRITE_PARTIAL:
        slot = (rows * slots + split_offset + pid_s)
        tl.store(part_o + slot[:, None] * R + cr[None, :], out, mask=row_ok[:, None] & (cr[None, :] < R))
        lse = tl.where(l_i > 0, m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
        tl.store(part_lse + slot, lse, mask=row_ok)
    else:
        tl.store(o + rows[:, None] * R + cr[None, :], out.to(o.dtype.element_ty),
                 mask=row_ok[:, None] & (cr[None, :] < R))


@triton.jit
def _mla_merge_kernel(part_o, part_lse, o, lse_out, slots, R: tl.constexpr, BR: tl.constexpr, BS: tl.constexpr,
                      WRITE_LSE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cs = tl.arange(0, BS)
    cr = tl.arange(0, BR)
    lse = tl.load(part_lse + row * slots + cs, mask=cs < slots, other=float("-inf"))
    top = tl.max(lse, axis=0)
    weight = tl.exp2(lse - tl.where(top == float("-inf"), 0.0, top))  # a row with no key at all: weights 0
    parts = tl.load(part_o + (row * slots + cs[:, None]) * R + cr[None, :],
                    mask=(cs[:, None] < slots) & (cr[None, :] < R), other=0.0)
    total = tl.sum(weight, axis=0)
    merged = tl.sum(parts * weight[:, None], axis=0) / tl.where(total > 0, total, 1.0)
    tl.store(o + row * R + cr, merged.to(o.dtype.element_ty), mask=cr < R)
    if WRITE_LSE:
        tl.store(lse_out + row, (top + tl.log2(total)) * 0.6931471805599453)  # base 2 -> natural; -inf if no key


def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def _check(q_latent, q_pe, kv_cache):
    if q_latent.dim() != 3 or q_pe.dim() != 3 or q_latent.shape[:2] != q_pe.shape[:2]:
        raise ValueError(f"q_latent {tuple(q_latent.shape)} and q_pe {tuple(q_pe.shape)} must be [N, H, *] alike")
    if kv_cache.dim() != 3 or kv_cache.shape[-1] != q_latent.shape[-1] + q_pe.shape[-1]:
        raise ValueError(f"kv_cache {tuple(kv_cache.shape)} must be [pages, page_size, R + P]")
    if not kv_cache.is_contiguous():
        raise ValueError("kv_cache must be contiguous")


class _Launch:
    """Shared launch arguments for one call: the queries, the cache and the tile shapes."""

    def __init__(self, q_latent, q_pe, kv_cache, scale, block_m):
        self.q_lat, self.q_pe, self.kv = q_latent.contiguous(), q_pe.contiguous(), kv_cache
        self.heads, self.r, self.p = q_latent.shape[-2], q_latent.shape[-1], q_pe.shape[-1]
        self.rows = q_latent.numel() // self.r
        self.qk_scale = scale * LOG2E
        self.block_m = block_m
        self.prec = "ieee" if q_latent.dtype == torch.float32 else "tf32"

    def attend(self, block_tables, kv_lens, *, kv_start, groups, causal, n_splits, out, part_o, part_lse,
               split_offset, slots, block_n, num_warps, num_stages):
        rows_per_group = self.rows // groups
        blocks = triton.cdiv(rows_per_group, self.block_m)
        _mla_attend_kernel[(groups * blocks, n_splits)](
            self.q_lat, self.q_pe, self.kv, block_tables, kv_lens, out, part_o, part_lse,
            kv_start, self.qk_scale, block_tables.stride(0), self.kv.shape[1], rows_per_group,
            rows_per_group // self.heads, blocks, n_splits, split_offset, slots,
            H=self.heads, R=self.r, P=self.p, BR=_block(self.r), BP=_block(self.p), BM=self.block_m, BN=block_n,
            CAUSAL=causal, WRITE_PARTIAL=part_o is not None, DOT_PREC=self.prec,
            num_warps=num_warps, num_stages=num_stages)

    def partials(self, slots):
        part_o = _empty(self.rows, slots, self.r, device=self.kv.device, dtype=torch.float32)
        part_lse = _empty(self.rows, slots, device=self.kv.device, dtype=torch.float32)
        return part_o, part_lse

    def merge(self, part_o, part_lse, out, lse_out=None):
        slots = part_o.shape[1]
        _mla_merge_kernel[(self.rows,)](part_o, part_lse, out, lse_out, slots, R=self.r, BR=_block(self.r),
                                        BS=triton.next_power_of_2(slots), WRITE_LSE=lse_out is not None,
                                        num_warps=4)


def _splits(programs: int, kv_tokens: int, device: torch.device, *, waves: int, per_sm: int,
            min_tokens: int = 256) -> int:
    """Key splits for `programs` row blocks: at least `waves` waves of per_sm programs on every SM, and of the
    counts from there to twice that, the one whose last wave is fullest (a part-empty wave takes as long as a
    full one); no split shorter than min_tokens, at most 64. per_sm is how many programs of the launch's tiles
    fit on one SM (registers and shared memory), measured on H100."""
    slots = per_sm * _sm_count(device)
    programs = max(programs, 1)
    cap = max(1, min(triton.cdiv(max(kv_tokens, 1), min_tokens), 64))
    least = triton.cdiv(waves * slots, programs)
    if least >= cap:
        return cap

    def last_wave_fill(splits: int) -> float:
        full = splits * programs / slots
        return full / math.ceil(full)

    return max(range(least, min(2 * least, cap + 1)), key=lambda splits: (last_wave_fill(splits), -splits))


def _decode_splits(launch, block_tables, kv_cache, n, device):
    capacity = block_tables.shape[1] * kv_cache.shape[1]
    return _splits(n * triton.cdiv(launch.heads, launch.block_m), capacity, device, waves=8, per_sm=2)


def mla_decode_triton(q_latent: torch.Tensor, q_pe: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                      seq_lens: torch.Tensor, scale: float, *, block_n: int = 32, num_warps: int = 4,
                      num_stages: int = 3, n_splits: int | None = None) -> torch.Tensor:
    """Same contract as kimi_swarm.kernels.mla_reference.mla_decode_reference."""
    _check(q_latent, q_pe, kv_cache)
    n = q_latent.shape[0]
    launch = _Launch(q_latent, q_pe, kv_cache, scale, _block(q_latent.shape[1]))
    n_splits = n_splits or _decode_splits(launch, block_tables, kv_cache, n, q_latent.device)
    out = _empty(*q_latent.shape, device=q_latent.device, dtype=q_latent.dtype)
    part_o, part_lse = launch.partials(n_splits)
    launch.attend(block_tables, seq_lens, kv_start=0, groups=n, causal=False, n_splits=n_splits, out=out,
                  part_o=part_o, part_lse=part_lse, split_offset=0, slots=n_splits, block_n=block_n,
                  num_warps=num_warps, num_stages=num_stages)
    launch.merge(part_o, part_lse, out)
    return out


def mla_decode_from_triton(q_latent: torch.Tensor, q_pe: torch.Tensor, kv_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor, kv_start: int, scale: float, *,
                           block_n: int = 32, num_warps: int = 4, num_stages: int = 3,
                           n_splits: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as kimi_swarm.kernels.mla_reference.mla_decode_from_reference."""
    _check(q_latent, q_pe, kv_cache)
    n, h, _ = q_latent.shape
    launch = _Launch(q_latent, q_pe, kv_cache, scale, _block(h))
    capacity = block_tables.shape[1] * kv_cache.shape[1] - kv_start
    n_splits = n_splits or _splits(n * triton.cdiv(h, launch.block_m), capacity, q_latent.device, waves=8, per_sm=2)
    out = _empty(*q_latent.shape, device=q_latent.device, dtype=q_latent.dtype)
    lse = _empty(n, h, device=q_latent.device, dtype=torch.float32)
    part_o, part_lse = launch.partials(n_splits)
    launch.attend(block_tables, seq_lens, kv_start=kv_start, groups=n, causal=False, n_splits=n_splits, out=out,
                  part_o=part_o, part_lse=part_lse, split_offset=0, slots=n_splits, block_n=block_n,
                  num_warps=num_warps, num_stages=num_stages)
    launch.merge(part_o, part_lse, out, lse)
    return out, lse


def mla_decode_shared_triton(q_latent: torch.Tensor, q_pe: torch.Tensor, kv_cache: torch.Tensor,
                             prefix_pages: torch.Tensor, prefix_len: int, block_tables: torch.Tensor,
                             seq_lens: torch.Tensor, scale: float, *, block_m: int = 64, block_n: int = 64,
                             num_warps: int = 8, num_stages: int = 2, prefix_splits: int | None = None,
                             suffix_splits: int | None = None) -> torch.Tensor:
    """Same contract as kimi_swarm.kernels.mla_reference.mla_decode_shared_reference."""
    _check(q_latent, q_pe, kv_cache)
    n, h, _ = q_latent.shape
    page_size = kv_cache.shape[1]
    if prefix_pages.numel() * page_size < prefix_len:
        raise ValueError(f"{prefix_pages.numel()} prefix pages of {page_size} cannot hold {prefix_len} tokens")
    if q_latent.device.type != "cuda":  # on the GPU this check would cost a host sync per layer and step
        if bool((seq_lens < prefix_len).any()):
            raise ValueError(f"every seq_len must cover the shared prefix of {prefix_len}: {seq_lens.tolist()}")
    device = q_latent.device
    shared = _Launch(q_latent, q_pe, kv_cache, scale, block_m)
    # fewer waves than decode: the merge reads and writes every split's partial output for all N*H rows
    prefix_splits = prefix_splits or _splits(triton.cdiv(n * h, block_m), prefix_len, device, waves=3, per_sm=1)
    private = _Launch(q_latent, q_pe, kv_cache, scale, _block(h))
    capacity = block_tables.shape[1] * page_size - prefix_len
    suffix_splits = suffix_splits or _splits(n * triton.cdiv(h, private.block_m), capacity, device, waves=4,
                                             per_sm=2)
    slots = prefix_splits + suffix_splits
    part_o, part_lse = shared.partials(slots)
    out = _empty(*q_latent.shape, device=q_latent.device, dtype=q_latent.dtype)
    prefix_table = prefix_pages.reshape(1, -1).to(torch.int32)
    prefix_lens = torch.full((1,), prefix_len, device=device, dtype=torch.int32)
    shared.attend(prefix_table, prefix_lens, kv_start=0, groups=1, causal=False, n_splits=prefix_splits,
                  out=out, part_o=part_o, part_lse=part_lse, split_offset=0, slots=slots, block_n=block_n,
                  num_warps=num_warps, num_stages=num_stages)
    private.attend(block_tables, seq_lens, kv_start=prefix_len, groups=n, causal=False, n_splits=suffix_splits,
                   out=out, part_o=part_o, part_lse=part_lse, split_offset=prefix_splits, slots=slots,
                   block_n=32, num_warps=4, num_stages=2)
    shared.merge(part_o, part_lse, out)
    return out


def mla_prefill_triton(q_latent: torch.Tensor, q_pe: torch.Tensor, kv_cache: torch.Tensor, block_table: torch.Tensor,
                       start_pos: int, scale: float, *, block_m: int = 64, block_n: int = 32, num_warps: int = 8,
                       num_stages: int = 2, n_splits: int | None = None) -> torch.Tensor:
    """Same contract as kimi_swarm.kernels.mla_reference.mla_prefill_reference."""
    _check(q_latent, q_pe, kv_cache)
    t, h, _ = q_latent.shape
    if block_table.numel() * kv_cache.shape[1] < start_pos + t:
        raise ValueError(f"block_table of {block_table.numel()} pages cannot hold {start_pos + t} tokens")
    device = q_latent.device
    launch = _Launch(q_latent, q_pe, kv_cache, scale, block_m)
    n_splits = n_splits or _splits(triton.cdiv(t * h, block_m), start_pos + t, device, waves=2, per_sm=1,
                                   min_tokens=1024)
    table = block_table.reshape(1, -1).to(torch.int32)
    lens = torch.full((1,), start_pos + t, device=device, dtype=torch.int32)
    out = _empty(*q_latent.shape, device=q_latent.device, dtype=q_latent.dtype)
    part_o, part_lse = launch.partials(n_splits) if n_splits > 1 else (None, None)
    launch.attend(table, lens, kv_start=0, groups=1, causal=True, n_splits=n_splits, out=out, part_o=part_o,
                  part_lse=part_lse, split_offset=0, slots=n_splits, block_n=block_n, num_warps=num_warps,
                  num_stages=num_stages)
    if part_o is not None:
        launch.merge(part_o, part_lse, out)
    return out


