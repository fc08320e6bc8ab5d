"""Linear layers that read the same input, fused into one GEMM for inference (vLLM's QKVParallelLinear and
MergedColumnParallelLinear): a KDA layer's six input projections, MLA's query and latent projections, SwiGLU's
gate and up. Each GEMM launch costs latency at batch-1 decode and each separate output a copy when the outputs
are concatenated again (the short convolution takes q, k and v side by side), so the engine fuses them once,
after loading (and after FP8 quantisation: per-row scales concatenate exactly). Checkpoints keep the separate
names; a fused model is for inference only (the fused layer replaces the separate ones).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _fusable(layers: Sequence[nn.Module]) -> bool:
    """Bias-free linear layers of one kind (nn.Linear, or FP8 with per-row scales) over the same input width,
    dtype and device."""
    first = layers[0]
    return all(type(layer) is type(first) and getattr(layer, "bias", None) is None
               and layer.weight.dim() == 2 and layer.weight.shape[1] == first.weight.shape[1]
               and layer.weight.dtype == first.weight.dtype and layer.weight.device == first.weight.device
               for layer in layers)


@torch.no_grad()
def fuse_linears_(parent: nn.Module, names: Sequence[str], fused_name: str) -> tuple[int, ...] | None:
    """Replace parent's linear layers `names` by one layer `fused_name` whose output is theirs side by side; return
    their output widths (to split the fused output), or None where they cannot be fused (an FP8 model keeps
    layers whose widths are not multiples of 16 in full precision beside FP8 ones) and stay as they are."""
    layers = [getattr(parent, name) for name in names]
    if not _fusable(layers):
        return None
    widths = tuple(layer.weight.shape[0] for layer in layers)
    fused = layers[0]
    fused.weight = nn.Parameter(torch.cat([layer.weight for layer in layers]), requires_grad=False)
    if getattr(fused, "weight_scale", None) is not None:
        fused.weight_scale = nn.Parameter(torch.cat([layer.weight_scale for layer in layers]), requires_grad=False)
    fused.out_features = sum(widths)
    for name in names:
        delattr(parent, name)
    setattr(parent, fused_name, fused)
    return widths
