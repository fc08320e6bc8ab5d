"""Kernel benchmark on the GPU: our Triton kernels vs fla-core vs the PyTorch references, one table.

    python benchmarks/kernels.py            # all sections (needs CUDA; fla-core 0.6.0 optional)
    python benchmarks/kernels.py --only kda_chunk mla

Each section first checks correctness in bf16 (against a float64 reference, or against fla where the
reference would take too long), then times with triton.testing.do_bench (median). Percentages are of the
ceilings measured in the same run: device-to-device copy bandwidth (bytes read + written) and an
8192^3 bf16 matmul. The last thing printed is the table; --json writes every row too.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels import kda_reference, kda_triton, mla_reference, mla_triton  # noqa: E402

try:
    from fla.ops.kda import chunk_kda as fla_chunk_kda
    from fla.ops.kda.fused_recurrent import fused_recurrent_kda_fwd as fla_recurrent_fwd
except ImportError:
    fla_chunk_kda = fla_recurrent_fwd = None

H, DK, DV = 32, 128, 128
R, P = 512, 64


@dataclass
class Row:
    section: str
    shape: str
    impl: str
    ms: float
    rate: str = ""
    pct: str = ""
    vs_fla: str = ""
    check: str = ""
    extra: dict = field(default_factory=dict)


ROWS: list[Row] = []
CEIL = {"copy_gbs": float("nan"), "mm_tfs": float("nan")}


def bench(fn, rep=100) -> float:
    return do_bench(fn, warmup=25, rep=rep, return_mode="median")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def gbs(nbytes: float, ms: float) -> tuple[str, str]:
    rate = nbytes / ms / 1e6
    return f"{rate:.0f} GB/s", f"{100 * rate / CEIL['copy_gbs']:.0f}% copy"


def tfs(flops: float, ms: float) -> tuple[str, str]:
    rate = flops / ms / 1e9
    return f"{rate:.0f} TF/s", f"{100 * rate / CEIL['mm_tfs']:.0f}% mm"


def ceilings() -> None:
    src = torch.randn(2 ** 28, device="cuda")
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    CEIL["copy_gbs"] = 2 * src.numel() * 4 / ms / 1e6
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    ms = bench(lambda: a @ b)
    CEIL["mm_tfs"] = 2 * 8192 ** 3 / ms / 1e9
    ROWS.append(Row("ceiling", "2^28 fp32 copy", "torch", 0.0, f"{CEIL['copy_gbs']:.0f} GB/s"))
    ROWS.append(Row("ceiling", "8192^3 bf16", "torch", ms, f"{CEIL['mm_tfs']:.0f} TF/s"))


def kda_inputs(b, t, h, dtype, gate_scale=1.0, device="cuda"):
    q, k, v = (torch.randn(b, t, h, d, device=device, dtype=dtype) for d in (DK, DK, DV))
    g = F.logsigmoid(torch.randn(b, t, h, DK, device=device)) * gate_scale
    beta = torch.rand(b, t, h, device=device).sigmoid()
    return q, k, v, g, beta


def kda_checks() -> None:
    """bf16 and fp32 on the GPU vs a float64 reference, both decay paths, varlen."""
    for dtype, tol in ((torch.bfloat16, 1e-2), (torch.float32, 1e-4)):
        for gate_scale in (1.0, 30.0):
            q, k, v, g, beta = kda_inputs(1, 700, 4, dtype, gate_scale)
            h0 = torch.randn(3, 4, DK, DV, device="cuda")
            cu = torch.tensor([0, 1, 320, 700], device="cuda")
            o, ht = kda_triton.chunk_kda_triton(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                                cu_seqlens=cu, use_qk_l2norm=True)
            ro, rh = kda_reference.chunk_kda_reference(*(x.double() for x in (q, k, v, g, beta)),
                                                       initial_state=h0.double(), output_final_state=True,
                                                       cu_seqlens=cu, use_qk_l2norm=True)
            err = max(rel(o, ro), rel(ht, rh))
            verdict = "ok" if err <= tol else "FAIL"
            ROWS.append(Row("kda_check", f"varlen T=700 H=4 gates x{gate_scale:g}", f"chunk {str(dtype)[6:]}", 0.0,
                            check=f"{verdict} rel {err:.1e}"))
    q, k, v, g, beta = kda_inputs(100, 1, H, torch.bfloat16)
    pool = torch.randn(300, H, DK, DV, device="cuda")
    slots = torch.randperm(300, device="cuda")[:100]
    ref_pool = pool.double()
    ro = kda_reference.recurrent_kda_reference(*(x.double() for x in (q, k, v, g, beta)), ref_pool, slots,
                                               use_qk_l2norm=True)
    o = kda_triton.recurrent_kda_triton(q, k, v, g, beta, pool, slots, use_qk_l2norm=True)
    err = max(rel(o, ro), rel(pool, ref_pool))
    ROWS.append(Row("kda_check", "N=100 pooled decode", "recurrent bf16", 0.0,
                    check=f"{'ok' if err <= 1e-2 else 'FAIL'} rel {err:.1e}"))


def kernel_breakdown(label: str, fn, runs: int = 3) -> None:
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
            print(f"[breakdown] {label}: {event.key[:60]} {total / runs / 1e3:.3f} ms x{event.count // runs}")


def kda_chunk_section(lengths) -> None:
    for t in lengths:
        q, k, v, g, beta = kda_inputs(1, t, H, torch.bfloat16)
        h0 = torch.randn(1, H, DK, DV, device="cuda")
        nbytes = t * H * (2 * DK * 2 + DV * 2 + DK * 4 + 4 + DV * 2) + 2 * h0.numel() * 4
        flops = t * H * (6 * DK * DV + 3 * 64 * DK + 64 * 64)
        fla_ms, fla_out = None, None
        if fla_chunk_kda is not None:
            def run_fla():
                return fla_chunk_kda(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                     use_qk_l2norm_in_kernel=True, safe_gate=False)
            fla_out = run_fla()
            fla_ms = bench(run_fla)
            rate, pct = gbs(nbytes, fla_ms)
            ROWS.append(Row("kda_chunk", f"T={t}", "fla chunk_kda", fla_ms, rate, pct, "1.00x",
                            extra={"tflops": flops / fla_ms / 1e9}))
        for block_v, warps in ((32, 4), (16, 4), (32, 8), (64, 4)):
            def run_ours():
                return kda_triton.chunk_kda_triton(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                                   use_qk_l2norm=True, block_v=block_v, intra_warps=warps)
            out = run_ours()
            ms = bench(run_ours)
            rate, pct = gbs(nbytes, ms)
            check = ""
            if fla_out is not None:
                check = f"vs fla o {rel(out[0], fla_out[0]):.1e} S {rel(out[1], fla_out[1]):.1e}"
            ROWS.append(Row("kda_chunk", f"T={t}", f"ours BV={block_v} intra w={warps}",
                            ms, rate, pct,
                            f"{fla_ms / ms:.2f}x" if fla_ms else "", check,
                            extra={"tflops": flops / ms / 1e9}))
        if t == max(lengths):
            kernel_breakdown(f"ours T={t}", lambda: kda_triton.chunk_kda_triton(
                q, k, v, g, beta, initial_state=h0, output_final_state=True, use_qk_l2norm=True))
            if fla_chunk_kda is not None:
                kernel_breakdown(f"fla T={t}", lambda: fla_chunk_kda(
                    q, k, v, g, beta, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True))
        if t <= 16384:
            ms = bench(lambda: kda_reference.chunk_kda_reference(q, k, v, g, beta, initial_state=h0,
                                                                 output_final_state=True, use_qk_l2norm=True),
                       rep=20)
            rate, pct = gbs(nbytes, ms)
            ROWS.append(Row("kda_chunk", f"T={t}", "torch reference", ms, rate, pct,
                            f"{fla_ms / ms:.2f}x" if fla_ms else ""))
        del q, k, v, g, beta
        torch.cuda.empty_cache()


def kda_decode_section(counts) -> None:
    for n in counts:
        q, k, v, g, beta = kda_inputs(n, 1, H, torch.bfloat16)
        pool = torch.randn(max(n, 1) * 2, H, DK, DV, device="cuda")
        slots = torch.randperm(pool.shape[0], device="cuda")[:n]
        nbytes = 2 * n * H * DK * DV * 4
        fla_ms = None
        if fla_recurrent_fwd is not None:
            flat = [x.reshape(1, n, *x.shape[2:]) for x in (q, k, v, g, beta)]
            cu = torch.arange(n + 1, device="cuda")
            fla_ms = bench(lambda: fla_recurrent_fwd(*flat, initial_state=pool, inplace_final_state=True,
                                                     cu_seqlens=cu, ssm_state_indices=slots,
                                                     use_qk_l2norm_in_kernel=True))
            rate, pct = gbs(nbytes, fla_ms)
            ROWS.append(Row("kda_decode", f"N={n}", "fla fused_recurrent", fla_ms, rate, pct, "1.00x"))
        for block_v in (16, 32, 64):
            ms = bench(lambda: kda_triton.recurrent_kda_triton(q, k, v, g, beta, pool, slots, use_qk_l2norm=True,
                                                               block_v=block_v))
            rate, pct = gbs(nbytes, ms)
            ROWS.append(Row("kda_decode", f"N={n}", f"ours BV={block_v}", ms, rate, pct,
                            f"{fla_ms / ms:.2f}x" if fla_ms else ""))
        if n == 100:
            ms = bench(lambda: kda_reference.recurrent_kda_reference(q, k, v, g, beta, pool, slots,
                                                                     use_qk_l2norm=True), rep=20)
            rate, pct = gbs(nbytes, ms)
            ROWS.append(Row("kda_decode", f"N={n}", "torch reference", ms, rate, pct,
                            f"{fla_ms / ms:.2f}x" if fla_ms else ""))


def mla_cache(n, prefix_len, suffix_len, page_size, distinct_prefix):
    """Paged cache for n sequences; with distinct_prefix each sequence holds its own prefix copy."""
    pre_pages = prefix_len // page_size
    suf_pages = math.ceil(suffix_len / page_size)
    copies = n if distinct_prefix else 1
    num_pages = copies * pre_pages + n * suf_pages
    kv = torch.randn(num_pages, page_size, R + P, device="cuda", dtype=torch.bfloat16)
    order = torch.randperm(num_pages, device="cuda", dtype=torch.int32)
    tables = torch.empty(n, pre_pages + suf_pages, device="cuda", dtype=torch.int32)
    for i in range(n):
        base = (i if distinct_prefix else 0) * pre_pages
        tables[i, :pre_pages] = order[base:base + pre_pages]
        tables[i, pre_pages:] = order[copies * pre_pages + i * suf_pages:copies * pre_pages + (i + 1) * suf_pages]
    return kv, tables


def mla_section(n=100, prefix_len=32768, suffix_len=256, page_size=64) -> None:
    scale = (128 + 64) ** -0.5
    seq_len = prefix_len + suffix_len
    ql = torch.randn(n, H, R, device="cuda", dtype=torch.bfloat16)
    qp = torch.randn(n, H, P, device="cuda", dtype=torch.bfloat16)
    lens = torch.full((n,), seq_len, device="cuda", dtype=torch.int32)
    shape = f"N={n} L={prefix_len}+{suffix_len}"
    flops = 2 * n * H * seq_len * (R + P + R)

    kv, tables = mla_cache(n, prefix_len, suffix_len, page_size, distinct_prefix=True)
    ref = mla_reference.mla_decode_reference(ql[:4].double(), qp[:4].double(), kv, tables[:4], lens[:4], scale)
    base_ms = None
    for block_n, warps, splits in ((32, 4, None), (32, 4, 2), (32, 4, 4), (32, 4, 8), (16, 4, 8), (64, 8, 4),
                                   (32, 8, 8)):
        def run_decode():
            return mla_triton.mla_decode_triton(ql, qp, kv, tables, lens, scale, block_n=block_n,
                                                num_warps=warps, n_splits=splits)
        out = run_decode()
        check = f"vs f64 {rel(out[:4], ref):.1e}"
        ms = bench(run_decode)
        base_ms = ms if base_ms is None else min(base_ms, ms)
        rate, pct = gbs(n * seq_len * (R + P) * 2, ms)
        ROWS.append(Row("mla_decode", shape + " own prefix copies", f"decode BN={block_n} w={warps} splits={splits}", ms, rate,
                        pct, check=check))
    del kv, ref
    torch.cuda.empty_cache()

    kv, tables = mla_cache(n, prefix_len, suffix_len, page_size, distinct_prefix=False)
    plain = mla_triton.mla_decode_triton(ql, qp, kv, tables, lens, scale)
    ms = bench(lambda: mla_triton.mla_decode_triton(ql, qp, kv, tables, lens, scale))
    rate, pct = tfs(flops, ms)
    ROWS.append(Row("mla_decode", shape + " shared pages", "decode (no dedup, L2 reuse)", ms, rate, pct,
                    f"{base_ms / ms:.2f}x vs copies"))
    prefix_pages = tables[0, :prefix_len // page_size].contiguous()
    for block_m, block_n, warps, stages in ((64, 64, 8, 2), (64, 64, 8, 3), (64, 128, 8, 2), (32, 64, 4, 2),
                                            (64, 32, 8, 3)):
        def run_shared():
            return mla_triton.mla_decode_shared_triton(ql, qp, kv, prefix_pages, prefix_len, tables, lens, scale,
                                                       block_m=block_m, block_n=block_n, num_warps=warps,
                                                       num_stages=stages)
        try:
            out = run_shared()
            ms = bench(run_shared)
        except Exception as exc:  # a tile shape that does not fit shared memory on this GPU
            ROWS.append(Row("mla_shared", shape, f"shared BM={block_m} BN={block_n} w={warps} s={stages}",
                            float("nan"), check=f"skipped: {type(exc).__name__}"))
            continue
        rate, pct = tfs(flops, ms)
        ROWS.append(Row("mla_shared", shape, f"shared BM={block_m} BN={block_n} w={warps} s={stages}", ms, rate,
                        pct, f"{base_ms / ms:.2f}x vs copies", f"vs decode {rel(out, plain):.1e}"))
    ms = bench(lambda: mla_reference.mla_decode_shared_reference(ql, qp, kv, prefix_pages, prefix_len, tables, lens,
                                                                 scale), rep=5)
    ROWS.append(Row("mla_shared", shape, "torch reference (shared)", ms, *tfs(flops, ms),
                    f"{base_ms / ms:.2f}x vs copies"))
    del kv
    torch.cuda.empty_cache()

    t, start = 4096, 28672
    kv, tables = mla_cache(1, start + t, 0, page_size, distinct_prefix=True)
    qlt = torch.randn(t, H, R, device="cuda", dtype=torch.bfloat16)
    qpt = torch.randn(t, H, P, device="cuda", dtype=torch.bfloat16)
    ref = mla_reference.mla_prefill_reference(qlt[-64:].double(), qpt[-64:].double(), kv, tables[0],
                                              start + t - 64, scale)
    pflops = 2 * H * (R + P + R) * sum(range(start + 1, start + t + 1))
    for block_m, block_n, warps in ((64, 64, 8), (64, 128, 8)):
        def run_prefill():
            return mla_triton.mla_prefill_triton(qlt, qpt, kv, tables[0], start, scale, block_m=block_m,
                                                 block_n=block_n, num_warps=warps)
        try:
            out = run_prefill()
            ms = bench(run_prefill, rep=50)
        except Exception as exc:
            ROWS.append(Row("mla_prefill", f"T={t} at {start}", f"prefill BM={block_m} BN={block_n} w={warps}",
                            float("nan"), check=f"skipped: {type(exc).__name__}"))
            continue
        ROWS.append(Row("mla_prefill", f"T={t} at {start}", f"prefill BM={block_m} BN={block_n} w={warps}", ms,
                        *tfs(pflops, ms), check=f"vs f64 {rel(out[-64:], ref):.1e}"))


def kernel_resources() -> None:
    """Registers and spills of every compiled variant (Triton's own report)."""
    for name, fn in (("intra", kda_triton._kda_intra_kernel), ("inter", kda_triton._kda_inter_kernel),
                     ("decode", kda_triton._kda_decode_kernel), ("mla", mla_triton._mla_attend_kernel)):
        for cache in getattr(fn, "device_caches", {}).values():
            for compiled in cache[0].values():
                meta = getattr(compiled, "metadata", None)
                print(f"[resources] {name}: regs={getattr(compiled, 'n_regs', '?')} "
                      f"spills={getattr(compiled, 'n_spills', '?')} warps={getattr(meta, 'num_warps', '?')} "
                      f"smem={getattr(meta, 'shared', '?')}")


def print_table() -> None:
    print(f"\nGPU: {torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"fla {'present' if fla_chunk_kda else 'absent'}")
    print("| section | shape | impl | ms | rate | % ceiling | speed-up | check |")
    print("|---|---|---|---|---|---|---|---|")
    for r in ROWS:
        print(f"| {r.section} | {r.shape} | {r.impl} | {r.ms:.3f} | {r.rate} | {r.pct} | {r.vs_fla} | {r.check} |")


SECTIONS = {
    "kda_check": kda_checks,
    "kda_chunk": lambda: kda_chunk_section((16384, 65536, 131072)),
    "kda_decode": lambda: kda_decode_section((1, 16, 100, 256)),
    "mla": mla_section,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(SECTIONS), help="sections to run (default: all)")
    parser.add_argument("--json", type=Path, help="also write every row as JSON here")
    args = parser.parse_args()
    torch.manual_seed(0)
    ceilings()
    for name in args.only or SECTIONS:
        try:
            SECTIONS[name]()
        except Exception:
            traceback.print_exc()
            ROWS.append(Row(name, "", "SECTION FAILED", float("nan")))
        torch.cuda.empty_cache()
    kernel_resources()
    if args.json:
        args.json.write_text(json.dumps({"ceilings": CEIL, "rows": [asdict(r) for r in ROWS]}, indent=1))
    print_table()


if __name__ == "__main__":
    main()
