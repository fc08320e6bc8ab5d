"""FP8 weights quantised at load time (vLLM's `--quantization fp8`): the 48B model in half its bf16 bytes.

Every linear layer of the decoder blocks and the routed experts become float8_e4m3fn with one fp32 scale per
output row (`<weight>_scale`, as vLLM names it); norms, the router, the embeddings, lm_head and kv_b_proj (whose
weight MLA reads directly, absorbed into queries and for the expanded prefix) stay in the model's dtype. On the
GPU FP8 needs tensor cores that take it (compute capability 8.9: Ada, Hopper and later); on the CPU the weights
are dequantised for each call, which saves memory, not time.
"""

from __future__ import annotations

import torch
from torch import nn

from kimi_swarm.kernels import fp8_linear
from kimi_swarm.kernels.fp8_reference import FP8, quantize_rows

from .moe import StackedExperts

QUANTIZATIONS = ("fp8",)
KEEP_UNQUANTIZED = ("kv_b_proj",)
FP8_MIN_CAPABILITY = (8, 9)


class Fp8Linear(nn.Module):
    """nn.Linear without bias over an FP8 weight [out, in] and its per-row scales [out]."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=FP8), requires_grad=False)
        self.weight_scale = nn.Parameter(torch.empty(out_features, dtype=torch.float32), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, self.weight, self.weight_scale)


def check_quantization(quantization: str | None, device: torch.device) -> None:
    """Refuse an unknown scheme, and FP8 on a GPU without FP8 tensor cores, naming what is there."""
    if quantization is None:
        return
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}; use one of {', '.join(QUANTIZATIONS)} or none")
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        if capability < FP8_MIN_CAPABILITY:
            raise ValueError(f"FP8 weights need a GPU with FP8 tensor cores (compute capability 8.9 or newer: "
                             f"Ada, Hopper); {torch.cuda.get_device_name(device)} is "
                             f"{capability[0]}.{capability[1]}")


def _quantizable(name: str, module: nn.Module) -> bool:
    if isinstance(module, StackedExperts):
        return True
    return (isinstance(module, nn.Linear) and module.bias is None and not name.endswith(KEEP_UNQUANTIZED)
            and module.in_features % 16 == 0 and module.out_features % 16 == 0)


def _quantized_param(weight: torch.Tensor) -> tuple[nn.Parameter, nn.Parameter]:
    """(FP8 weight, scales) for a weight: empty on the meta device, else quantised row by row, one expert (or
    one weight) at a time so the full-precision copy is never held twice."""
    q = torch.empty(weight.shape, dtype=FP8, device=weight.device)
    scale = torch.empty(weight.shape[:-1], dtype=torch.float32, device=weight.device)
    if not weight.is_meta:
        for matrix, q_rows, row_scales in zip(weight.reshape(-1, *weight.shape[-2:]), q.view(-1, *q.shape[-2:]),
                                              scale.view(-1, scale.shape[-1]), strict=True):
            q_rows[:], row_scales[:] = quantize_rows(matrix)
    return nn.Parameter(q, requires_grad=False), nn.Parameter(scale, requires_grad=False)


@torch.no_grad()
def quantize_experts_(experts: StackedExperts) -> None:
    """Turn stacked experts to FP8 in place: w13 and w2 quantised one expert at a time, with their scales."""
    for weight in ("w13", "w2"):
        q, scale = _quantized_param(getattr(experts, weight))
        setattr(experts, weight, q)
        setattr(experts, f"{weight}_scale", scale)


@torch.no_grad()
def quantize_fp8_(model: nn.Module) -> list[str]:
    """Turn the model's quantizable layers to FP8 in place and return their names. On the meta device (before
    loading) this only sets the dtypes and adds the scales; on real weights it quantises them."""
    layers = model.get_submodule("model.layers")
    done = []
    for name, module in list(layers.named_modules()):
        if not _quantizable(name, module):
            continue
        if isinstance(module, StackedExperts):
            quantize_experts_(module)
        else:
            with torch.device("meta"):
                fp8 = Fp8Linear(module.in_features, module.out_features)
            fp8.weight, fp8.weight_scale = _quantized_param(module.weight)
            layers.set_submodule(name, fp8)
        done.append(f"model.layers.{name}")
    return done
