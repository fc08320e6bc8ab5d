"""Full-size run: the exact Kimi-Linear-48B-A3B configuration (random bf16 weights on the GPU) serving
100 forked agents over one long shared context, against the roofline and transformers + fla.

    python benchmarks/e2e.py                                    # H200: 128K context, 100 agents
    python benchmarks/e2e.py --context 32768 --agents 32        # smaller, e.g. to fit an H100
    python benchmarks/e2e.py --transformers                     # also transformers' KimiLinearForCausalLM
    python benchmarks/e2e.py --quantization fp8                 # FP8 weights (the 48B model on an 80 GB H100)

Phases (ours): prefill of the shared context; fork into N agents; each agent's distinct private
suffix and its first token; decode of every agent together (ms/step p50/p99, aggregate tok/s);
the same decode without shared-prefix attention (each after a few steps that capture its CUDA graph); batch-1
and 8-agent decode after 8K; peak memory and its parts. With --quantization fp8, first the logits of the same
random weights in bf16 and FP8, beside a yardstick: how far bf16's own rounding moves this random model.
Floors use the copy bandwidth and matmul rate measured at the start of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time

import torch
from common import sync

from kimi_swarm.backend import QUANTIZATIONS, Engine, SamplingParams
from kimi_swarm.backend.engine.decode_graphs import CAPTURE_AFTER
from kimi_swarm.backend.engine.state_cache import CacheLayout
from kimi_swarm.backend.model.fp8 import quantize_fp8_
from kimi_swarm.backend.model.model import KimiLinearForCausalLM
from kimi_swarm.backend.model.presets import PRESETS, preset_config, random_model, randomize_

PAGE = 64


def measure_copy_bandwidth(device: torch.device) -> float:
    """Bytes/s of a device-to-device copy, counting bytes read and written."""
    size = (2 << 30) if device.type == "cuda" else (64 << 20)
    src = torch.empty(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(10):
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - start)
    del src, dst
    return 2 * size / statistics.median(times)


def measure_matmul_rate(device: torch.device) -> float:
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def ids(n: int, vocab: int, seed: int) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


class Footprint:
    """Bytes and FLOPs of the model that the floors are computed from."""

    def __init__(self, model, config):
        self.config = config
        params = dict(model.named_parameters())
        expert = sum(p.numel() * p.element_size() for n, p in params.items() if ".experts." in n)
        self.weights = sum(p.numel() * p.element_size() for p in params.values())
        moe_layers = config.num_hidden_layers - config.first_k_dense_replace
        self.expert_bytes = expert / (config.num_experts * moe_layers)  # one expert of one layer (FP8: + scales)
        embed = model.model.embed_tokens.weight
        self.dense_bytes = self.weights - expert - embed.numel() * embed.element_size()  # lm_head included
        expert_params = sum(p.numel() for n, p in params.items() if ".experts.w" in n and not n.endswith("_scale"))
        dense_params = sum(p.numel() for n, p in params.items() if ".experts." not in n) - embed.numel()
        self.active_params = dense_params + expert_params * config.num_experts_per_token / config.num_experts
        self.moe_layers = moe_layers

    def decode_bytes(self, batch: int, layout: CacheLayout, shared_latent_tokens: int, private_tokens: int,
                     shared_attention: bool, expanded: bool = False) -> float:
        """Bytes a decode step must read: weights it touches, KDA states (read and written), and the latent
        cache; with `expanded`, the shared prefix as the engine reads it then, decompressed keys and padded
        values (engine/expanded_prefix.py)."""
        experts = self.experts_read(batch)
        states = 2 * batch * layout.slot_bytes
        per_token = layout.page_bytes / PAGE
        shared = shared_latent_tokens * (1 if shared_attention else batch) * per_token
        if expanded:
            shared = shared_latent_tokens * self.expanded_bytes_per_token()
        return self.dense_bytes + experts + states + shared + batch * private_tokens * per_token

    def experts_read(self, batch: int) -> float:
        """Expected bytes of the routed experts a batch reaches (each expert read once), over all MoE layers."""
        c = self.config
        unique = c.num_experts * (1 - (1 - c.num_experts_per_token / c.num_experts) ** batch)
        return self.moe_layers * unique * self.expert_bytes

    def expanded_bytes_per_token(self) -> int:
        c = self.config
        return len(c.mla_layer_ids) * 2 * c.num_attention_heads * (c.qk_nope_head_dim + c.qk_rope_head_dim) * 2

    def prefill_flops(self, tokens: int) -> float:
        c = self.config
        dense = 2 * self.active_params * tokens
        head = c.qk_nope_head_dim + c.qk_rope_head_dim + c.v_head_dim  # expanded form, as prefill runs it
        mla = len(c.mla_layer_ids) * 2 * (tokens**2 / 2) * c.num_attention_heads * head
        d, chunk = c.kda_head_dim, 64
        kda = len(c.kda_layer_ids) * c.kda_heads * (6 * tokens * d * d + 3 * tokens * chunk * d + tokens * chunk**2)
        return dense + mla + kda


KERNEL_GROUPS = (("attention", ("flash", "fmha", "mla", "attend", "merge")),
                 ("expert GEMMs", ("grouped", "Grouped", "GroupProblemShape", "_expert_gemm_kernel",
                                   "_pair_gemv_kernel")),
                 ("KDA", ("kda", "delta_rule")),
                 ("dense GEMMs", ("gemm", "xmma", "nvjet", "cutlass", "scaled_mm", "cublas")),
                 ("norms", ("norm",)),
                 ("routing", ("_route_kernel", "topk", "sort", "radix", "scan", "searchsorted")),
                 ("FP8 quantisation", ("_quantize_rows",)),
                 ("copies and elementwise", ("elementwise", "vectorized", "reduce", "copy", "fill", "index",
                                             "scatter", "gather", "cat", "Memcpy", "Memset")))
"""GPU kernels by name, first match wins: torch._grouped_mm runs CUTLASS kernels over a GroupProblemShape on
Hopper; the fused small-batch and FP8 expert kernels are kernels/moe_triton.py's (FP8 dense linear layers of a few
rows run the expert GEMM kernel too, so they count there); whatever matches none is "other"."""


UNNAMED_GROUPS = ("other", "copies and elementwise")
"""Groups whose kernels are printed one by one with their full names: the table cuts names short."""


def kernel_group(name: str) -> str:
    return next((group for group, marks in KERNEL_GROUPS if any(m in name for m in marks)), "other")


def gpu_time_by_kind(prof, label: str, per: int) -> tuple[dict[str, float], dict[str, float]]:
    """Print a profile's kernels by GPU time; return GPU ms and kernels by kind (KERNEL_GROUPS), per `per`
    repetitions of the profiled work."""
    from torch.autograd import DeviceType

    events = prof.key_averages()
    print(f"{label}:", flush=True)
    print(events.table(sort_by="self_device_time_total", row_limit=25), flush=True)
    spent = {group: 0.0 for group, _ in (*KERNEL_GROUPS, ("other", ()))}
    launches = dict.fromkeys(spent, 0.0)
    for event in events:
        if event.device_type == DeviceType.CUDA and event.self_device_time_total > 0:
            group = kernel_group(event.key)
            spent[group] += event.self_device_time_total / 1e3 / per
            launches[group] += event.count / per
            if group in UNNAMED_GROUPS:
                print(f"  {group}: {event.self_device_time_total / 1e3 / per:8.3f} ms {event.count / per:5.0f}x "
                      f"{event.key[:150]}", flush=True)
    return spent, launches


def by_kind(spent: dict[str, float], launches: dict[str, float]) -> str:
    return ", ".join(f"{group} {ms:.2f} ms ({launches[group]:.0f})" for group, ms in spent.items() if ms)


async def print_decode_profile(engine, agents, foot, label: str, steps: int = 4) -> list[tuple[str, str, str]]:
    """GPU kernels of a few decode steps of every agent, after two unprofiled ones (so the one-time work of the
    mode, decompressing the shared prefix, stays out), and rows for the results table: GPU time a step spends
    by kind of kernel (the expert GEMMs with their share of copy bandwidth: the experts' bytes over their time);
    kernels a step and how much of the step's wall time the GPU is busy (far below the step time: the step waits
    on the host, so fusing kernels would not help)."""
    from torch.profiler import ProfilerActivity, profile

    engine.runner.shared_prefix_attention = True
    await asyncio.gather(*(a.generate(SamplingParams(max_tokens=2, stop_token_ids=[])) for a in agents))
    engine.decode_steps.clear()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        await asyncio.gather(*(a.generate(SamplingParams(max_tokens=steps, stop_token_ids=[])) for a in agents))
    step_ms = statistics.median(t for b, t in engine.decode_steps if b == len(agents)) * 1e3
    spent, launches = gpu_time_by_kind(prof, label, steps)
    busy = sum(spent.values())
    experts_read = foot.experts_read(len(agents))
    return [(f"ours: {label}, GPU time per step by kind (profiled, {steps} steps; kernels a step)",
             by_kind(spent, launches),
             f"expert GEMMs read {experts_read / 2**30:.2f} GiB a step: "
             f"{experts_read / (max(spent['expert GEMMs'], 1e-9) / 1e3) / 1e12:.2f} TB/s"),
            (f"ours: {label}, kernels and GPU busy per step (profiled)",
             f"{sum(launches.values()):.0f} kernels, GPU busy {busy:.2f} ms",
             f"of a {step_ms:.2f} ms step under the profiler ({busy / step_ms:.0%})")]


async def print_prefill_profile(engine, tokens: int, vocab: int) -> list[tuple[str, str, str]]:
    """GPU kernels of one prefill of `tokens` tokens (a session opened and closed), by kind, and how much of its
    wall time the GPU is busy: where the prefill's time goes, beside transformers' in the same run."""
    from torch.profiler import ProfilerActivity, profile

    warm = await engine.session(ids(tokens, vocab, 11))
    warm.close()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        session = await engine.session(ids(tokens, vocab, 12))
        sync(engine.model.device)
    wall_ms = (time.perf_counter() - start) * 1e3
    session.close()
    spent, launches = gpu_time_by_kind(prof, f"prefill {tokens} tokens", 1)
    busy = sum(spent.values())
    return [(f"ours: prefill {tokens // 1024}K, GPU time by kind (profiled; kernels)", by_kind(spent, launches),
             f"{sum(launches.values()):.0f} kernels, GPU busy {busy:.1f} ms of {wall_ms:.1f} ms under the profiler "
             f"({busy / wall_ms:.0%})")]


def absorbed_because(prefixes, args) -> str:
    if args.context < prefixes.min_tokens:
        return f"the prefix is under {prefixes.min_tokens} tokens"
    if args.agents < prefixes.min_sharers:
        return f"fewer than {prefixes.min_sharers} agents"
    return "too little free cache memory"


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


@torch.inference_mode()
def build_model(args, device, config, rows) -> KimiLinearForCausalLM:
    """The random bf16 model; with --quantization, the same weights quantised after the logits of both are
    compared, or, where the bf16 weights do not fit the GPU, weights drawn and quantised one at a time."""
    if args.quantization is None:
        return random_model(config, device, torch.bfloat16)
    with torch.device("meta"):
        bf16_bytes = 2 * sum(p.numel() for p in KimiLinearForCausalLM(config).parameters())
    total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else float("inf")
    if bf16_bytes > 0.8 * total:
        rows.append((f"{args.quantization} vs bf16 logits", "not compared",
                     f"the bf16 weights ({bf16_bytes / 2**30:.0f} GiB) do not fit this GPU"))
        return random_model(config, device, torch.bfloat16, quantization=args.quantization)
    model = random_model(config, device, torch.bfloat16)
    x = torch.tensor([ids(args.logits_tokens, config.vocab_size, 5)], device=device)
    before = model(x).float()
    perturb_(model, BF16_ROUNDING)
    want = model(x).float()
    quantize_fp8_(model)
    got = model(x).float()
    for label, a, b, note in ((f"{args.quantization} vs bf16 logits, same weights", got, want,
                               "linear and expert weights quantised per output row; bf16 activations"),
                              ("yardstick: bf16 logits, weights moved by bf16's own rounding", want, before,
                               f"every weight times (1 + {BF16_ROUNDING:.4f} N(0, 1)): how much this random model "
                               "amplifies a perturbation")):
        error = ((a - b).norm() / b.norm()).item()
        top1 = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
        rows.append((f"{label}, {args.logits_tokens} tokens", f"relative error {error:.4f}, top-1 agreement "
                     f"{top1:.1%}", note))
    del x, before, want, got
    return model


BF16_ROUNDING = 2.0 ** -9
"""Half of bf16's relative spacing: the typical relative error of rounding a weight to bf16."""


def perturb_(model: torch.nn.Module, relative: float) -> None:
    """Every matrix of the model times (1 + relative * N(0, 1)), one expert at a time."""
    for p in model.parameters():
        if p.dim() >= 2 and p.is_floating_point():
            for piece in p.view(-1, *p.shape[-2:]):
                piece.mul_(1 + relative * torch.randn_like(piece))


async def ours(args, device, config, rows, floors) -> dict[str, float]:
    """Our engine's phases as result rows; returns the figures compared with transformers (prefill s, batch-1
    decode ms/token with CUDA graphs where they run)."""
    model = build_model(args, device, config, rows)
    profiling = args.profile and device.type == "cuda"  # the profiles read GPU kernels
    foot = Footprint(model, config)
    layout = CacheLayout.for_config(config, torch.bfloat16, PAGE)
    sessions = args.agents + 2
    private_tokens = args.suffix + args.decode + 2 * 32 + 64
    pages = -(-args.context // PAGE) + sessions * -(-private_tokens // PAGE) + sessions
    # the engine also keeps a scratch slot and page (CUDA-graph padding); one slot is 80 pages of the 48B model
    # the expanded prefix takes its pages off the same pool and leaves a quarter of it free
    expanded_pages = -(-args.context * foot.expanded_bytes_per_token() // layout.page_bytes)
    pages = -(-4 * (pages + expanded_pages) // 3)
    budget = int(1.05 * ((sessions + 1) * layout.slot_bytes + (pages + 1) * layout.page_bytes))
    engine = Engine(model, None, max_sessions=sessions, memory=budget, page_size=PAGE,
                    prefill_chunk=args.chunk, max_batch=max(256, args.agents))
    vocab = config.vocab_size
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warm = await engine.session(ids(args.context, vocab, 99))  # compiles and tunes every kernel at these shapes
    await warm.generate(SamplingParams(max_tokens=4, stop_token_ids=[]))
    warm.close()
    await engine.drain()

    sync(device)
    start = time.perf_counter()
    root = await engine.session(ids(args.context, vocab, 0))
    sync(device)
    prefill_s = time.perf_counter() - start
    flops = foot.prefill_flops(args.context)
    rows.append((f"ours: prefill {args.context // 1024}K", f"{prefill_s:.2f} s ({args.context / prefill_s:,.0f} tok/s)",
                 f"{flops / floors['matmul']:.2f} s compute floor"))

    fork_times = []
    for attempt in range(6):
        sync(device)
        start = time.perf_counter()
        agents = root.fork(args.agents)
        await engine.drain()
        sync(device)
        fork_times.append(time.perf_counter() - start)
        if attempt < 5:
            for agent in agents:
                agent.close()
            await engine.drain()
    fork_ms = statistics.median(fork_times) * 1e3
    copy_ms = 2 * args.agents * layout.slot_bytes / floors["copy"] * 1e3
    rows.append((f"ours: fork {args.agents} agents",
                 f"{fork_ms:.1f} ms (median of 6; first {fork_times[0] * 1e3:.1f} ms)",
                 f"floor {copy_ms:.1f} ms: copying {args.agents} KDA states"))

    first = SamplingParams(max_tokens=1, stop_token_ids=[])

    async def suffix_then_first(i, agent):
        await agent.extend(ids(args.suffix, vocab, 1000 + i))
        await agent.generate(first)

    async def suffixes_then_first_tokens(engine, agents) -> tuple[float, list[tuple[int, int]]]:
        engine.prefill_forwards.clear()
        sync(device)
        start = time.perf_counter()
        await asyncio.gather(*(suffix_then_first(i, a) for i, a in enumerate(agents)))
        sync(device)
        return time.perf_counter() - start, list(engine.prefill_forwards)

    # the first time these shapes run, kernels compile and decode graphs are captured: a server pays that once
    cold_s, _ = await suffixes_then_first_tokens(engine, agents)
    for agent in agents:
        agent.close()
    agents = root.fork(args.agents)
    suffix_s, forwards = await suffixes_then_first_tokens(engine, agents)
    total = prefill_s + fork_ms / 1e3 + suffix_s
    rows.append((f"ours: {args.suffix}-token suffix + first token, all agents", f"{suffix_s:.2f} s "
                 f"(the first time at these shapes: {cold_s:.2f} s)",
                 f"context->first token of all: {total:.2f} s = {total / prefill_s:.2f}x one prefill; "
                 f"{len(forwards)} prefill forwards, {max(r for r, _ in forwards)} agents at most"))

    prefixes = engine.runner.prefixes
    modes = (("shared prefix expanded", True, True), ("shared prefix absorbed", True, False),
             ("NO shared-prefix attention", False, False))
    done = 0
    for label, shared, expand in modes:
        engine.runner.shared_prefix_attention, prefixes.enabled = shared, expand
        if not expand:
            prefixes.release()
        steps = args.decode if expand else min(args.decode, 32)
        engine.decode_steps.clear()
        await asyncio.gather(*(a.generate(SamplingParams(max_tokens=CAPTURE_AFTER + 1, stop_token_ids=[]))
                               for a in agents))
        warmup_ms = max(t for b, t in engine.decode_steps if b == args.agents) * 1e3
        done += CAPTURE_AFTER + 1
        engine.decode_steps.clear()
        start = time.perf_counter()
        await asyncio.gather(*(a.generate(SamplingParams(max_tokens=steps, stop_token_ids=[])) for a in agents))
        wall = time.perf_counter() - start
        step_ms = [t * 1e3 for b, t in engine.decode_steps if b == args.agents]
        private = args.suffix + done + steps // 2
        done += steps
        used = expand and prefixes.builds > 0
        floor_s = foot.decode_bytes(args.agents, layout, args.context, private, shared, used) / floors["copy"]
        p50 = statistics.median(step_ms)
        note = "" if used or not expand else f" (stayed absorbed: {absorbed_because(prefixes, args)})"
        rows.append((f"ours: decode {args.agents} agents, {label}{note}",
                     f"p50 {p50:.1f} ms/step, p99 {percentile(step_ms, 0.99):.1f} ms "
                     f"({percentile(step_ms, 0.99) / p50:.2f}x p50), {args.agents * steps / wall:,.0f} tok/s; "
                     f"slowest of the {CAPTURE_AFTER + 1} steps before (graph capture): {warmup_ms:.0f} ms",
                     f"floor {floor_s * 1e3:.1f} ms/step -> {p50 / (floor_s * 1e3):.2f}x floor"))
    engine.runner.shared_prefix_attention, prefixes.enabled = True, True

    if profiling:
        rows.extend(await print_decode_profile(engine, agents, foot, f"decode {len(agents)} agents"))
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else float("nan")
    stats = engine.stats()
    states = stats["used_slots"] * layout.slot_bytes
    latent = stats["used_pages"] * layout.page_bytes
    shared_latent = -(-args.context // PAGE) * layout.page_bytes
    per_agent = layout.slot_bytes + private_tokens / PAGE * layout.page_bytes
    expanded = args.context * foot.expanded_bytes_per_token() if prefixes.builds else 0
    target = 1.1 * (foot.weights + shared_latent + expanded + args.agents * per_agent)
    rows.append(("ours: peak GPU memory", f"{peak / 2**30:.1f} GiB ({peak / target:.2f}x the target bound)",
                 f"weights {foot.weights / 2**30:.1f} + KDA states {states / 2**30:.2f} + latent in use "
                 f"{latent / 2**30:.2f} GiB; pool reserved up front {budget / 2**30:.1f} GiB; target bound "
                 f"{target / 2**30:.1f} GiB (the expanded prefix's {expanded / 2**30:.1f} GiB included)"))
    for a in [root, *agents]:
        a.close()
    await engine.drain()

    figures = {"prefill": prefill_s}
    if profiling:
        rows.extend(await print_prefill_profile(engine, args.single_context, vocab))
    single = await engine.session(ids(args.single_context, vocab, 7))
    floor = foot.decode_bytes(1, layout, args.single_context, 0, True) / floors["copy"] * 1e3
    graphs = engine.runner.graphs
    for mode, runner_graphs in (("CUDA graphs", graphs), ("eager", None)):
        if mode == "CUDA graphs" and graphs is None:
            continue
        engine.runner.graphs = runner_graphs  # the engine is idle between generate calls
        engine.decode_steps.clear()
        await single.generate(SamplingParams(max_tokens=64, stop_token_ids=[]))
        step = statistics.median(t for b, t in engine.decode_steps if b == 1) * 1e3
        rows.append((f"ours: decode batch 1 after {args.single_context // 1024}K, {mode}", f"{step:.2f} ms/token",
                     f"floor {floor:.2f} ms -> {step / floor:.1f}x"))
        figures.setdefault("decode1", step)
    engine.runner.graphs = graphs
    if profiling:
        rows.extend(await print_decode_profile(engine, [single], foot, f"decode batch 1 after "
                                               f"{args.single_context // 1024}K, CUDA graphs"))
    few = single.fork(args.few_agents)
    engine.decode_steps.clear()
    await asyncio.gather(*(a.generate(SamplingParams(max_tokens=64, stop_token_ids=[])) for a in few))
    step = statistics.median(t for b, t in engine.decode_steps if b == args.few_agents) * 1e3
    floor = foot.decode_bytes(args.few_agents, layout, args.single_context, 64, True) / floors["copy"] * 1e3
    rows.append((f"ours: decode {args.few_agents} agents after {args.single_context // 1024}K", f"{step:.2f} ms/step",
                 f"floor {floor:.2f} ms -> {step / floor:.1f}x"))
    for a in few:
        a.close()
    single.close()
    rows.append(("ours: no-fork alternative", f"{args.agents} x {prefill_s:.2f} s = {args.agents * prefill_s:.0f} s",
                 "each agent prefills the context itself (projected from the measured prefill)"))
    engine.shutdown()
    del engine, model, single, root, agents
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return figures


@torch.inference_mode()
def theirs(args, device, config, rows) -> dict[str, float]:
    """transformers' KimiLinearForCausalLM (fla kernels) with the same random initialisation."""
    from transformers import KimiLinearConfig as HFConfig
    from transformers import KimiLinearForCausalLM as HFModel


    hf_config = HFConfig(**{k: v for k, v in PRESETS[args.preset].items() if k != "model_type"})
    with torch.device("meta"):
        model = HFModel(hf_config)
    model = model.to(torch.bfloat16).to_empty(device=device)
    randomize_(model, torch.Generator(device=device).manual_seed(0))
    model.eval()
    vocab = config.vocab_size
    x = torch.tensor([ids(args.context, vocab, 0)], device=device)
    model(x, logits_to_keep=1)  # fla tunes its kernels per shape: the timed run is the second at this length
    sync(device)
    start = time.perf_counter()
    model(x, logits_to_keep=1, use_cache=True)
    sync(device)
    prefill_s = time.perf_counter() - start
    rows.append((f"transformers+fla: prefill {args.context // 1024}K", f"{prefill_s:.2f} s "
                 f"({args.context / prefill_s:,.0f} tok/s)", ""))
    out = model(x[:, :args.single_context], logits_to_keep=1, use_cache=True)
    cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    times = []
    for _ in range(16):
        sync(device)
        start = time.perf_counter()
        out = model(token, past_key_values=cache, use_cache=True, logits_to_keep=1)
        sync(device)
        times.append(time.perf_counter() - start)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    rows.append((f"transformers+fla: decode batch 1 after {args.single_context // 1024}K",
                 f"{statistics.median(times) * 1e3:.1f} ms/token", ""))
    return {"prefill": prefill_s, "decode1": statistics.median(times) * 1e3}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context", type=int, default=131072)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--suffix", type=int, default=512)
    parser.add_argument("--decode", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=16384, help="prefill chunk (tokens per forward)")
    parser.add_argument("--transformers", action="store_true", help="also run transformers' model (fla kernels)")
    parser.add_argument("--single-context", type=int, default=8192, help="context before the batch-1 decode")
    parser.add_argument("--profile", action="store_true",
                        help="print the GPU kernels of a few decode steps (all agents, batch 1) and of one prefill "
                             "(GPU only)")
    parser.add_argument("--preset", default="48b", choices=sorted(PRESETS),
                        help="model preset of kimi_swarm.backend.model.presets (small: a smoke run)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default=None,
                        help="FP8 weights (the same random weights as bf16, quantised per row)")
    parser.add_argument("--logits-tokens", type=int, default=1024, help="tokens of the FP8-vs-bf16 logits check")
    parser.add_argument("--few-agents", type=int, default=8, help="agents of the small-batch decode row")
    args = parser.parse_args()
    device = torch.device(args.device)
    config = preset_config(args.preset)
    floors = {"copy": measure_copy_bandwidth(device), "matmul": measure_matmul_rate(device)}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    weights = args.quantization or "bf16"
    print(f"# e2e: {args.preset} preset, {weights} weights, on {name}, copy {floors['copy'] / 1e12:.2f} TB/s, "
          f"bf16 matmul {floors['matmul'] / 1e12:.0f} TFLOP/s", flush=True)
    rows: list[tuple[str, str, str]] = []
    try:
        mine = await ours(args, device, config, rows, floors)
        if args.transformers:
            peer = theirs(args, device, config, rows)
            rows.append((f"ours vs transformers+fla, same run: prefill {args.context // 1024}K",
                         f"**{peer['prefill'] / mine['prefill']:.2f}x** as fast", "both warmed at full length"))
            rows.append((f"ours vs transformers+fla: decode batch 1 after {args.single_context // 1024}K",
                         f"**{peer['decode1'] / mine['decode1']:.1f}x** as fast", ""))
    finally:
        print("\n| phase | measured | floor / note |\n|---|---|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    asyncio.run(main())
