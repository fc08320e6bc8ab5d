"""Triton kernels against float64 references, run on CPU through the Triton interpreter.

CI has no GPU: TRITON_INTERPRET=1 runs the real kernels (their indexing, masks, splits and maths) in
numpy on small float32 shapes; bf16 and speed are checked on the GPU by benchmarks/kernel_bench.py. Every
test draws fresh random inputs and poisons every buffer the kernels allocate, so an element the kernel
forgets to write turns the result into NaN.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

if torch.cuda.is_available():
    pytest.skip("the Triton interpreter cannot run where Triton's own library was compiled for a GPU; there the "
                "compiled kernels are checked against float64 by benchmarks/kernel_bench.py and inside the model by "
                "tests/test_gpu_engine.py", allow_module_level=True)
pytest.importorskip("triton", reason="Triton is not installed; the GPU kernels cannot be checked")

from kernel_support import float64, kda_decode_step_float64, kda_inputs, rel_err  # noqa: E402

from kimi_swarm import kernels  # noqa: E402  (tests/conftest.py has set TRITON_INTERPRET=1 before this first import)
from kimi_swarm.kernels import (  # noqa: E402
    fp8_reference,
    fp8_triton,
    kda_reference,
    kda_triton,
    mla_reference,
    mla_triton,
    moe_reference,
    moe_triton,
    norm_reference,
    norm_triton,
)

FP32_TOL = 1e-4


def poisoned_empty(*shape, device, dtype):
    return torch.full(shape, float("nan") if dtype.is_floating_point else -1, device=device, dtype=dtype)


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    monkeypatch.setattr(kda_triton, "_empty", poisoned_empty)
    monkeypatch.setattr(mla_triton, "_empty", poisoned_empty)
    monkeypatch.setattr(norm_triton, "_empty", poisoned_empty)
    monkeypatch.setattr(moe_triton, "_empty", poisoned_empty)
    monkeypatch.setattr(fp8_triton, "_empty", poisoned_empty)


@pytest.mark.parametrize("gate_scale", [1.0, 5.0, 40.0], ids=["factored-decay", "mixed-decay", "exact-decay"])
def test_chunk_kda_matches_naive_recurrence(gate_scale):
    """B=2, T not a chunk multiple, K != V, an initial state; 40x gates force the exact-decay path for every
    16-token block, 5x gates for about two blocks in three (the rest factored, side by side in one chunk)."""
    q, k, v, g, beta = kda_inputs(2, 70, 2, 16, 32, gate_scale=gate_scale)
    h0 = torch.randn(2, 2, 16, 32)
    o, final = kda_triton.chunk_kda_triton(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                           use_qk_l2norm=True)
    ref_o, ref_final = kda_reference.naive_recurrent_kda(*float64(q, k, v, g, beta), initial_state=h0.double(),
                                                         output_final_state=True, use_qk_l2norm=True)
    assert o.dtype == torch.float32 and final.dtype == torch.float32
    assert rel_err(o, ref_o) <= FP32_TOL
    assert rel_err(final, ref_final) <= FP32_TOL


def test_chunk_kda_final_state_keeps_fp32_precision_under_fast_decay():
    """One chunk with strong gates: the last tokens' decay to the chunk end must not be a difference of two
    long sums (that cancellation once cost the final state three digits)."""
    q, k, v, g, beta = kda_inputs(1, 64, 2, 16, 16, gate_scale=30.0)
    o, final = kda_triton.chunk_kda_triton(q, k, v, g, beta, output_final_state=True, use_qk_l2norm=True)
    ref_o, ref_final = kda_reference.naive_recurrent_kda(*float64(q, k, v, g, beta), output_final_state=True,
                                                         use_qk_l2norm=True)
    assert rel_err(o, ref_o) <= 1e-5
    assert rel_err(final, ref_final) <= 1e-5


def test_chunk_kda_varlen_and_single_tokens():
    """cu_seqlens with a T=1 sequence, an exact 64-token chunk, an empty sequence (its state passes through) and a
    ragged tail; custom scale, no l2norm."""
    q, k, v, g, beta = kda_inputs(1, 150, 1, 32, 16)
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    cu = torch.tensor([0, 1, 65, 65, 66, 150])
    h0 = torch.randn(5, 1, 32, 16)
    o, final = kda_triton.chunk_kda_triton(q, k, v, g, beta, scale=0.3, initial_state=h0, output_final_state=True,
                                           cu_seqlens=cu)
    ref_o, ref_final = kda_reference.chunk_kda_reference(*float64(q, k, v, g, beta), scale=0.3,
                                                         initial_state=h0.double(), output_final_state=True,
                                                         cu_seqlens=cu)
    assert rel_err(o, ref_o) <= FP32_TOL
    assert rel_err(final, ref_final) <= FP32_TOL
    assert torch.equal(final[2], h0[2])


def test_chunk_table_splits_each_sequence_into_chunks_of_64():
    """Built on the host (no device sync): a 1-token, an empty, an exact-chunk and a ragged sequence."""
    cu, starts, ends, first = kda_triton._chunk_table((0, 1, 1, 65, 200), torch.device("cpu"))
    assert cu.tolist() == [0, 1, 1, 65, 200]
    assert starts.tolist() == [0, 1, 65, 129, 193]
    assert ends.tolist() == [1, 65, 129, 193, 200]
    assert first.tolist() == [0, 1, 1, 2]
    assert kda_triton._chunk_table((0, 1, 1, 65, 200), torch.device("cpu"))[1] is starts  # kept per layout


def test_chunk_kda_without_states_and_t1():
    q, k, v, g, beta = kda_inputs(3, 1, 2, 16, 16)
    o, final = kda_triton.chunk_kda_triton(q, k, v, g, beta, use_qk_l2norm=True)
    ref_o, _ = kda_reference.naive_recurrent_kda(*float64(q, k, v, g, beta), use_qk_l2norm=True)
    assert final is None
    assert rel_err(o, ref_o) <= FP32_TOL


def test_recurrent_kda_updates_only_its_pool_rows():
    q, k, v, g, beta = kda_inputs(5, 1, 2, 32, 16)
    pool = torch.randn(9, 2, 32, 16)
    slots = torch.tensor([6, 1, 3, 0, 8])
    ref_pool = pool.double().clone()
    ref_o = kda_reference.recurrent_kda_reference(*float64(q, k, v, g, beta), ref_pool, slots, use_qk_l2norm=True)
    before = pool.clone()
    o = kda_triton.recurrent_kda_triton(q, k, v, g, beta, pool, slots, use_qk_l2norm=True)
    untouched = torch.ones(9, dtype=torch.bool)
    untouched[slots] = False
    assert torch.equal(pool[untouched], before[untouched])
    assert rel_err(o, ref_o) <= FP32_TOL
    assert rel_err(pool[slots], ref_pool[slots]) <= FP32_TOL


def test_kda_bad_shapes_are_named():
    q, k, v, g, beta = kda_inputs(2, 8, 2, 16, 16)
    with pytest.raises(ValueError, match="cu_seqlens needs batch size 1"):
        kda_triton.chunk_kda_triton(q, k, v, g, beta, cu_seqlens=torch.tensor([0, 8]))
    with pytest.raises(ValueError, match="initial_state"):
        kda_triton.chunk_kda_triton(q, k, v, g, beta, initial_state=torch.zeros(1, 2, 16, 16))
    with pytest.raises(ValueError, match="one token per sequence"):
        kda_triton.recurrent_kda_triton(q, k, v, g, beta, torch.zeros(4, 2, 16, 16), torch.arange(2))


def paged_cache(n, prefix_len, seq_lens, r, p, page_size):
    """A cache in shuffled pages; all sequences share the prefix pages as their first block-table entries."""
    prefix_pages = -(-prefix_len // page_size)
    private = [-(-length // page_size) - prefix_pages for length in seq_lens]
    num_pages = prefix_pages + sum(private) + 3
    order = torch.randperm(num_pages).to(torch.int32)
    width = prefix_pages + max(private)
    tables = torch.zeros(n, width, dtype=torch.int32)
    tables[:, :prefix_pages] = order[:prefix_pages]
    used = prefix_pages
    for i, count in enumerate(private):
        tables[i, prefix_pages:prefix_pages + count] = order[used:used + count]
        used += count
    kv = torch.randn(num_pages, page_size, r + p)
    return kv, order[:prefix_pages], tables, torch.tensor(seq_lens, dtype=torch.int32)


@pytest.mark.parametrize("n_splits", [None, 3])
def test_mla_decode_matches_reference(n_splits):
    n, h, r, p = 3, 4, 32, 16
    kv, _, tables, lens = paged_cache(n, 0, [7, 40, 23], r, p, page_size=8)
    ql, qp = torch.randn(n, h, r), torch.randn(n, h, p)
    out = mla_triton.mla_decode_triton(ql, qp, kv, tables, lens, 0.2, n_splits=n_splits)
    ref = mla_reference.mla_decode_reference(*float64(ql, qp, kv), tables, lens, 0.2)
    assert rel_err(out, ref) <= FP32_TOL


def test_mla_split_count_fills_the_last_wave(monkeypatch):
    """On 132 SMs, 50 row blocks of the shared-prefix pass: 13 splits make 650 programs, 4.9 waves, where 16 would
    make 6.06 waves and so take 7 (measured on H100: 1.04 vs 1.17 ms). Capped by the key count and at 64."""
    monkeypatch.setattr(mla_triton, "_sm_count", lambda device: 132)
    cpu = torch.device("cpu")
    assert mla_triton._splits(50, 32768, cpu, waves=3, per_sm=1) == 13
    splits = mla_triton._splits(100, 33024, cpu, waves=8, per_sm=2)
    assert splits * 100 / 264 >= 8 and (splits * 100) % 264 >= 0.95 * 264
    assert mla_triton._splits(100, 300, cpu, waves=8, per_sm=2) == 2
    assert mla_triton._splits(1, 10 ** 6, cpu, waves=8, per_sm=2) == 64


def test_mla_decode_ignores_unwritten_page_rows():
    """A page's rows past a sequence's end hold whatever was there (NaN here); no output may see them."""
    n, h, r, p = 3, 4, 32, 16
    kv, _, tables, lens = paged_cache(n, 0, [7, 40, 23], r, p, page_size=8)
    for i, length in enumerate(lens.tolist()):
        for pos in range(length, -(-length // 8) * 8):
            kv[tables[i, pos // 8], pos % 8] = float("nan")
    ql, qp = torch.randn(n, h, r), torch.randn(n, h, p)
    out = mla_triton.mla_decode_triton(ql, qp, kv, tables, lens, 0.2, n_splits=2)
    ref = mla_reference.mla_decode_reference(*float64(ql, qp, kv), tables, lens, 0.2)
    assert rel_err(out, ref) <= FP32_TOL


@pytest.mark.parametrize("splits", [(None, None), (2, 3)])
def test_mla_decode_shared_equals_plain_decode(splits):
    """A 19-token prefix over 8-token pages (a shared partial page), suffixes of 0..26 tokens."""
    n, h, r, p = 3, 4, 32, 16
    kv, prefix_pages, tables, lens = paged_cache(n, 19, [19, 30, 45], r, p, page_size=8)
    ql, qp = torch.randn(n, h, r), torch.randn(n, h, p)
    out = mla_triton.mla_decode_shared_triton(ql, qp, kv, prefix_pages, 19, tables, lens, 0.2, block_m=16,
                                              prefix_splits=splits[0], suffix_splits=splits[1])
    ref = mla_reference.mla_decode_reference(*float64(ql, qp, kv), tables, lens, 0.2)
    assert rel_err(out, ref) <= FP32_TOL
    shared_ref = mla_reference.mla_decode_shared_reference(*float64(ql, qp, kv), prefix_pages, 19, tables, lens, 0.2)
    assert rel_err(shared_ref, ref) <= 1e-12


@pytest.mark.parametrize("n_splits", [None, 2])
def test_mla_decode_from_a_position_merges_with_the_keys_before_it_into_plain_decode(n_splits):
    """The private part of a decode step whose first 16 keys (an expanded prefix) are attended elsewhere."""
    n, h, r, p = 3, 4, 32, 16
    kv, _, tables, lens = paged_cache(n, 16, [17, 30, 45], r, p, page_size=8)
    ql, qp = torch.randn(n, h, r), torch.randn(n, h, p)
    out, lse = mla_triton.mla_decode_from_triton(ql, qp, kv, tables, lens, 16, 0.2, n_splits=n_splits)
    ref, ref_lse = mla_reference.mla_decode_from_reference(*float64(ql, qp, kv), tables, lens, 16, 0.2)
    assert rel_err(out, ref) <= FP32_TOL and rel_err(lse, ref_lse) <= FP32_TOL
    before, before_lse = mla_reference.mla_decode_from_reference(*float64(ql, qp, kv), tables,
                                                                 torch.full((n,), 16), 0, 0.2)
    merged = mla_reference.merge_attention(before, before_lse, ref, ref_lse)
    assert rel_err(merged, mla_reference.mla_decode_reference(*float64(ql, qp, kv), tables, lens, 0.2)) <= 1e-12
    for decode_from in (mla_reference.mla_decode_from_reference, mla_triton.mla_decode_from_triton):
        nothing, nothing_lse = decode_from(ql, qp, kv, tables, torch.tensor([16, 30, 45], dtype=torch.int32), 30, 0.2)
        assert bool((nothing[:2] == 0).all()) and bool(nothing_lse[:2].isneginf().all())  # rows with no key there
        assert bool(nothing_lse[2].isfinite().all())


def test_mla_decode_shared_rejects_short_sequences():
    kv, prefix_pages, tables, lens = paged_cache(2, 15, [16, 14], 32, 16, page_size=8)
    ql, qp = torch.randn(2, 4, 32), torch.randn(2, 4, 16)
    with pytest.raises(ValueError, match="shared prefix"):
        mla_triton.mla_decode_shared_triton(ql, qp, kv, prefix_pages, 15, tables, lens, 0.2)


@pytest.mark.parametrize("block_m,n_splits", [(64, None), (16, 3)])
def test_mla_prefill_is_causal_over_the_cache(block_m, n_splits):
    t, h, r, p, start = 10, 4, 32, 16, 25
    kv, _, tables, _ = paged_cache(1, 0, [start + t], r, p, page_size=8)
    ql, qp = torch.randn(t, h, r), torch.randn(t, h, p)
    out = mla_triton.mla_prefill_triton(ql, qp, kv, tables[0], start, 0.2, block_m=block_m, n_splits=n_splits)
    ref = mla_reference.mla_prefill_reference(*float64(ql, qp, kv), tables[0], start, 0.2)
    assert rel_err(out, ref) <= FP32_TOL


def small_rows(*shape):
    """Rows of different scales, small enough that eps=1e-5 moves the result well past FP32_TOL."""
    return torch.randn(*shape) * torch.rand(*shape[:-1], 1) * 0.02


def test_rms_norm_3d_ragged_width():
    """[3, 7, 40]: 40 columns are masked in a block of 64, 21 rows leave the second program of 16 part-empty."""
    x, w = small_rows(3, 7, 40), torch.randn(40)
    out = norm_triton.rms_norm_triton(x, w, 1e-5)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert rel_err(out, norm_reference.rms_norm_float64(x, w, 1e-5)) <= FP32_TOL


def test_rms_norm_reads_a_strided_slice_in_place():
    """The MLA latent norm's input: the first 64 columns of [5, 80] rows, read through the row stride."""
    big = small_rows(5, 80)
    x, w = big[..., :64], torch.randn(64)
    assert norm_triton._rows(x).data_ptr() == big.data_ptr()
    out = norm_triton.rms_norm_triton(x, w, 1e-5)
    assert out.is_contiguous()
    assert rel_err(out, norm_reference.rms_norm_float64(x, w, 1e-5)) <= FP32_TOL


def test_rms_norm_rounds_to_the_input_dtype_before_the_weight():
    """fp16 x, fp32 weight: HF casts the normalised x to fp16 first, and the product promotes to fp32."""
    x, w = small_rows(4, 96).half(), torch.randn(96)
    out = norm_triton.rms_norm_triton(x, w, 1e-5)
    ref = norm_reference.rms_norm_reference(x, w, 1e-5)
    assert out.dtype == ref.dtype == torch.float32
    assert rel_err(out, ref) <= 1e-5 < rel_err(norm_reference.rms_norm_float64(x, w, 1e-5), ref)


def test_gated_rms_norm_per_head():
    """[N, H, D] KDA output: each head normalised on its own, times weight and sigmoid(gate) (here a slice,
    so its row stride differs from x's)."""
    x, gate, w = small_rows(6, 4, 32), (torch.randn(6, 4, 40) * 3)[..., :32], torch.randn(32)
    out = norm_triton.gated_rms_norm_triton(x, gate, w, 1e-5)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert rel_err(out, norm_reference.rms_norm_float64(x, w, 1e-5, gate)) <= FP32_TOL


def test_norm_bad_shapes_are_named():
    x = torch.randn(2, 3, 16)
    with pytest.raises(ValueError, match="weight"):
        norm_triton.rms_norm_triton(x, torch.ones(8), 1e-5)
    with pytest.raises(ValueError, match="gate"):
        norm_triton.gated_rms_norm_triton(x, torch.randn(2, 16), torch.ones(16), 1e-5)


def test_cpu_tensors_dispatch_to_the_references():
    q, k, v, g, beta = kda_inputs(1, 20, 2, 16, 16)
    o, final = kernels.chunk_kda(q, k, v, g, beta, output_final_state=True, use_qk_l2norm=True)
    ref_o, ref_final = kda_reference.chunk_kda_reference(q, k, v, g, beta, output_final_state=True,
                                                         use_qk_l2norm=True)
    assert torch.equal(o, ref_o) and torch.equal(final, ref_final)
    kv, _, tables, lens = paged_cache(2, 0, [5, 9], 32, 16, page_size=4)
    ql, qp = torch.randn(2, 4, 32), torch.randn(2, 4, 16)
    assert torch.equal(kernels.mla_decode(ql, qp, kv, tables, lens, 0.2),
                       mla_reference.mla_decode_reference(ql, qp, kv, tables, lens, 0.2))
    x, gate, w = torch.randn(3, 5, 24), torch.randn(3, 5, 24), torch.randn(24).bfloat16()
    assert torch.equal(kernels.rms_norm(x, w, 1e-5), norm_reference.rms_norm_reference(x, w, 1e-5))
    assert torch.equal(kernels.gated_rms_norm(x, gate, w, 1e-5),
                       norm_reference.gated_rms_norm_reference(x, gate, w, 1e-5))


def test_kda_kernels_name_the_head_dims_they_take():
    """Head dims over kda_triton.MAX_HEAD_DIM are refused by the kernels (the dispatcher runs them on the reference)."""
    q, k, v, g, beta = kda_inputs(1, 16, 2, 256, 256)
    with pytest.raises(ValueError, match="head dims K, V up to 128, got K=256, V=256"):
        kda_triton.chunk_kda_triton(q, k, v, g, beta)
    with pytest.raises(ValueError, match="up to 128"):
        kda_triton.recurrent_kda_triton(q[:, :1], k[:, :1], v[:, :1], g[:, :1], beta[:, :1],
                                        torch.zeros(1, 2, 256, 256), torch.zeros(1, dtype=torch.long))


def _experts(num_experts, hidden, inter, *, fp8):
    w13 = torch.randn(num_experts, 2 * inter, hidden) * hidden ** -0.5
    w2 = torch.randn(num_experts, hidden, inter) * inter ** -0.5
    if not fp8:
        return w13, w2, None, None
    (q13, s13), (q2, s2) = fp8_reference.quantize_rows(w13), fp8_reference.quantize_rows(w2)
    return q13, q2, s13, s2


@pytest.mark.parametrize("fp8", [False, True], ids=["fp32-weights", "fp8-weights"])
@pytest.mark.parametrize("m,k,num_experts,block_m,pairwise", [
    (1, 2, 8, None, False), (5, 3, 8, None, False), (40, 2, 4, None, False), (40, 2, 4, 64, False),
    (1, 2, 8, None, None), (5, 3, 8, None, None), (40, 2, 4, None, True)],
    ids=["one-token", "few-tokens", "experts-over-one-block", "large-blocks", "one-token-pairwise",
         "few-tokens-pairwise", "many-tokens-pairwise"])
def test_fused_moe_matches_float64(m, k, num_experts, block_m, pairwise, fp8):
    """Hidden and intermediate sizes that are not tile multiples; 40 tokens over 4 experts put more than one
    block of pairs on an expert, and padded rows in the last block of each. A few tokens take the pairwise
    GEMVs by default (pairwise None); the sorted blocks are forced for them too."""
    hidden, inter = 48, 40
    w13, w2, s13, s2 = _experts(num_experts, hidden, inter, fp8=fp8)
    x = torch.randn(m, hidden)
    ids = torch.stack([torch.randperm(num_experts)[:k] for _ in range(m)])
    weights = torch.rand(m, k)
    got = moe_triton.fused_moe_triton(x, w13, w2, ids, weights, s13, s2, block_m=block_m, pairwise=pairwise)
    want = moe_reference.fused_moe_reference(x.double(), w13 if fp8 else w13.double(), w2 if fp8 else w2.double(),
                                             ids, weights.double(), s13, s2)
    assert got.dtype == torch.float32 and got.shape == (m, hidden)
    assert rel_err(got, want) <= FP32_TOL


def test_align_block_size_groups_pairs_by_expert():
    ids = torch.tensor([[3, 1], [1, 0], [3, 1]])
    sorted_pairs, block_expert = moe_triton.align_block_size(ids, num_experts=4, block_m=2)
    pad = ids.numel()
    blocks = sorted_pairs.view(-1, 2).tolist()
    assert blocks[:4] == [[3, pad], [1, 2], [5, pad], [0, 4]]  # expert 0: pair 3; 1: pairs 1, 2, 5; 3: pairs 0, 4
    assert block_expert[:4].tolist() == [0, 1, 1, 3]
    assert all(e == 4 for e in block_expert[4:].tolist()) and all(p == pad for b in blocks[4:] for p in b)


@pytest.mark.parametrize("rows", [1, 17])
def test_fp8_linear_weight_only_matches_float64(rows):
    weight, scale = fp8_reference.quantize_rows(torch.randn(40, 48))
    x = torch.randn(rows, 48)
    got = fp8_triton.fp8_linear_triton(x, weight, scale)
    want = fp8_reference.fp8_linear_reference(x.double(), weight, scale)
    assert got.dtype == torch.float32 and rel_err(got, want) <= FP32_TOL


@pytest.mark.parametrize("cols", [48, 5000], ids=["one-block", "two-blocks"])
def test_fp8_row_quantisation_equals_the_reference(cols):
    """Rows of FP8 values times powers of two, each row holding FP8's largest value once: the row's scale is its
    power of two and the quantised row is exact, so the test checks the kernel's passes, masks and scales without
    the interpreter's FP8 rounding, which differs from the GPU's (it rounds 127.6 to 64). The GPU's own rounding
    is checked by tests/test_gpu_engine.py's FP8 GEMMs."""
    grid = torch.arange(256, dtype=torch.uint8).view(fp8_reference.FP8).float()
    grid = grid[grid.isfinite()]
    steps = torch.tensor([1.0, 2.0**-10, 2.0**6, 0.5, 1.0])
    q = grid[torch.randint(len(grid), (5, cols))]
    q[:, cols // 2] = fp8_reference.FP8_MAX * torch.tensor([1, -1, 1, -1, 1])
    x = q * steps[:, None]
    x[4] = 0.0
    got, got_scale = fp8_triton.quantize_rows_triton(x)
    want, want_scale = fp8_reference.quantize_rows(x)
    assert torch.equal(got_scale, want_scale) and torch.equal(got_scale[:4], steps[:4])
    assert torch.equal(got.float(), want.float()) and torch.equal(got[:4].float(), q[:4])


@pytest.mark.parametrize("rows,experts,top_k,renormalize", [(7, 256, 8, True), (5, 8, 2, True), (3, 12, 3, False)],
                         ids=["48b", "default-model", "ragged-unnormalised"])
def test_route_matches_the_reference(rows, experts, top_k, renormalize):
    logits, bias = torch.randn(rows, experts) * 3, torch.randn(experts) * 0.5
    got_ids, got_weights = moe_triton.route_triton(logits, bias, top_k, renormalize, 2.446)
    want_ids, want_weights = moe_reference.route_reference(logits, bias, top_k, renormalize, 2.446)
    got_order, want_order = got_ids.argsort(dim=-1), want_ids.argsort(dim=-1)
    assert torch.equal(got_ids.gather(1, got_order), want_ids.gather(1, want_order))
    assert rel_err(got_weights.gather(1, got_order), want_weights.gather(1, want_order)) <= FP32_TOL
    assert got_ids.dtype == torch.int64 and got_weights.dtype == torch.float32


def test_kda_decode_step_matches_float64():
    """Three sequences in scattered slots, 2 heads of 24 (not the tile size of 32 it is padded to), a 4-tap
    convolution, strong and weak decays; the fused kernel updates both pools as the layer's own ops do."""
    n, heads, d, width, slots_total = 3, 2, 24, 4, 6
    p = heads * d
    mixed, f, gate = torch.randn(n, 3 * p), torch.randn(n, p) * 3, torch.randn(n, p)
    b, dt_bias, a_log = torch.randn(n, heads), torch.randn(p), torch.rand(1, 1, heads, 1) * 2
    taps = tuple(torch.randn(p, 1, width) * 0.5 for _ in range(3))
    norm_weight = torch.rand(d) + 0.5
    conv_pool, state_pool = torch.randn(slots_total, 3 * p, width - 1), torch.randn(slots_total, heads, d, d)
    slots = torch.tensor([4, 0, 2])
    want, want_conv, want_state = kda_decode_step_float64(mixed, conv_pool, taps, f, dt_bias, a_log, b, gate,
                                                          norm_weight, state_pool, slots)
    got = kda_triton.kda_decode_step_triton(mixed, conv_pool, taps, f, dt_bias, a_log, b, gate, norm_weight,
                                            state_pool, slots, 1e-5)
    assert got.dtype == torch.float32 and got.shape == (n, p)
    assert rel_err(got, want) <= FP32_TOL
    assert rel_err(state_pool, want_state) <= FP32_TOL
    assert torch.allclose(conv_pool.double(), want_conv)  # a shift by one tap: exact
    untouched = [1, 3, 5]
    assert torch.equal(conv_pool[untouched].double(), want_conv[untouched])


@pytest.mark.parametrize("t", [2, 45], ids=["shorter-than-the-window", "two-time-blocks"])
def test_short_conv_matches_float64(t):
    """Two sequences in scattered slots read q, k, v as a column slice of a wider projection (the fused in_proj);
    P = 40 is not a multiple of the 64-channel tile. Outputs against float64, the windows moved on exactly, other
    slots untouched."""
    n, p, width, slots_total = 2, 40, 4, 5
    wide = torch.randn(n, t, 3 * p + 7)
    mixed = wide[..., :3 * p]
    taps = tuple(torch.randn(p, 1, width) * 0.5 for _ in range(3))
    conv_pool = torch.randn(slots_total, 3 * p, width - 1)
    slots = torch.tensor([3, 1])
    want_pool = conv_pool.double()
    want = kda_reference.short_conv_reference(mixed.double(), want_pool, slots, tuple(x.double() for x in taps))
    got = kda_triton.short_conv_triton(mixed, conv_pool, slots, taps)
    for g, w in zip(got, want, strict=True):
        assert g.shape == (n, t, p) and rel_err(g, w) <= FP32_TOL
    assert torch.allclose(conv_pool.double(), want_pool)
    assert torch.equal(conv_pool[[0, 2, 4]].double(), want_pool[[0, 2, 4]])


def test_silu_and_mul_matches_float64():
    x = torch.randn(3, 5, 2 * 1100)
    got = moe_triton.silu_and_mul_triton(x)
    assert got.shape == (3, 5, 1100)
    assert rel_err(got, moe_reference.silu_and_mul_reference(x.double())) <= FP32_TOL
    with pytest.raises(ValueError, match="even"):
        moe_triton.silu_and_mul_triton(torch.randn(2, 7))


@pytest.mark.parametrize("m,k,hidden", [(6, 3, 40), (4, 8, 1500)])
def test_moe_combine_matches_float64(m, k, hidden):
    """Pairs sorted by a random expert choice: each token gathers its k rows and weights them."""
    order = torch.randint(0, 5, (m * k,)).argsort(stable=True)
    y, weights = torch.randn(m * k, hidden), torch.rand(m, k)
    got = moe_triton.moe_combine_triton(y, order, weights)
    assert got.dtype == torch.float32 and got.shape == (m, hidden)
    assert rel_err(got, moe_reference.moe_combine_reference(y.double(), order, weights.double())) <= FP32_TOL


def test_kda_decode_step_reads_column_slices_of_the_fused_projection():
    """mixed and b as slices of one wider projection output (row stride larger than their width), as the fused
    in_proj gives them: same result as contiguous copies."""
    n, heads, d, width = 2, 2, 16, 4
    p = heads * d
    fused = torch.randn(n, 3 * p + heads + 5)
    mixed, b = fused[:, :3 * p], fused[:, 3 * p:3 * p + heads]
    f, gate, dt_bias = torch.randn(n, p), torch.randn(n, p), torch.randn(p)
    a_log, norm_weight = torch.rand(1, 1, heads, 1), torch.rand(d) + 0.5
    taps = tuple(torch.randn(p, 1, width) * 0.5 for _ in range(3))
    conv_pool, state_pool = torch.randn(3, 3 * p, width - 1), torch.randn(3, heads, d, d)
    slots = torch.tensor([2, 0])
    want, want_conv, want_state = kda_decode_step_float64(mixed.contiguous(), conv_pool, taps, f, dt_bias, a_log,
                                                          b.contiguous(), gate, norm_weight, state_pool, slots)
    got = kda_triton.kda_decode_step_triton(mixed, conv_pool, taps, f, dt_bias, a_log, b, gate, norm_weight,
                                            state_pool, slots, 1e-5)
    assert rel_err(got, want) <= FP32_TOL and rel_err(state_pool, want_state) <= FP32_TOL
    assert torch.allclose(conv_pool.double(), want_conv)


def test_kda_gates_match_float64():
    """Two sequences of 5 tokens, 3 heads of 24, b a column slice of a wider projection; strong and weak decays
    (f from -30 to 30 crosses softplus's linear threshold)."""
    n, t, heads, d = 2, 5, 3, 24
    shape = (n, t, heads, d)
    f = torch.randn(n, t, heads * d) * 10
    b = torch.randn(n, t, heads + 4)[..., :heads]
    dt_bias, a_log = torch.randn(heads * d), torch.rand(1, 1, heads, 1) * 2
    want_g, want_beta = kda_reference.kda_gates(*float64(f, b, dt_bias, a_log), shape)
    g, beta = kda_triton.kda_gates_triton(f, b, dt_bias, a_log, shape)
    assert g.shape == shape and beta.shape == shape[:-1] and g.dtype == beta.dtype == torch.float32
    assert rel_err(g, want_g) <= FP32_TOL and rel_err(beta, want_beta) <= FP32_TOL
