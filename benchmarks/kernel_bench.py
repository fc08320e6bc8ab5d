"""Kernel benchmark on the GPU: our Triton kernels vs fla-core vs the PyTorch references, one table.

    python benchmarks/kernel_bench.py                       # all sections (needs CUDA; fla-core 0.6.0 optional)
    python benchmarks/kernel_bench.py --only check kda_chunk --kda-alt old/kda_triton.py --json out.json

First every kernel is checked in bf16 (and fp32 for KDA prefill) against a float64 reference on fresh
random inputs, with every buffer the kernels allocate poisoned (NaN) so an unwritten element fails.
Then timings: triton.testing.do_bench medians (CUDA events, the L2 flushed before every run by do_bench),
or the median of a few event-timed runs for the slow PyTorch references. Percentages are of the ceilings
measured in the same run: device-to-device copy bandwidth (bytes read + written) and an 8192^3 bf16
matmul on random data. --kda-alt times a second version of kernels/kda_triton.py beside the current one.
The last thing printed is the table, then the issue's targets with their verdicts.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import json
import math
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from common import cuda_event_median_ms
from triton.testing import do_bench

from kimi_swarm.kernels import kda_reference, kda_triton, mla_reference, mla_triton, norm_reference, norm_triton

try:
    from fla.ops.kda import chunk_kda as fla_chunk_kda
    from fla.ops.kda.fused_recurrent import fused_recurrent_kda_fwd as fla_recurrent_fwd
except ImportError:
    fla_chunk_kda = fla_recurrent_fwd = None

DEVICE = "cuda"
H, DK, DV = 32, 128, 128
R, P = 512, 64
CHUNK_LENGTHS = (16384, 65536, 131072)
DECODE_COUNTS = (1, 100, 256)
HIDDEN, NORM_ROWS, NORM_EPS = 2304, (1, 100), 1e-5
# launch shapes swept per KDA implementation; keys a version does not take are dropped for it
CHUNK_CONFIGS = (
    dict(block_v=32),
    dict(block_v=16),
    dict(block_v=32, row_warps=4),
    dict(block_v=32, local_warps=2),
    dict(block_v=32, inter_stages=2),
)


class OutOfTime(Exception):
    """The --deadline passed: skip the remaining timings and print what we have."""


@dataclass
class Row:
    section: str
    shape: str
    impl: str
    ms: float
    rate: str = ""
    pct: str = ""
    speedup: str = ""
    check: str = ""
    extra: dict = field(default_factory=dict)


ROWS: list[Row] = []
CEIL = {"copy_gbs": float("nan"), "mm_tfs": float("nan")}
DEADLINE = [math.inf]
BEST: dict[str, float] = {}


def bench(fn, rep=200) -> float:
    if time.monotonic() > DEADLINE[0]:
        raise OutOfTime
    return do_bench(fn, warmup=25, rep=rep, return_mode="median")


def time_slow(fn, runs=3) -> float:
    """Median of a few event-timed runs after one warm-up: for references too slow for do_bench."""
    if time.monotonic() > DEADLINE[0]:
        raise OutOfTime
    fn()
    return cuda_event_median_ms(fn, runs)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def verdict(err: float, tol: float) -> str:
    return f"{'ok' if err <= tol else 'FAIL'} {err:.1e}"  # NaN (an unwritten element) fails


def gbs(nbytes: float, ms: float) -> tuple[str, str]:
    rate = nbytes / ms / 1e6
    return f"{rate:.0f} GB/s", f"{100 * rate / CEIL['copy_gbs']:.0f}% copy"


def tfs(flops: float, ms: float) -> tuple[str, str]:
    rate = flops / ms / 1e9
    return f"{rate:.0f} TF/s", f"{100 * rate / CEIL['mm_tfs']:.0f}% mm"


def ratio(base: float | None, ms: float) -> str:
    return f"{base / ms:.2f}x" if base else ""


@contextlib.contextmanager
def poisoned(*modules: ModuleType):
    """Every buffer the kernels allocate starts as NaN, so an element they forget to write fails the check."""
    saved = [m._empty for m in modules]

    def nan_empty(*shape, device, dtype):
        return torch.full(shape, float("nan"), device=device, dtype=dtype)

    for m in modules:
        m._empty = nan_empty
    try:
        yield
    finally:
        for m, original in zip(modules, saved):
            m._empty = original


def accepted(fn, config: dict) -> dict:
    params = inspect.signature(fn).parameters
    return {k: v for k, v in config.items() if k in params}


def label(config: dict) -> str:
    short = {"block_v": "BV", "local_warps": "lw", "row_warps": "rw", "solve_warps": "sw", "inter_warps": "xw",
             "inter_stages": "xs"}
    return " ".join(f"{short[k]}={v}" for k, v in config.items())


def ceilings() -> None:
    src = torch.randn(2 ** 28, device=DEVICE)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    CEIL["copy_gbs"] = 2 * src.numel() * 4 / ms / 1e6
    ROWS.append(Row("ceiling", "2^28 fp32 copy (r+w)", "torch", ms, f"{CEIL['copy_gbs']:.0f} GB/s"))
    a, b = (torch.randn(8192, 8192, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
    ms = bench(lambda: a @ b)
    CEIL["mm_tfs"] = 2 * 8192 ** 3 / ms / 1e9
    ROWS.append(Row("ceiling", "8192^3 bf16 matmul", "torch", ms, f"{CEIL['mm_tfs']:.0f} TF/s"))


def kda_inputs(b, t, h, dtype, gate_scale=1.0):
    q, k, v = (torch.randn(b, t, h, d, device=DEVICE, dtype=dtype) for d in (DK, DK, DV))
    g = F.logsigmoid(torch.randn(b, t, h, DK, device=DEVICE)) * gate_scale
    beta = torch.rand(b, t, h, device=DEVICE, dtype=dtype)
    return q, k, v, g, beta


def float64(*xs):
    return [x.double() for x in xs]


def check_chunk(name: str, module: ModuleType) -> None:
    """bf16 and fp32 vs float64: both decay paths on a small varlen batch, then the issue's H and K=V."""
    dtypes = ((torch.bfloat16, 1e-2), (torch.float32, 1e-4)) if name == "ours" else ((torch.bfloat16, 1e-2),)
    cases = [(dtype, tol, 700, H, scale, (0, 1, 320, 700)) for dtype, tol in dtypes for scale in (1.0, 30.0)]
    cases.append((torch.bfloat16, 1e-2, 4096, H, 1.0, (0, 1000, 1001, 4096)))
    for dtype, tol, t, h, gate_scale, bounds in cases:
        q, k, v, g, beta = kda_inputs(1, t, h, dtype, gate_scale)
        cu = torch.tensor(bounds, device=DEVICE)
        h0 = torch.randn(len(bounds) - 1, h, DK, DV, device=DEVICE)
        with poisoned(module):
            o, ht = module.chunk_kda_triton(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                            cu_seqlens=cu, use_qk_l2norm=True)
        ro, rh = kda_reference.chunk_kda_reference(*float64(q, k, v, g, beta), initial_state=h0.double(),
                                                   output_final_state=True, cu_seqlens=cu, use_qk_l2norm=True)
        shape = f"varlen T={t} H={h} gates x{gate_scale:g}"
        ROWS.append(Row("check", shape, f"{name} chunk {str(dtype)[6:]}", 0.0,
                        check=f"o {verdict(rel(o, ro), tol)}, S {verdict(rel(ht, rh), tol)}"))
        if fla_chunk_kda is not None and h == H and dtype == torch.bfloat16 and name == "ours":
            fo, fh = fla_chunk_kda(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                   use_qk_l2norm_in_kernel=True, safe_gate=False, cu_seqlens=cu)
            ROWS.append(Row("check", shape, "fla chunk bf16 (its own error)", 0.0,
                            check=f"o {verdict(rel(fo, ro), tol)}, S {verdict(rel(fh, rh), tol)}"))


def check_decode(name: str, module: ModuleType) -> None:
    q, k, v, g, beta = kda_inputs(100, 1, H, torch.bfloat16)
    pool = torch.randn(300, H, DK, DV, device=DEVICE)
    slots = torch.randperm(300, device=DEVICE)[:100]
    ref_pool = pool.double()
    ro = kda_reference.recurrent_kda_reference(*float64(q, k, v, g, beta), ref_pool, slots, use_qk_l2norm=True)
    before = pool.clone()
    with poisoned(module):
        o = module.recurrent_kda_triton(q, k, v, g, beta, pool, slots, use_qk_l2norm=True)
    others = torch.ones(300, dtype=torch.bool, device=DEVICE)
    others[slots] = False
    untouched = "others untouched" if torch.equal(pool[others], before[others]) else "FAIL: other rows written"
    ROWS.append(Row("check", "N=100 pooled decode", f"{name} recurrent bf16", 0.0,
                    check=f"o {verdict(rel(o, ro), 1e-2)}, S {verdict(rel(pool, ref_pool), 1e-2)}, {untouched}"))


def mla_cache(n, prefix_len, suffix_lens, page_size, distinct_prefix):
    """Paged cache in shuffled pages; without distinct_prefix all sequences share the prefix pages."""
    pre_pages = prefix_len // page_size
    suf_pages = [math.ceil(s / page_size) for s in suffix_lens]
    copies = n if distinct_prefix else 1
    num_pages = copies * pre_pages + sum(suf_pages)
    kv = torch.randn(num_pages, page_size, R + P, device=DEVICE, dtype=torch.bfloat16)
    order = torch.randperm(num_pages, device=DEVICE).to(torch.int32)
    tables = torch.zeros(n, pre_pages + max(suf_pages), device=DEVICE, dtype=torch.int32)
    used = copies * pre_pages
    for i in range(n):
        base = (i if distinct_prefix else 0) * pre_pages
        tables[i, :pre_pages] = order[base:base + pre_pages]
        tables[i, pre_pages:pre_pages + suf_pages[i]] = order[used:used + suf_pages[i]]
        used += suf_pages[i]
    lens = torch.tensor([prefix_len + s for s in suffix_lens], device=DEVICE, dtype=torch.int32)
    return kv, tables, lens


def check_mla() -> None:
    """bf16 vs float64 on ragged lengths: decode, shared prefix (partial last page) and causal prefill."""
    scale = (128 + 64) ** -0.5
    n, prefix = 12, 2048
    suffixes = [0, 1, 63, 64, 65, 200, 300, 511, 7, 100, 256, 129]
    kv, tables, lens = mla_cache(n, prefix, suffixes, 64, distinct_prefix=False)
    ql = torch.randn(n, H, R, device=DEVICE, dtype=torch.bfloat16)
    qp = torch.randn(n, H, P, device=DEVICE, dtype=torch.bfloat16)
    ref = mla_reference.mla_decode_reference(*float64(ql, qp), kv, tables, lens, scale)
    with poisoned(mla_triton):
        out = mla_triton.mla_decode_triton(ql, qp, kv, tables, lens, scale)
    ROWS.append(Row("check", f"N={n} L={prefix}+0..511", "ours mla_decode bf16", 0.0,
                    check=verdict(rel(out, ref), 1e-2)))
    shared_len = prefix - 40  # a shared partial page
    with poisoned(mla_triton):
        out = mla_triton.mla_decode_shared_triton(ql, qp, kv, tables[0, :prefix // 64].contiguous(), shared_len,
                                                  tables, lens, scale)
    ROWS.append(Row("check", f"N={n} shared {shared_len}", "ours mla_decode_shared bf16", 0.0,
                    check=verdict(rel(out, ref), 1e-2)))
    t, start = 300, 1700
    qlt = torch.randn(t, H, R, device=DEVICE, dtype=torch.bfloat16)
    qpt = torch.randn(t, H, P, device=DEVICE, dtype=torch.bfloat16)
    ref = mla_reference.mla_prefill_reference(*float64(qlt, qpt), kv, tables[6], start, scale)
    with poisoned(mla_triton):
        out = mla_triton.mla_prefill_triton(qlt, qpt, kv, tables[6], start, scale)
    ROWS.append(Row("check", f"T={t} at {start}", "ours mla_prefill bf16", 0.0, check=verdict(rel(out, ref), 1e-2)))


def check_norms() -> None:
    """bf16 vs float64 at decode shapes: the hidden norm, the MLA latent norm on its strided slice of the
    kv projection, and the KDA output norm per head."""
    x = torch.randn(100, 1, HIDDEN, device=DEVICE, dtype=torch.bfloat16)
    kv = torch.randn(100, 1, R + P, device=DEVICE, dtype=torch.bfloat16)
    xg, gate = (torch.randn(100, 1, H, DV, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
    w, w_lat, w_g = (torch.randn(d, device=DEVICE, dtype=torch.bfloat16) for d in (HIDDEN, R, DV))
    latent = kv[..., :R]
    with poisoned(norm_triton):
        cases = [
            (f"N=100 D={HIDDEN}", "rms_norm", norm_triton.rms_norm_triton(x, w, NORM_EPS),
             norm_reference.rms_norm_float64(x, w, NORM_EPS)),
            (f"N=100 kv[..., :{R}]", "rms_norm strided", norm_triton.rms_norm_triton(latent, w_lat, 1e-6),
             norm_reference.rms_norm_float64(latent, w_lat, 1e-6)),
            (f"N=100 H={H} D={DV}", "gated_rms_norm", norm_triton.gated_rms_norm_triton(xg, gate, w_g, NORM_EPS),
             norm_reference.rms_norm_float64(xg, w_g, NORM_EPS, gate)),
        ]
    for shape, name, out, ref in cases:
        ROWS.append(Row("check", shape, f"ours {name} bf16", 0.0, check=verdict(rel(out, ref), 1e-2)))


def kernel_breakdown(label_: str, fn, runs: int = 3) -> None:
    """Per-kernel GPU time of fn (torch.profiler), to see which launch dominates."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            fn()
        torch.cuda.synchronize()
    for event in prof.key_averages():
        total = getattr(event, "device_time_total", getattr(event, "cuda_time_total", 0))
        if total > 0:
            print(f"[breakdown] {label_}: {event.key[:70]} {total / runs / 1e3:.3f} ms x{event.count // runs}")


def kda_chunk_section(impls: dict[str, ModuleType]) -> None:
    """B=1, H=32, K=V=128, bf16 q/k/v/beta, fp32 g and state, l2norm in kernel, final state out."""
    best_call = {}
    for t in CHUNK_LENGTHS:
        q, k, v, g, beta = kda_inputs(1, t, H, torch.bfloat16)
        h0 = torch.randn(1, H, DK, DV, device=DEVICE)
        nbytes = t * H * (2 * DK * 2 + DV * 2 + DK * 4 + 2 + DV * 2) + 2 * h0.numel() * 4
        flops = t * H * (6 * DK * DV + 3 * 64 * DK + 64 * 64)
        fla_ms, fla_out = None, None
        if fla_chunk_kda is not None:
            def run_fla():
                return fla_chunk_kda(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                     use_qk_l2norm_in_kernel=True, safe_gate=False)
            fla_out = run_fla()
            fla_ms = bench(run_fla)
            ROWS.append(Row("kda_chunk", f"T={t}", "fla chunk_kda", fla_ms, *gbs(nbytes, fla_ms), "1.00x",
                            extra={"tflops": flops / fla_ms / 1e9}))
            BEST[f"fla_chunk_{t}"] = fla_ms
        for name, module in impls.items():
            for config in CHUNK_CONFIGS:
                kwargs = accepted(module.chunk_kda_triton, config)
                if kwargs != config:
                    continue

                def run_ours(module=module, kwargs=kwargs):
                    return module.chunk_kda_triton(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                                   use_qk_l2norm=True, **kwargs)
                out = run_ours()
                ms = bench(run_ours)
                check = f"vs fla o {rel(out[0], fla_out[0]):.1e} S {rel(out[1], fla_out[1]):.1e}" if fla_out else ""
                ROWS.append(Row("kda_chunk", f"T={t}", f"{name} {label(config)}", ms, *gbs(nbytes, ms),
                                ratio(fla_ms, ms), check, extra={"tflops": flops / ms / 1e9, "config": config}))
                key = f"{name}_chunk_{t}"
                if ms < BEST.get(key, math.inf):
                    BEST[key] = ms
                    best_call[name] = run_ours
        if fla_ms is not None:
            again = bench(run_fla)
            print(f"[noise] fla chunk_kda T={t}: {fla_ms:.3f} ms then {again:.3f} ms")
        if t == CHUNK_LENGTHS[0]:
            ms = time_slow(lambda: kda_reference.chunk_kda_reference(q, k, v, g, beta, initial_state=h0,
                                                                     output_final_state=True, use_qk_l2norm=True))
            ROWS.append(Row("kda_chunk", f"T={t}", "torch reference", ms, *gbs(nbytes, ms), ratio(fla_ms, ms)))
        if t == CHUNK_LENGTHS[-1]:
            for name, fn in best_call.items():
                kernel_breakdown(f"{name} best T={t}", fn)
            if fla_chunk_kda is not None:
                kernel_breakdown(f"fla T={t}", run_fla)
        q = k = v = g = beta = fla_out = None  # free the inputs before the next, longer ones
        torch.cuda.empty_cache()


def kda_decode_section(impls: dict[str, ModuleType]) -> None:
    """One token for each of N sequences against an fp32 state pool [2N, 32, 128, 128], updated in place."""
    for n in DECODE_COUNTS:
        q, k, v, g, beta = kda_inputs(n, 1, H, torch.bfloat16)
        pool = torch.randn(2 * n, H, DK, DV, device=DEVICE)
        slots = torch.randperm(2 * n, device=DEVICE)[:n]
        nbytes = 2 * n * H * DK * DV * 4
        fla_ms = None
        if fla_recurrent_fwd is not None:
            flat = [x.reshape(1, n, *x.shape[2:]) for x in (q, k, v, g, beta)]
            cu = torch.arange(n + 1, device=DEVICE)
            fla_ms = bench(lambda: fla_recurrent_fwd(*flat, initial_state=pool, inplace_final_state=True,
                                                     cu_seqlens=cu, ssm_state_indices=slots,
                                                     use_qk_l2norm_in_kernel=True))
            ROWS.append(Row("kda_decode", f"N={n}", "fla fused_recurrent", fla_ms, *gbs(nbytes, fla_ms), "1.00x"))
            BEST[f"fla_decode_{n}"] = fla_ms
        for name, module in list(impls.items())[:1]:  # the decode kernel is the same in every version
            for block_v in (16, 32):
                ms = bench(lambda: module.recurrent_kda_triton(q, k, v, g, beta, pool, slots, use_qk_l2norm=True,
                                                               block_v=block_v))
                ROWS.append(Row("kda_decode", f"N={n}", f"{name} BV={block_v}", ms, *gbs(nbytes, ms),
                                ratio(fla_ms, ms)))
                BEST[f"{name}_decode_{n}"] = min(ms, BEST.get(f"{name}_decode_{n}", math.inf))
        if n == 100:
            ms = time_slow(lambda: kda_reference.recurrent_kda_reference(q, k, v, g, beta, pool, slots,
                                                                         use_qk_l2norm=True), runs=5)
            ROWS.append(Row("kda_decode", f"N={n}", "torch reference", ms, *gbs(nbytes, ms), ratio(fla_ms, ms)))


def norm_section() -> None:
    """The 48B model's decode-step norms in bf16: one fused launch vs the eager chain of small kernels."""
    w, w_g = (torch.randn(d, device=DEVICE, dtype=torch.bfloat16) for d in (HIDDEN, DV))
    for n in NORM_ROWS:
        x = torch.randn(n, 1, HIDDEN, device=DEVICE, dtype=torch.bfloat16)
        nbytes = 2 * x.numel() * 2 + HIDDEN * 2
        ref_ms = bench(lambda: norm_reference.rms_norm_reference(x, w, NORM_EPS))
        ROWS.append(Row("norm", f"N={n} D={HIDDEN}", "torch reference rms_norm", ref_ms, *gbs(nbytes, ref_ms),
                        "1.00x"))
        ms = bench(lambda: norm_triton.rms_norm_triton(x, w, NORM_EPS))
        ROWS.append(Row("norm", f"N={n} D={HIDDEN}", "ours rms_norm", ms, *gbs(nbytes, ms), ratio(ref_ms, ms)))
    x, gate = (torch.randn(100, 1, H, DV, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
    nbytes = 3 * x.numel() * 2 + DV * 2
    shape = f"N=100 H={H} D={DV}"
    ref_ms = bench(lambda: norm_reference.gated_rms_norm_reference(x, gate, w_g, NORM_EPS))
    ROWS.append(Row("norm", shape, "torch reference gated_rms_norm", ref_ms, *gbs(nbytes, ref_ms), "1.00x"))
    ms = bench(lambda: norm_triton.gated_rms_norm_triton(x, gate, w_g, NORM_EPS))
    ROWS.append(Row("norm", shape, "ours gated_rms_norm", ms, *gbs(nbytes, ms), ratio(ref_ms, ms)))


def mla_section(n=100, prefix_len=32768, suffix_len=256, page_size=64, prefill_tokens=4096,
                prefill_start=28672) -> None:
    """Decode of 100 agents over a 32K shared prefix + 256 private tokens, 32 heads, R=512 + P=64; then a
    4K-token causal prefill behind 28K cached tokens."""
    scale = (128 + 64) ** -0.5
    seq_len = prefix_len + suffix_len
    ql = torch.randn(n, H, R, device=DEVICE, dtype=torch.bfloat16)
    qp = torch.randn(n, H, P, device=DEVICE, dtype=torch.bfloat16)
    shape = f"N={n} L={prefix_len}+{suffix_len}"
    flops = 2 * n * H * seq_len * (R + P + R)
    kv_bytes = n * seq_len * (R + P) * 2

    kv, tables, lens = mla_cache(n, prefix_len, [suffix_len] * n, page_size, distinct_prefix=True)
    base_ms = math.inf
    for block_n, warps, stages in ((32, 4, 3), (64, 4, 3), (64, 8, 2)):
        def run_decode():
            return mla_triton.mla_decode_triton(ql, qp, kv, tables, lens, scale, block_n=block_n,
                                                num_warps=warps, num_stages=stages)
        try:
            ms = bench(run_decode)
        except OutOfTime:
            raise
        except Exception as exc:  # a tile shape that does not fit shared memory on this GPU
            ROWS.append(Row("mla_decode", shape, f"decode BN={block_n} w={warps} s={stages}", float("nan"),
                            check=f"skipped: {type(exc).__name__}"))
            continue
        base_ms = min(base_ms, ms)
        ROWS.append(Row("mla_decode", shape + " own prefix copies", f"decode BN={block_n} w={warps} s={stages}",
                        ms, *gbs(kv_bytes, ms)))
    BEST["mla_no_sharing"] = base_ms
    BEST["mla_no_sharing_copy_pct"] = 100 * kv_bytes / base_ms / 1e6 / CEIL["copy_gbs"]
    del kv
    torch.cuda.empty_cache()

    kv, tables, lens = mla_cache(n, prefix_len, [suffix_len] * n, page_size, distinct_prefix=False)
    plain = mla_triton.mla_decode_triton(ql, qp, kv, tables, lens, scale)
    ms = bench(lambda: mla_triton.mla_decode_triton(ql, qp, kv, tables, lens, scale))
    ROWS.append(Row("mla_decode", shape + " shared pages", "decode, default tiles (no dedup, L2 reuse)", ms,
                    *tfs(flops, ms), ratio(base_ms, ms)))
    prefix_pages = tables[0, :prefix_len // page_size].contiguous()
    best = math.inf
    for block_m, block_n, warps, stages in ((64, 64, 8, 2), (64, 64, 8, 3), (64, 32, 8, 2)):
        def run_shared():
            return mla_triton.mla_decode_shared_triton(ql, qp, kv, prefix_pages, prefix_len, tables, lens, scale,
                                                       block_m=block_m, block_n=block_n, num_warps=warps,
                                                       num_stages=stages)
        try:
            out = run_shared()
            ms = bench(run_shared)
        except OutOfTime:
            raise
        except Exception as exc:  # a tile shape that does not fit shared memory on this GPU
            ROWS.append(Row("mla_shared", shape, f"shared BM={block_m} BN={block_n} w={warps} s={stages}",
                            float("nan"), check=f"skipped: {type(exc).__name__}"))
            continue
        best = min(best, ms)
        ROWS.append(Row("mla_shared", shape, f"shared BM={block_m} BN={block_n} w={warps} s={stages}", ms,
                        *tfs(flops, ms), ratio(base_ms, ms), f"vs decode {rel(out, plain):.1e}"))
    BEST["mla_shared"] = best
    ms = time_slow(lambda: mla_reference.mla_decode_shared_reference(ql, qp, kv, prefix_pages, prefix_len, tables,
                                                                     lens, scale))
    ROWS.append(Row("mla_shared", shape, "torch reference (shared)", ms, *tfs(flops, ms), ratio(base_ms, ms)))
    del kv
    torch.cuda.empty_cache()

    t, start = prefill_tokens, prefill_start
    kv, tables, _ = mla_cache(1, 0, [start + t], page_size, distinct_prefix=True)
    qlt = torch.randn(t, H, R, device=DEVICE, dtype=torch.bfloat16)
    qpt = torch.randn(t, H, P, device=DEVICE, dtype=torch.bfloat16)
    pflops = 2 * H * (R + P + R) * sum(range(start + 1, start + t + 1))
    for block_m, block_n, warps in ((64, 64, 8),):
        def run_prefill():
            return mla_triton.mla_prefill_triton(qlt, qpt, kv, tables[0], start, scale, block_m=block_m,
                                                 block_n=block_n, num_warps=warps)
        ms = bench(run_prefill, rep=100)
        ROWS.append(Row("mla_prefill", f"T={t} at {start}", f"prefill BM={block_m} BN={block_n} w={warps}", ms,
                        *tfs(pflops, ms)))


def kernel_resources(impls: dict[str, ModuleType]) -> None:
    """Registers, spills and shared memory of every compiled kernel (Triton's own report)."""
    for module in (*impls.values(), mla_triton, norm_triton):
        for name, fn in vars(module).items():
            for cache in getattr(fn, "device_caches", {}).values():
                for compiled in cache[0].values():
                    meta = getattr(compiled, "metadata", None)
                    print(f"[resources] {module.__name__}.{name}: regs={getattr(compiled, 'n_regs', '?')} "
                          f"spills={getattr(compiled, 'n_spills', '?')} warps={getattr(meta, 'num_warps', '?')} "
                          f"stages={getattr(meta, 'num_stages', '?')} smem={getattr(meta, 'shared', '?')}")


def targets(impls: dict[str, ModuleType]) -> list[str]:
    """The issue's targets (stated for H100) against this run's numbers."""
    lines = []
    for name in impls:
        for t in CHUNK_LENGTHS:
            ours, fla = BEST.get(f"{name}_chunk_{t}"), BEST.get(f"fla_chunk_{t}")
            if ours and fla:
                lines.append(f"chunk_kda T={t} {name}: {fla / ours:.2f}x fla (target >= 1.5x): "
                             f"{'MET' if fla / ours >= 1.5 else 'missed'}")
        ours, fla = BEST.get(f"{name}_decode_100"), BEST.get("fla_decode_100")
        if ours:
            pct = 100 * (2 * 100 * H * DK * DV * 4 / ours / 1e6) / CEIL["copy_gbs"]
            vs = f"{fla / ours:.2f}x fla (target >= 1.0x), " if fla else ""
            lines.append(f"recurrent_kda N=100 {name}: {vs}{pct:.0f}% copy (target >= 85%): "
                         f"{'MET' if pct >= 85 and (not fla or fla / ours >= 1.0) else 'missed'}")
    plain, shared = BEST.get("mla_no_sharing"), BEST.get("mla_shared")
    if plain and shared and math.isfinite(shared):
        pct = BEST["mla_no_sharing_copy_pct"]
        lines.append(f"MLA shared prefix: {plain / shared:.2f}x no-sharing (target >= 3x): "
                     f"{'MET' if plain / shared >= 3 else 'missed'}; no-sharing at {pct:.0f}% copy "
                     f"(target >= 80%): {'MET' if pct >= 80 else 'missed'}")
    return lines


def print_table(impls: dict[str, ModuleType]) -> None:
    print(f"\nGPU: {torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"fla {'present' if fla_chunk_kda else 'absent'}")
    print("| section | shape | impl | ms | rate | % ceiling | speed-up | check |")
    print("|---|---|---|---|---|---|---|---|")
    for r in ROWS:
        ms = f"{r.ms:.3f}" if r.ms else ""
        print(f"| {r.section} | {r.shape} | {r.impl} | {ms} | {r.rate} | {r.pct} | {r.speedup} | {r.check} |")
    print("\nTargets (stated for H100; this run's GPU above, fla in the same run):")
    for line in targets(impls):
        print("  " + line)


def load_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    sections = ("check", "kda_chunk", "kda_decode", "mla", "norm")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sections, help="sections to run (default: all)")
    parser.add_argument("--kda-alt", type=Path, help="another kda_triton.py to check and time beside ours")
    parser.add_argument("--deadline", type=float, default=math.inf,
                        help="seconds after which remaining timings are skipped and the table is printed")
    parser.add_argument("--json", type=Path, help="also write every row as JSON here")
    args = parser.parse_args()
    DEADLINE[0] = time.monotonic() + args.deadline
    impls = {"ours": kda_triton}
    if args.kda_alt:
        impls[args.kda_alt.stem] = load_module(args.kda_alt, args.kda_alt.stem)
    torch.manual_seed(0)
    run = {
        "check": lambda: ([check_chunk(n, m) for n, m in impls.items()], [check_decode(n, m) for n, m in impls.items()],
                          check_mla(), check_norms()),
        "kda_chunk": lambda: kda_chunk_section(impls),
        "kda_decode": lambda: kda_decode_section(impls),
        "mla": mla_section,
        "norm": norm_section,
    }
    try:
        ceilings()
        for name in args.only or sections:
            try:
                run[name]()
            except OutOfTime:
                raise
            except Exception:
                traceback.print_exc()
                ROWS.append(Row(name, "", "SECTION FAILED", float("nan")))
            torch.cuda.empty_cache()
    except OutOfTime:
        ROWS.append(Row("deadline", "", "remaining timings skipped", float("nan")))
    try:
        kernel_resources(impls)
    except Exception:
        traceback.print_exc()
    if args.json:
        args.json.write_text(json.dumps({"ceilings": CEIL, "best_ms": BEST, "rows": [asdict(r) for r in ROWS]},
                                        indent=1))
    print_table(impls)


if __name__ == "__main__":
    main()
