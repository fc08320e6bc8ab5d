"""The PyTorch references, which are the CPU path, against the obvious forms in float64.

The chunked and batched references are rewritten for CPU speed; the token-by-token recurrence and the
per-sequence attention loop stay the oracles. No Triton needed.
"""

from __future__ import annotations

import pytest
import torch
from kernel_support import float64, kda_inputs, rel_err

from kimi_swarm.kernels import kda_reference, mla_reference


@pytest.mark.parametrize("chunk_size, t", [(32, 75), (64, 64), (16, 1), (32, 2), (32, 9), (64, 20)])
def test_chunked_kda_equals_the_recurrence(chunk_size, t):
    q, k, v, g, beta = float64(*kda_inputs(2, t, 3, 16, 8))
    h0 = torch.randn(2, 3, 16, 8, dtype=torch.float64)
    o, final = kda_reference.chunk_kda_reference(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                                 use_qk_l2norm=True, chunk_size=chunk_size)
    ref_o, ref_final = kda_reference.naive_recurrent_kda(q, k, v, g, beta, initial_state=h0,
                                                         output_final_state=True, use_qk_l2norm=True)
    assert rel_err(o, ref_o) <= 1e-12 and rel_err(final, ref_final) <= 1e-12


def test_chunked_kda_stays_exact_in_float32_when_decays_span_hundreds_of_nats():
    """A trained model's chunks hold channels that decay by up to ~1,700 nats (measured on the shipped
    model); exp(-G) of such a channel overflows float32, so the chunked form must never form it."""
    q, k, v, g, beta = kda_inputs(1, 96, 2, 16, 8, gate_scale=60.0)
    assert -g.sum(dim=1).min() > 1000
    o, final = kda_reference.chunk_kda_reference(q, k, v, g, beta, output_final_state=True, use_qk_l2norm=True)
    ref_o, ref_final = kda_reference.naive_recurrent_kda(*float64(q, k, v, g, beta), output_final_state=True,
                                                         use_qk_l2norm=True)
    assert torch.isfinite(o).all() and rel_err(o, ref_o) <= 1e-5 and rel_err(final, ref_final) <= 1e-5


def test_recurrent_step_equals_the_recurrence_and_touches_only_its_rows():
    q, k, v, g, beta = float64(*kda_inputs(3, 1, 2, 16, 8))
    pool = torch.randn(6, 2, 16, 8, dtype=torch.float64)
    slots = torch.tensor([4, 0, 2])
    before = pool.clone()
    o = kda_reference.recurrent_kda_reference(q, k, v, g, beta, pool, slots, scale=0.3)
    ref_o, ref_final = kda_reference.naive_recurrent_kda(q, k, v, g, beta, scale=0.3, initial_state=before[slots],
                                                         output_final_state=True)
    assert rel_err(o, ref_o) <= 1e-12 and rel_err(pool[slots], ref_final) <= 1e-12
    assert torch.equal(pool[[1, 3, 5]], before[[1, 3, 5]])
    with pytest.raises(ValueError, match="one token"):
        kda_reference.recurrent_kda_reference(*float64(*kda_inputs(3, 2, 2, 16, 8)), pool, slots)


def _forked_cache(ends: list[int], r: int, p: int, page: int = 4):
    """A float64 paged cache of forks of an 8-token prefix on two shared pages (7, 3), each with its own pages
    up to `ends[i]` tokens; rows past a sequence's end are NaN, so reading padding shows. (cache, prefix
    pages, block tables)"""
    prefix_pages = [7, 3]
    kv = torch.randn(10 + sum(-(-end // page) for end in ends), page, r + p, dtype=torch.float64)
    tables = torch.full((len(ends), max(-(-end // page) for end in ends) + 1), -1)
    private = iter(range(10, kv.shape[0]))
    for i, end in enumerate(ends):
        own = [next(private) for _ in range(-(-end // page) - 2)]
        tables[i, :2 + len(own)] = torch.tensor(prefix_pages + own)
        if own and end % page:
            kv[own[-1], end % page:] = torch.nan
    return kv, torch.tensor(prefix_pages), tables


def test_shared_prefix_decode_equals_per_sequence_decode():
    """An 8-token prefix on two shared pages; suffixes of 0, 1 and 13 tokens, padded into one batch."""
    n, h, r, p = 3, 2, 16, 8
    lengths = [8, 9, 21]
    kv, prefix_pages, tables = _forked_cache(lengths, r, p)
    ql, qp = torch.randn(n, h, r, dtype=torch.float64), torch.randn(n, h, p, dtype=torch.float64)
    seq_lens = torch.tensor(lengths, dtype=torch.int32)
    shared = mla_reference.mla_decode_shared_reference(ql, qp, kv, prefix_pages, 8, tables, seq_lens, 0.2)
    plain = mla_reference.mla_decode_reference(ql, qp, kv, tables, seq_lens, 0.2)
    assert not plain.isnan().any() and rel_err(shared, plain) <= 1e-12


def test_shared_prefix_chunk_equals_per_sequence_prefill():
    """Three forks of an 8-token prefix (two shared pages) run 3 new tokens each at different starts, in one
    call: each query sees the prefix, its own earlier rows and nothing past itself."""
    n, t, h, r, p = 3, 3, 2, 16, 8
    starts = [8, 9, 18]
    kv, prefix_pages, tables = _forked_cache([start + t for start in starts], r, p)
    ql, qp = torch.randn(n, t, h, r, dtype=torch.float64), torch.randn(n, t, h, p, dtype=torch.float64)
    shared = mla_reference.mla_prefill_shared_reference(ql, qp, kv, prefix_pages, 8, tables, torch.tensor(starts), 0.2)
    plain = torch.stack([mla_reference.mla_prefill_reference(ql[i], qp[i], kv, tables[i], start, 0.2)
                         for i, start in enumerate(starts)])
    assert not plain.isnan().any() and rel_err(shared, plain) <= 1e-12
    for i, start in enumerate(starts):  # one sequence alone: its own past as the unmasked part, or nothing shared
        for past in (start, 0):
            alone = mla_reference.mla_prefill_shared_reference(ql[i:i + 1], qp[i:i + 1], kv, tables[i], past,
                                                               tables[i:i + 1], torch.tensor([start]), 0.2)
            assert rel_err(alone[0], plain[i]) <= 1e-12


def test_float32_shared_prefix_attention_matches_float64():
    """Float32 on the CPU attends the shared prefix through the flash kernel; it must agree with the float64
    score-matrix form, output and log-sum-exp alike (the merge with each sequence's own rows uses both)."""
    n, t, h, r, p, page = 2, 3, 4, 16, 8, 4
    kv = torch.randn(12, page, r + p, dtype=torch.float64)
    tables = torch.tensor([[0, 1, 2, 3, 4], [0, 1, 2, 5, 6]])
    starts = torch.tensor([13, 16])
    ql, qp = torch.randn(n, t, h, r, dtype=torch.float64), torch.randn(n, t, h, p, dtype=torch.float64)
    want = mla_reference.mla_prefill_shared_reference(ql, qp, kv, tables[0, :3], 12, tables, starts, 0.3)
    got = mla_reference.mla_prefill_shared_reference(ql.float(), qp.float(), kv.float(), tables[0, :3], 12, tables,
                                                     starts, 0.3)
    assert got.dtype == torch.float32 and rel_err(got.double(), want) <= 1e-5
