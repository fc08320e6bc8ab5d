"""PyTorch references for MLA attention over a paged latent cache (absorbed / MQA form).

Cache layout: kv_cache [num_pages, page_size, R + P]; a row is [normed latent c ; k_pe]. Keys are the
whole row, values its first R columns. A sequence's token at position t lives in page
block_table[t // page_size], row t % page_size. Scores are (q_latent . c + q_pe . k_pe) * scale.
These are the oracle for the Triton kernels and the CPU path; they compute in fp32 (float64 for
float64 inputs) and return the dtype of q.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def rows_at(kv_cache: torch.Tensor, block_table: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Cached rows at token `positions` through a block table: [W] positions of one sequence's [pages]
    table, or [N, W] positions of N sequences' [N, pages] tables; returns [..., W, R + P]."""
    page_size, width = kv_cache.shape[1:]
    rows = block_table.long().gather(-1, positions // page_size) * page_size + positions % page_size
    # whole rows by one index_select: indexing [pages, offsets] copies element by element, 2-3x slower on the CPU
    return kv_cache.view(-1, width).index_select(0, rows.reshape(-1)).view(*rows.shape, width)


def gather_tokens(kv_cache: torch.Tensor, block_table: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Rows of positions start..end-1 of one sequence, [end - start, R + P]."""
    return rows_at(kv_cache, block_table, torch.arange(start, end, device=kv_cache.device))


def _attend(q_latent, q_pe, keys, scale, mask=None):
    """q_* [M, H, *] against keys [S, R+P]; returns (o [M, H, R] unnormalised-free, lse [M, H]).

    Unmasked float32 on the CPU runs as one head of M*H queries through the CPU flash kernel (values
    zero-padded to the key width): 1.4-2.5x faster than the score-matrix form at a prefix of 4K rows."""
    dtype = _compute_dtype(q_latent)
    r = q_latent.shape[-1]
    keys = keys.to(dtype)
    if mask is None and dtype == torch.float32 and keys.device.type == "cpu":
        m, h = q_latent.shape[:2]
        q = torch.cat([q_latent.to(dtype), q_pe.to(dtype)], dim=-1).reshape(1, 1, m * h, -1)
        values = F.pad(keys[:, :r], (0, keys.shape[1] - r))
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, keys[None, None], values[None, None], 0.0, False, scale=scale)[:2]
        return out[0, 0, :, :r].reshape(m, h, r), lse[0, 0].reshape(m, h)
    scores = (torch.einsum("mhr,sr->mhs", q_latent.to(dtype), keys[:, :r])
              + torch.einsum("mhp,sp->mhs", q_pe.to(dtype), keys[:, r:])) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    return torch.einsum("mhs,sr->mhr", (scores - lse[..., None]).exp(), keys[:, :r]), lse


def _check_paged(q_latent, q_pe, kv_cache):
    if q_latent.dim() != 3 or q_pe.dim() != 3 or q_latent.shape[:2] != q_pe.shape[:2]:
        raise ValueError(f"q_latent {tuple(q_latent.shape)} and q_pe {tuple(q_pe.shape)} must be [N, H, *] alike")
    if kv_cache.dim() != 3 or kv_cache.shape[-1] != q_latent.shape[-1] + q_pe.shape[-1]:
        raise ValueError(f"kv_cache {tuple(kv_cache.shape)} must be [pages, page_size, R + P]")


def mla_decode_reference(q_latent: torch.Tensor, q_pe: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                         seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """One query token per sequence (N, H heads) over its first seq_lens[n] cached tokens."""
    _check_paged(q_latent, q_pe, kv_cache)
    out = torch.empty_like(q_latent)
    for n, length in enumerate(seq_lens.tolist()):
        keys = gather_tokens(kv_cache, block_tables[n], 0, length)
        o, _ = _attend(q_latent[n:n + 1], q_pe[n:n + 1], keys, scale)
        out[n] = o[0].to(out.dtype)
    return out


def mla_decode_from_reference(q_latent: torch.Tensor, q_pe: torch.Tensor, kv_cache: torch.Tensor,
                              block_tables: torch.Tensor, seq_lens: torch.Tensor, kv_start: int,
                              scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """mla_decode over the keys at positions kv_start..seq_lens[n]-1 only, with each row's log-sum-exp (natural
    log, fp32; float64 for float64 inputs): the part of a decode step left when the first kv_start keys are
    attended elsewhere (an expanded shared prefix) and merged by log-sum-exp. A row with no key there gives 0
    and -inf."""
    _check_paged(q_latent, q_pe, kv_cache)
    starts = seq_lens.long().to(kv_cache.device) - 1
    o, lse = _attend_own_rows(q_latent[:, None], q_pe[:, None], kv_cache, block_tables, starts, kv_start, scale)
    return o[:, 0].to(q_latent.dtype), lse[:, 0]


def merge_attention(o_a: torch.Tensor, lse_a: torch.Tensor, o_b: torch.Tensor,
                    lse_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine two normalised partial attentions over disjoint key sets by log-sum-exp."""
    lse = torch.logaddexp(lse_a, lse_b)
    return o_a * (lse_a - lse).exp()[..., None] + o_b * (lse_b - lse).exp()[..., None]


def mla_decode_shared_reference(q_latent: torch.Tensor, q_pe: torch.Tensor, kv_cache: torch.Tensor,
                                prefix_pages: torch.Tensor, prefix_len: int, block_tables: torch.Tensor,
                                seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """Shared prefix attended once as one [N*H] x [prefix] product; the private suffixes, padded to the
    longest, as one batched product; the two merged by log-sum-exp (it runs in every CPU decode step)."""
    _check_paged(q_latent, q_pe, kv_cache)
    starts = seq_lens.long().to(kv_cache.device) - 1
    return mla_prefill_shared_reference(q_latent[:, None], q_pe[:, None], kv_cache, prefix_pages, prefix_len,
                                        block_tables, starts, scale)[:, 0]


def mla_prefill_shared_reference(q_latent: torch.Tensor, q_pe: torch.Tensor, kv_cache: torch.Tensor,
                                 prefix_pages: torch.Tensor, prefix_len: int, block_tables: torch.Tensor,
                                 starts: torch.Tensor, scale: float) -> torch.Tensor:
    """T new tokens of each of N sequences that share their first `prefix_len` cached tokens (forks), all
    already cached at starts[n]..starts[n]+T-1 (starts >= prefix_len): q_* [N, T, H, *] -> [N, T, H, R].

    The prefix is read once and attended by all N*T queries in one product; each sequence's own rows,
    padded to the longest, in one batched product with the causal mask; the two merged by log-sum-exp.
    A wave of forks each finishing a few tokens otherwise gathered and attended its whole context alone.
    One sequence with its own past as the "prefix" (N = 1, prefix_len = start) is a chunk's causal
    attention with the unmasked part, its past, in one unmasked product (the CPU flash kernel).
    """
    n, t, h, r = q_latent.shape
    dtype = _compute_dtype(q_latent)
    if prefix_len:
        prefix = gather_tokens(kv_cache, prefix_pages, 0, prefix_len)
        o_pre, lse_pre = _attend(q_latent.reshape(1, n * t * h, r), q_pe.reshape(1, n * t * h, -1), prefix, scale)
        o_pre, lse_pre = o_pre.view(n, t, h, r), lse_pre.view(n, t, h)
    else:  # nothing shared: every row is the sequence's own
        o_pre = q_latent.new_zeros(n, t, h, r, dtype=dtype)
        lse_pre = q_latent.new_full((n, t, h), float("-inf"), dtype=dtype)
    o_own, lse_own = _attend_own_rows(q_latent, q_pe, kv_cache, block_tables, starts, prefix_len, scale)
    return merge_attention(o_pre, lse_pre, o_own, lse_own).to(q_latent.dtype)


def _attend_own_rows(q_latent: torch.Tensor, q_pe: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                     starts: torch.Tensor, first: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """T queries of each of N sequences, at positions starts[n]..starts[n]+T-1, over that sequence's keys from
    position `first` on, causally: (o [N, T, H, R], lse [N, T, H]) in the compute dtype. The rows, padded to the
    longest sequence, go in one batched product; a query with no key there gives 0 and -inf."""
    n, t, h, r = q_latent.shape
    dtype = _compute_dtype(q_latent)
    ends = starts.long().to(kv_cache.device) + t  # [N]
    width = int(ends.max()) - first
    if width <= 0:
        return q_latent.new_zeros(n, t, h, r, dtype=dtype), q_latent.new_full((n, t, h), float("-inf"), dtype=dtype)
    positions = first + torch.arange(width, device=kv_cache.device)
    query_positions = starts.long().to(kv_cache.device)[:, None] + torch.arange(t, device=kv_cache.device)  # [N, T]
    visible = positions[None, None, :] <= query_positions[..., None]  # [N, T, W]
    positions = torch.minimum(positions[None, :], ends[:, None] - 1)  # padding re-reads a valid row
    keys = rows_at(kv_cache, block_tables, positions).to(dtype)  # [N, W, R + P]
    scores = (torch.einsum("nthr,nwr->nthw", q_latent.to(dtype), keys[..., :r])
              + torch.einsum("nthp,nwp->nthw", q_pe.to(dtype), keys[..., r:])) * scale
    scores = scores.masked_fill_(~visible[:, :, None, :], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = (scores - torch.where(lse.isinf(), 0.0, lse)[..., None]).exp_()
    return torch.einsum("nthw,nwr->nthr", probs, keys[..., :r]), lse


def mla_prefill_reference(q_latent: torch.Tensor, q_pe: torch.Tensor, kv_cache: torch.Tensor, block_table: torch.Tensor,
                          start_pos: int, scale: float) -> torch.Tensor:
    """T new tokens (already cached at start_pos..start_pos+T-1) attend causally to the sequence."""
    _check_paged(q_latent, q_pe, kv_cache)
    t = q_latent.shape[0]
    keys = gather_tokens(kv_cache, block_table, 0, start_pos + t)
    key_pos = torch.arange(start_pos + t, device=kv_cache.device)
    query_pos = torch.arange(start_pos, start_pos + t, device=kv_cache.device)
    o, _ = _attend(q_latent, q_pe, keys, scale, mask=key_pos[None, :] <= query_pos[:, None])
    return o.to(q_latent.dtype)
