"""Small-batch GEMMs of the 48B layer shapes on the GPU: bf16 cuBLAS against the FP8 weight-only Triton GEMM at
several tile shapes and against FP8 tensor cores (rows quantised, torch._scaled_mm), and the routed experts
through the grouped GEMM against the fused kernel (bf16 and FP8).

    python3 benchmarks/fp8_moe_bench.py

Each variant is checked against float64 first (relative error), then timed as the engine runs it, inside a CUDA
graph: one graph runs the call over 8 weight copies (dense) or 8 routings (experts) in turn, so no call finds its
weights in L2, and CUDA events time its replays (median of 50). Timing single eager calls measures the host's
launch cost instead: Triton's launcher and the routing's small tensor ops take longer to issue than the GEMMs
take to run. Bandwidth counts the weight bytes the call must read (for the experts: the distinct experts the
batch reaches), as a share of a device-to-device copy measured in the same run.
"""

from __future__ import annotations

import copy
import statistics

import torch
import torch.nn.functional as F
from common import cuda_event_median_ms

from kimi_swarm.backend.model.fp8 import quantize_experts_
from kimi_swarm.backend.model.moe import FUSED_MOE_TOKENS, StackedExperts, fp8_grouped_gemm_runs
from kimi_swarm.kernels import fp8_reference, fp8_triton, moe_reference, moe_triton

COPIES, RUNS = 8, 50
DENSE = {"kda in_proj (q, k, v, f_a, b, g_a fused)": (12576, 2304), "o_proj": (2304, 4096),
         "mla in_proj (q and latent fused)": (6720, 2304), "shared expert gate_up": (2048, 2304)}
"""The decode step's dense layers as the engine runs them, their projections of one input fused."""
TILES = [(32, 128), (16, 256)]


def copy_bandwidth() -> float:
    src = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() / (cuda_event_median_ms(lambda: dst.copy_(src), 10) / 1e3)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).norm() / want.norm()).item()


def timed(calls: list) -> float:
    """Median ms of one call: the calls captured one after another in a CUDA graph, its replay timed."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    return cuda_event_median_ms(graph.replay, RUNS) / len(calls)


def dense_rows(bandwidth: float) -> list[tuple[str, str, float, float, float]]:
    rows = []
    for name, (n, k) in DENSE.items():
        weights = [torch.randn(n, k, device="cuda") * k ** -0.5 for _ in range(COPIES)]
        bf16 = [w.bfloat16() for w in weights]
        fp8 = [fp8_reference.quantize_rows(w) for w in weights]
        del weights
        for m in (1, 8, 32):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            want = F.linear(x.double(), bf16[0].double())
            variants = {"bf16 cuBLAS": ([lambda w=w: F.linear(x, w) for w in bf16], 2 * n * k),
                        "fp8 weight-only, default tiles": (
                            [lambda q=q, s=s: fp8_triton.weight_only_fp8_linear(x, q, s) for q, s in fp8], n * k),
                        "fp8 tensor cores, rows quantised": (
                            [lambda q=q, s=s: fp8_triton._fp8_tensor_cores(x, q, s) for q, s in fp8], n * k)}
            for bn, bk in TILES:
                variants[f"fp8 weight-only BN{bn} BK{bk}"] = (
                    [lambda q=q, s=s, bn=bn, bk=bk: fp8_triton.weight_only_fp8_linear(x, q, s, block_n=bn, block_k=bk)
                     for q, s in fp8], n * k)
            for label, (calls, nbytes) in variants.items():
                err = rel_err(calls[0](), want)
                ms = timed(calls)
                rows.append((f"{name} {n}x{k}, {m} rows", label, err, ms * 1e3, nbytes / (ms / 1e3) / bandwidth))
    return rows


def expert_rows(bandwidth: float) -> list[tuple[str, str, float, float, float]]:
    rows = []
    experts = StackedExperts(256, 2304, 1024).cuda().requires_grad_(False)
    for p in experts.parameters():
        p.data.normal_(0, p.shape[-1] ** -0.5)
    fp8_experts = copy.deepcopy(experts)
    quantize_experts_(fp8_experts)
    q13, s13, q2, s2 = fp8_experts.w13, fp8_experts.w13_scale, fp8_experts.w2, fp8_experts.w2_scale
    experts = experts.bfloat16()
    expert_bytes = 3 * 2304 * 1024 * 2
    for m in (1, 8, 32, 100):
        x = torch.randn(m, 2304, device="cuda", dtype=torch.bfloat16)
        routings = [torch.stack([torch.randperm(256, device="cuda")[:8] for _ in range(m)]) for _ in range(COPIES)]
        ids = routings[0]
        weights = torch.rand(m, 8, device="cuda")
        reached = statistics.mean(r.unique().numel() for r in routings) * expert_bytes
        want = moe_reference.fused_moe_reference(x.double(), experts.w13.double(), experts.w2.double(), ids,
                                                 weights.double())
        want8 = moe_reference.fused_moe_reference(x.double(), q13, q2, ids, weights.double(), s13, s2)
        variants = {
            "bf16 grouped GEMM": (lambda ids: experts._grouped(x, ids, weights), reached, want),
            "bf16 fused": (lambda ids: moe_triton.fused_moe_triton(x, experts.w13, experts.w2, ids, weights),
                           reached, want),
            "fp8 fused": (lambda ids: moe_triton.fused_moe_triton(x, q13, q2, ids, weights, s13, s2), reached / 2,
                          want8),
            "fp8 fused BN32": (lambda ids: moe_triton.fused_moe_triton(x, q13, q2, ids, weights, s13, s2,
                                                                      block_n=32), reached / 2, want8),
        }
        if m > FUSED_MOE_TOKENS and fp8_grouped_gemm_runs(x.device):
            variants["fp8 grouped GEMM"] = (lambda ids: fp8_experts._grouped(x, ids, weights), reached / 2, want8)
        if m <= moe_triton.PAIRWISE_TOKENS:  # "fused" ran pairwise GEMVs: the sorted blocks beside them
            variants["bf16 fused, sorted blocks"] = (
                lambda ids: moe_triton.fused_moe_triton(x, experts.w13, experts.w2, ids, weights, pairwise=False),
                reached, want)
            variants["fp8 fused, sorted blocks"] = (
                lambda ids: moe_triton.fused_moe_triton(x, q13, q2, ids, weights, s13, s2, pairwise=False),
                reached / 2, want8)
        for label, (call, nbytes, reference) in variants.items():
            err = rel_err(call(ids), reference)
            ms = timed([lambda r=r, call=call: call(r) for r in routings])
            rows.append((f"experts 256x(2304x1024) top-8, {m} tokens", label, err, ms * 1e3,
                         nbytes / (ms / 1e3) / bandwidth))
    return rows


def main() -> None:
    bandwidth = copy_bandwidth()
    print(f"# {torch.cuda.get_device_name()}, copy {bandwidth / 1e12:.2f} TB/s, torch {torch.__version__}")
    with torch.inference_mode():
        rows = dense_rows(bandwidth) + expert_rows(bandwidth)
    print("| shape | variant | rel. error vs float64 | µs (median) | share of copy bandwidth |\n|---|---|---|---|---|")
    for shape, label, err, us, share in rows:
        print(f"| {shape} | {label} | {err:.1e} | {us:.1f} | {share:.0%} |")


if __name__ == "__main__":
    main()
