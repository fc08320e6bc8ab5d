"""The engine's GPU path: grouped MoE GEMMs, Triton kernels inside the model, fork equivalence on CUDA.

These need a CUDA GPU and are run on the GPU machine (benchmarks/RESULTS.md has the command); the
same engine logic runs on CPU in test_engine.py.
"""

from __future__ import annotations

import asyncio

import pytest
import torch
from kernel_support import kda_decode_step_float64
from model_support import extend_then_generate, forks_prefilled_with_and_without_sharing

from kimi_swarm.backend import Engine, SamplingParams
from kimi_swarm.backend.model.fp8 import quantize_experts_
from kimi_swarm.backend.model.moe import StackedExperts
from kimi_swarm.backend.model.presets import preset_config, random_model
from kimi_swarm.kernels import fp8_reference, fp8_triton, kda_reference, kda_triton, moe_reference, moe_triton

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU path is "
                                                                       "covered by test_engine.py)")


def test_grouped_expert_gemms_match_per_expert_loop():
    torch.manual_seed(0)
    experts = StackedExperts(64, 512, 256).cuda().bfloat16()
    for p in experts.parameters():
        p.data.normal_(0, 0.05)
    ref = StackedExperts(64, 512, 256).cuda().double()
    ref.load_state_dict({k: v.double() for k, v in experts.state_dict().items()})
    for tokens in (1, 7, 100, 1000):
        x = torch.randn(tokens, 512, device="cuda", dtype=torch.bfloat16)
        ids = torch.stack([torch.randperm(64, device="cuda")[:8] for _ in range(tokens)])
        weights = torch.rand(tokens, 8, device="cuda")
        got = experts._grouped(x, ids, weights)
        want = moe_reference.fused_moe_reference(x.double(), ref.w13, ref.w2, ids, weights.double())
        err = (got.double() - want).norm() / want.norm()
        assert err < 1e-2, f"{tokens} tokens: relative error {err:.2e}"


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16-weights", "fp8-weights"])
def test_fused_moe_on_the_48b_expert_shapes(fp8):
    """256 experts of 2304 x 1024, top 8, in bf16: the fused kernel against float64 on the same weights, for
    the token counts it serves (FP8 experts take it at every count), pairwise GEMVs and sorted blocks."""
    torch.manual_seed(0)
    w13 = torch.randn(256, 2048, 2304, device="cuda") * 2304 ** -0.5
    w2 = torch.randn(256, 2304, 1024, device="cuda") * 1024 ** -0.5
    if fp8:
        (w13, s13), (w2, s2) = fp8_reference.quantize_rows(w13), fp8_reference.quantize_rows(w2)
    else:
        w13, w2, s13, s2 = w13.bfloat16(), w2.bfloat16(), None, None
    for tokens, pairwise in ((1, None), (1, False), (8, None), (8, False), (32, None), (300, None)):
        x = torch.randn(tokens, 2304, device="cuda", dtype=torch.bfloat16)
        ids = torch.stack([torch.randperm(256, device="cuda")[:8] for _ in range(tokens)])
        weights = torch.rand(tokens, 8, device="cuda")
        got = moe_triton.fused_moe_triton(x, w13, w2, ids, weights, s13, s2, pairwise=pairwise)
        want = moe_reference.fused_moe_reference(x.double(), w13 if fp8 else w13.double(),
                                                 w2 if fp8 else w2.double(), ids, weights.double(), s13, s2)
        err = (got.double() - want).norm() / want.norm()
        assert err < 1e-2, f"{tokens} tokens: relative error {err:.2e}"


def test_kda_decode_step_on_the_48b_head_shapes():
    """32 heads of 128, bf16 inputs, fp32 states in scattered slots: the fused step against float64."""
    torch.manual_seed(0)
    n, heads, d, width = 8, 32, 128, 4
    p = heads * d

    def cuda(*shape, scale=1.0, dtype=torch.bfloat16):
        return (torch.randn(*shape, device="cuda") * scale).to(dtype)

    mixed, f, gate, b = cuda(n, 3 * p), cuda(n, p, scale=3.0), cuda(n, p), cuda(n, heads)
    taps = tuple(cuda(p, 1, width, scale=0.5) for _ in range(3))
    dt_bias, a_log = cuda(p, dtype=torch.float32), torch.rand(1, 1, heads, 1, device="cuda") * 2
    norm_weight = cuda(d, scale=0.1) + 1
    conv_pool, state_pool = cuda(20, 3 * p, width - 1), cuda(20, heads, d, d, scale=0.1, dtype=torch.float32)
    slots = torch.tensor([3, 19, 0, 7, 8, 11, 2, 15], device="cuda")
    want, want_conv, want_state = kda_decode_step_float64(mixed, conv_pool, taps, f, dt_bias, a_log, b, gate,
                                                          norm_weight, state_pool, slots)
    got = kda_triton.kda_decode_step_triton(mixed, conv_pool, taps, f, dt_bias, a_log, b, gate, norm_weight,
                                            state_pool, slots, 1e-5)
    for name, a, w in (("output", got, want), ("state", state_pool, want_state), ("window", conv_pool, want_conv)):
        err = (a.double() - w).norm() / w.norm()
        assert err < 1e-2, f"{name}: relative error {err:.2e}"


def test_short_conv_on_the_48b_head_shapes():
    """A 2,048-token prefill chunk of two sequences, 32 heads of 128, bf16, reading q, k, v from the fused in_proj's
    output (6 more columns beside them): the prefill convolution against float64, windows moved on."""
    torch.manual_seed(0)
    n, t, p, width = 2, 2048, 4096, 4
    wide = torch.randn(n, t, 3 * p + 288, device="cuda", dtype=torch.bfloat16)
    taps = tuple((torch.randn(p, 1, width, device="cuda") * 0.5).bfloat16() for _ in range(3))
    conv_pool = torch.randn(5, 3 * p, width - 1, device="cuda", dtype=torch.bfloat16)
    slots = torch.tensor([4, 1], device="cuda")
    want_pool = conv_pool.double()
    want = kda_reference.short_conv_reference(wide[..., :3 * p].double(), want_pool, slots,
                                              tuple(x.double() for x in taps))
    got = kda_triton.short_conv_triton(wide[..., :3 * p], conv_pool, slots, taps)
    for name, a, w in (*zip("qkv", got, want, strict=True), ("window", conv_pool, want_pool)):
        err = (a.double() - w).norm() / w.norm()
        assert err < 1e-2, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("rows,tolerance", [(4, 1e-2), (300, 5e-2)], ids=["weight-only", "fp8-tensor-cores"])
def test_fp8_linear_on_cuda(rows, tolerance):
    """A few rows read the FP8 weight into a bf16 GEMM; many rows quantise the activations per row too (their
    rounding is the larger tolerance)."""
    weight, scale = fp8_reference.quantize_rows(torch.randn(4096, 2304, device="cuda"))
    x = torch.randn(rows, 2304, device="cuda", dtype=torch.bfloat16)
    got = fp8_triton.fp8_linear_triton(x, weight, scale)
    want = fp8_reference.fp8_linear_reference(x.double(), weight, scale)
    err = (got.double() - want).norm() / want.norm()
    assert got.dtype == torch.bfloat16 and err < tolerance, f"relative error {err:.2e}"


def test_fp8_experts_over_many_tokens_take_the_fp8_grouped_gemm():
    """Past FUSED_MOE_TOKENS, FP8 experts on Hopper run torch._scaled_grouped_mm with the activations quantised
    per row: against float64 on the same FP8 weights (the activation rounding is the tolerance)."""
    torch.manual_seed(0)
    experts = StackedExperts(256, 2304, 1024).cuda()
    for weight in (experts.w13, experts.w2):
        weight.data.normal_(0, weight.shape[-1] ** -0.5)
    quantize_experts_(experts)
    q13, s13, q2, s2 = experts.w13, experts.w13_scale, experts.w2, experts.w2_scale
    tokens = 300
    x = torch.randn(tokens, 2304, device="cuda", dtype=torch.bfloat16)
    ids = torch.stack([torch.randperm(256, device="cuda")[:8] for _ in range(tokens)])
    weights = torch.rand(tokens, 8, device="cuda")
    assert experts._grouped_pays(x) == (torch.cuda.get_device_capability() == (9, 0))
    got = experts(x, ids, weights)
    want = moe_reference.fused_moe_reference(x.double(), q13, q2, ids, weights.double(), s13, s2)
    err = (got.double() - want).norm() / want.norm()
    assert err < 5e-2, f"relative error {err:.2e}"


def test_route_on_cuda_chooses_the_references_experts():
    """The one-launch router on the 48B shapes (256 experts, top 8) at decode and prefill token counts."""
    for rows in (1, 100, 4096):
        logits, bias = torch.randn(rows, 256, device="cuda") * 3, torch.randn(256, device="cuda") * 0.5
        got_ids, got_weights = moe_triton.route_triton(logits, bias, 8, True, 2.446)
        want_ids, want_weights = moe_reference.route_reference(logits, bias, 8, True, 2.446)
        got_order, want_order = got_ids.argsort(dim=-1), want_ids.argsort(dim=-1)
        assert torch.equal(got_ids.gather(1, got_order), want_ids.gather(1, want_order))
        err = (got_weights.gather(1, got_order) - want_weights.gather(1, want_order)).abs().max()
        assert err < 1e-5, f"{rows} rows: weights differ by {err:.2e}"


def test_fp8_row_quantisation_on_cuda_equals_torch():
    """The one-launch activation quantisation rounds as PyTorch's own cast does, bit for bit (4096 columns: one
    block; 5000: two)."""
    for cols in (4096, 5000):
        magnitudes = torch.logspace(-3, 3, 300, device="cuda")[:, None]
        x = (torch.randn(300, cols, device="cuda") * magnitudes).to(torch.bfloat16)
        got, got_scale = fp8_triton.quantize_rows_triton(x)
        want, want_scale = fp8_reference.quantize_rows(x)
        assert torch.equal(got_scale, want_scale) and torch.equal(got.view(torch.uint8), want.view(torch.uint8))


async def test_fp8_forks_equal_fresh_sessions_on_cuda():
    """An FP8 model (float32 activations, so that the comparison is exact) forks and batches like any other."""
    config = preset_config("small")
    engine = Engine(random_model(config, torch.device("cuda"), torch.float32, seed=2, quantization="fp8"), None,
                    max_sessions=16, memory=1 << 30, page_size=64)
    try:
        gen = torch.Generator().manual_seed(1)
        prefix = torch.randint(0, config.vocab_size, (200,), generator=gen).tolist()
        suffixes = [torch.randint(0, config.vocab_size, (n,), generator=gen).tolist() for n in (1, 40)]
        params = SamplingParams(max_tokens=8, stop_token_ids=[])
        root = await engine.session(prefix)
        forked = await asyncio.gather(*(extend_then_generate(c, s, params)
                                        for c, s in zip(root.fork(len(suffixes)), suffixes, strict=True)))
        for suffix, completion in zip(suffixes, forked, strict=True):
            fresh = await (await engine.session(prefix + suffix)).generate(params)
            assert completion.token_ids == fresh.token_ids
    finally:
        engine.shutdown()


async def test_forks_equal_fresh_sessions_on_cuda():
    """Forked, batched sessions generate exactly what fresh ones do, in float32.

    Not in bf16: on a random model one token in a hundred changes MoE experts under bf16 rounding
    (measured: 1.5% median per-token difference after the first MoE layer, 71% at the 99th percentile),
    so greedy tokens part within a few steps whatever the engine does. The bf16 path is checked against
    float32 logits by test_shared_prefix_prefill_on_cuda_matches_prefilling_each_fork_alone.
    """
    config = preset_config("small")
    engine = Engine(random_model(config, torch.device("cuda"), torch.float32, seed=1), None, max_sessions=32,
                    memory=1 << 30, page_size=64)
    try:
        gen = torch.Generator().manual_seed(0)
        prefix = torch.randint(0, config.vocab_size, (300,), generator=gen).tolist()
        suffixes = [torch.randint(0, config.vocab_size, (n,), generator=gen).tolist() for n in (1, 5, 64, 130)]
        params = SamplingParams(max_tokens=8, stop_token_ids=[])
        root = await engine.session(prefix)
        children = root.fork(len(suffixes))

        outs = await asyncio.gather(*(extend_then_generate(c, s, params) for c, s in zip(children, suffixes)))
        matches = 0
        for suffix, out in zip(suffixes, outs):
            fresh = await engine.session(prefix + suffix)
            want = await fresh.generate(params)
            matches += out.token_ids == want.token_ids
        assert matches == len(suffixes), matches
    finally:
        engine.shutdown()


def _every_expert_config():
    """The small preset with every token using every expert: with top-2 of 16, a random router sends one
    token in a hundred to other experts under bf16 rounding, which would swamp the differences tested."""
    config = preset_config("small")
    return config.model_copy(update={"num_experts_per_token": config.num_experts})


def _forks_prefilled_on_cuda(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of forks prefilled together (shared prefix) and each alone, on a seeded random model.

    The weights are drawn in bf16 whatever `dtype` is, so the float32 run is the bf16 model computed
    exactly.
    """
    model = random_model(_every_expert_config(), torch.device("cuda"), torch.bfloat16, seed=2)
    model = model if dtype == torch.bfloat16 else model.to(dtype)  # bf16 keeps its float32 gate parameters
    engine = Engine(model, None, max_sessions=16, memory=1 << 30, page_size=64)
    try:
        return forks_prefilled_with_and_without_sharing(engine.model, engine.cache, seed=3)
    finally:
        engine.shutdown()


def test_shared_prefix_prefill_on_cuda_matches_prefilling_each_fork_alone():
    """The flash path of attention_with_lse and the merge, inside the model on the GPU.

    In float32 the two modes agree to 1e-5. In bf16 both differ from the float32 logits by rounding
    (3.5% on this model on the CPU), so sharing must be as accurate as prefilling each fork alone.
    """
    together, alone = _forks_prefilled_on_cuda(torch.float32)
    assert float((together - alone).norm() / alone.norm()) < 1e-5
    shared_bf16, alone_bf16 = _forks_prefilled_on_cuda(torch.bfloat16)
    shared_error, alone_error = (float((x - alone).norm() / alone.norm()) for x in (shared_bf16, alone_bf16))
    print(f"bf16 against float32: shared prefix {shared_error:.2e}, each fork alone {alone_error:.2e}")
    assert alone_error < 0.1 and shared_error <= 1.25 * alone_error, (shared_error, alone_error)


async def _decode_logits_per_session(model, *, cuda_graphs: bool, expand: bool = False
                                     ) -> tuple[dict[int, list[torch.Tensor]], Engine, int]:
    """Every decode step's logits, per session id, of a root and 3 forks generating 6 tokens each; and the
    number of decode steps. expand: the forks' shared 3 pages are decompressed (engine/expanded_prefix.py)."""
    engine = Engine(model, None, max_sessions=16, memory=1 << 30, page_size=64, cuda_graphs=cuda_graphs,
                    expand_shared_prefix=expand)
    engine.runner.prefixes.min_tokens, engine.runner.prefixes.min_sharers = 64, 2
    logits: dict[int, list[torch.Tensor]] = {}
    steps = 0
    eager_or_graph = engine.runner.decode

    def recording(seqs):
        nonlocal steps
        steps += 1
        out = eager_or_graph(seqs)
        for seq, row in zip(seqs, out):
            logits.setdefault(seq.seq_id, []).append(row.float().cpu())
        return out

    engine.runner.decode = recording
    try:
        gen = torch.Generator().manual_seed(5)
        prefix = torch.randint(0, model.config.vocab_size, (3 * 64 + 8,), generator=gen).tolist()
        suffixes = [torch.randint(0, model.config.vocab_size, (n,), generator=gen).tolist() for n in (1, 7, 70)]
        params = SamplingParams(max_tokens=6, stop_token_ids=[])
        root = await engine.session(prefix)
        children = root.fork(len(suffixes))
        await asyncio.gather(*(extend_then_generate(c, s, params) for c, s in zip(children, suffixes)))
        await root.generate(params)
    finally:
        engine.shutdown()
    return logits, engine, steps


@pytest.fixture
def capture_at_once(monkeypatch):
    """Every decode shape captured on first use, so that every step of a test replays a graph."""
    from kimi_swarm.backend.engine import decode_graphs

    monkeypatch.setattr(decode_graphs, "CAPTURE_AFTER", 1)


async def test_decode_cuda_graphs_give_the_eager_steps_logits(capture_at_once):
    """Replayed graphs (batches padded to a bucket, shared-prefix mode included) decode what eager steps do.

    bf16 on both sides, in batches that may differ: each session's steps are compared until their greedy
    tokens part. A padding row that wrote into a session, or a stale graph input, would be far off.
    """
    model = random_model(_every_expert_config(), torch.device("cuda"), torch.bfloat16, seed=4)
    graphed, engine, steps = await _decode_logits_per_session(model, cuda_graphs=True)
    eager, _, _ = await _decode_logits_per_session(model, cuda_graphs=False)
    assert engine.runner.graphs.captures >= 1 and engine.runner.graphs.replays == steps
    assert graphed.keys() == eager.keys() and len(eager) == 4
    assert _compare_until_greedy_parts(eager, graphed, 5e-2) >= 4


def _compare_until_greedy_parts(want_steps: dict, got_steps: dict, tolerance: float) -> int:
    compared = 0
    for seq_id, session_steps in want_steps.items():
        for index, (want, got) in enumerate(zip(session_steps, got_steps[seq_id])):
            error = float((got - want).norm() / want.norm())
            assert error < tolerance, f"session {seq_id}, step {index}: relative logit difference {error:.2e}"
            compared += 1
            if int(got.argmax()) != int(want.argmax()):
                break
    return compared


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
async def test_decode_over_an_expanded_prefix_on_cuda_matches_the_absorbed_form(dtype, tolerance, capture_at_once):
    """The split-KV flash attention over the decompressed prefix, mla_decode_from's Triton kernel and the merge,
    inside CUDA graphs (bf16) and eagerly (float32, where the engine runs no graphs)."""
    model = random_model(_every_expert_config(), torch.device("cuda"), dtype, seed=4)
    expanded, engine, _ = await _decode_logits_per_session(model, cuda_graphs=True, expand=True)
    absorbed, _, _ = await _decode_logits_per_session(model, cuda_graphs=True, expand=False)
    assert engine.runner.prefixes.builds >= 1
    assert expanded.keys() == absorbed.keys()
    assert _compare_until_greedy_parts(absorbed, expanded, tolerance) >= 4
