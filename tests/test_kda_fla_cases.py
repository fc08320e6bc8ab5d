"""The KDA kernels on the forward cases of fla's own test suite (tests/ops/test_kda.py), against float64.

fla's cases as facts: its shapes, dtypes, input distributions, gate strengths (logsigmoid(randn) / 0.1 gives gates
far below -5), masks, head dims 60 / 64 / 100 / 128 / 256 and variable lengths; its error measure (RMS of the
difference over RMS of the reference, which is `rel_err`) and its tolerance 5e-3 for the output and the final state.
fp16 and the launch shapes are GPU matters; CI checks the same kernels under the Triton interpreter in fp32 on small
shapes (test_kernels.py).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_support import rel_err

from kimi_swarm import kernels
from kimi_swarm.kernels.kda_reference import naive_recurrent_kda

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 Triton kernels need a CUDA GPU; the "
                                                                       "interpreter checks them in fp32 in CI")
TOLERANCE = 5e-3
CUDA = torch.device("cuda")


def _check(record_property, o_error: float, state_error: float) -> None:
    """fla's tolerance on the output and the final state; the errors go to the JUnit report for the results page."""
    record_property("o_error", f"{o_error:.2e}")
    record_property("state_error", f"{state_error:.2e}")
    assert o_error < TOLERANCE and state_error < TOLERANCE, (o_error, state_error)


def _reference(q, k, v, g, beta, h0, scale=None):
    o, ht = naive_recurrent_kda(*(x.double() for x in (q, k, v, g, beta)), scale=scale, initial_state=h0.double(),
                                output_final_state=True)
    return o, ht


@pytest.mark.parametrize(("b", "t", "h", "d", "scale", "normalizer", "mask_p", "l2norm_in_kernel"), [
    (1, 63, 1, 64, 1, 1, 0, False),
    (2, 500, 3, 60, 1, 1, 0, False),
    (2, 1000, 3, 64, 0.1, 1, 0.5, False),
    (3, 1024, 4, 100, 1, 0.1, 0, False),
    (4, 1024, 4, 128, 0.1, 1, 0, False),
    (4, 1024, 4, 128, 0.1, 1, 0, True),
])
def test_chunk_kda_fp16_cases(b, t, h, d, scale, normalizer, mask_p, l2norm_in_kernel, record_property):
    torch.manual_seed(42)
    q, k, v = (torch.rand(b, t, h, d, dtype=torch.float16) for _ in range(3))
    g = F.logsigmoid(torch.randn(b, t, h, d)) / normalizer
    g = g * (torch.rand_like(g) > mask_p)
    beta = torch.randn(b, t, h, dtype=torch.float16).sigmoid()
    h0 = torch.randn(b, h, d, d)
    q, k, v, g, beta, h0 = (x.to(CUDA) for x in (q, k, v, g, beta, h0))
    qn, kn = F.normalize(q.float(), dim=-1).half(), F.normalize(k.float(), dim=-1).half()
    ref, ref_ht = _reference(qn, kn, v, g, beta, h0, scale)
    o, ht = kernels.chunk_kda(q if l2norm_in_kernel else qn, k if l2norm_in_kernel else kn, v, g, beta, scale=scale,
                              initial_state=h0, output_final_state=True, use_qk_l2norm=l2norm_in_kernel)
    assert o.dtype == torch.float16
    _check(record_property, rel_err(o, ref), rel_err(ht, ref_ht))


@pytest.mark.parametrize(("h", "d", "mask_p", "bounds"), [
    (4, 60, 0, [0, 15]),
    (4, 64, 0, [0, 256, 500, 1000]),
    (4, 128, 0.5, [0, 256, 500, 1000]),
    (4, 100, 0, [0, 15, 100, 300, 1200, 2000]),
    (4, 256, 0, [0, 100, 300, 1200, 3000, 4096]),
])
def test_chunk_kda_fp16_varlen_cases(h, d, mask_p, bounds, record_property):
    torch.manual_seed(42)
    t, n = bounds[-1], len(bounds) - 1
    q = torch.randn(1, t, h, d, dtype=torch.float16)
    k = F.normalize(torch.randn(1, t, h, d), dim=-1).half()
    v = torch.randn(1, t, h, d, dtype=torch.float16)
    g = F.logsigmoid(torch.randn(1, t, h, d))
    g = g * (torch.rand_like(g) > mask_p)
    beta = torch.rand(1, t, h, dtype=torch.float16).sigmoid()
    h0 = torch.randn(n, h, d, d)
    q, k, v, g, beta, h0 = (x.to(CUDA) for x in (q, k, v, g, beta, h0))
    o, ht = kernels.chunk_kda(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                              cu_seqlens=torch.tensor(bounds, device=CUDA))
    parts = [_reference(*(x[:, lo:hi] for x in (q, k, v, g, beta)), h0[i:i + 1])
             for i, (lo, hi) in enumerate(zip(bounds, bounds[1:]))]
    ref, ref_ht = torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 0)
    _check(record_property, rel_err(o, ref), rel_err(ht, ref_ht))


@pytest.mark.parametrize(("b", "t", "h", "d", "scale", "l2norm_in_kernel"), [
    (1, 64, 1, 64, 1, False),
    (2, 512, 3, 60, 1, False),
    (3, 1000, 4, 100, 0.1, True),
    (4, 1024, 4, 128, 0.1, False),
])
def test_recurrent_kda_fp32_cases_step_by_step(b, t, h, d, scale, l2norm_in_kernel, record_property):
    torch.manual_seed(42)
    q, k, v = (torch.rand(b, t, h, d) for _ in range(3))
    g = F.logsigmoid(torch.randn(b, t, h, d))
    beta = torch.randn(b, t, h).sigmoid()
    h0 = torch.randn(b, h, d, d)
    q, k, v, g, beta, h0 = (x.to(CUDA) for x in (q, k, v, g, beta, h0))
    qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    ref, ref_ht = _reference(qn, kn, v, g, beta, h0, scale)
    pool, slots = h0.clone().contiguous(), torch.arange(b, device=CUDA)
    steps = [kernels.recurrent_kda((q if l2norm_in_kernel else qn)[:, i:i + 1], (k if l2norm_in_kernel else kn)[:, i:i + 1],
                                   v[:, i:i + 1], g[:, i:i + 1], beta[:, i:i + 1], pool, slots, scale=scale,
                                   use_qk_l2norm=l2norm_in_kernel) for i in range(t)]
    _check(record_property, rel_err(torch.cat(steps, 1), ref), rel_err(pool, ref_ht))
