"""Model presets and random-weight models: the exact Kimi-Linear-48B-A3B configuration and a small one.

Speed does not depend on weight values, but routing does, so weights are drawn explicitly: uninitialised
memory sends every token to the same experts and flatters MoE. Benchmarks and the GPU tests build their
models here.
"""

from __future__ import annotations

from collections import Counter

import torch

from kimi_swarm.kernels.fp8_reference import FP8, quantize_rows

from .config import KimiLinearConfig
from .fp8 import check_quantization, quantize_fp8_
from .model import KimiLinearForCausalLM
from .weights import HELD_IN_FP32

KIMI_LINEAR_48B = {
    "model_type": "kimi_linear", "hidden_size": 2304, "num_hidden_layers": 27, "vocab_size": 163840,
    "intermediate_size": 9216, "num_attention_heads": 32, "num_key_value_heads": 32, "q_lora_rank": None,
    "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
    "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "bos_token_id": 163584, "eos_token_id": 163586,
    "pad_token_id": 163839, "num_experts": 256, "num_experts_per_token": 8, "num_shared_experts": 1,
    "moe_intermediate_size": 1024, "first_k_dense_replace": 1, "moe_layer_freq": 1, "moe_renormalize": True,
    "routed_scaling_factor": 2.446, "linear_attn_config": {
        "num_heads": 32, "head_dim": 128, "short_conv_kernel_size": 4,
        "kda_layers": [1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19, 21, 22, 23, 25, 26],
        "full_attn_layers": [4, 8, 12, 16, 20, 24, 27]},
}

SMALL = {
    **KIMI_LINEAR_48B, "hidden_size": 512, "num_hidden_layers": 8, "vocab_size": 32768, "intermediate_size": 1536,
    "num_attention_heads": 8, "num_key_value_heads": 8, "kv_lora_rank": 128, "qk_nope_head_dim": 64,
    "qk_rope_head_dim": 32, "v_head_dim": 64, "num_experts": 16, "num_experts_per_token": 2,
    "moe_intermediate_size": 256, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
    "linear_attn_config": {"num_heads": 4, "head_dim": 64, "short_conv_kernel_size": 4,
                           "kda_layers": [1, 2, 3, 5, 6, 7], "full_attn_layers": [4, 8]},
}

KIMI_LINEAR_48B_12_LAYERS = {
    **KIMI_LINEAR_48B, "num_hidden_layers": 12,
    "linear_attn_config": {**KIMI_LINEAR_48B["linear_attn_config"], "kda_layers": [1, 2, 3, 5, 6, 7, 9, 10, 11],
                           "full_attn_layers": [4, 8, 12]},
}
"""The 48B model's layer shapes at 12 layers (9 KDA + 3 MLA, the same 3:1): fits an 80 GB H100 beside
transformers' copy, for ratios measured against that card's floors."""

PRESETS = {"small": SMALL, "48b": KIMI_LINEAR_48B, "48b-12l": KIMI_LINEAR_48B_12_LAYERS}

ROUTER_BIAS_STD = 0.01
"""Small next to the sigmoid router scores: a large random bias would pick the same experts for every token."""


def preset_config(name: str) -> KimiLinearConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return KimiLinearConfig.model_validate(PRESETS[name])


@torch.no_grad()
def random_model(config: KimiLinearConfig, device: torch.device, dtype: torch.dtype, seed: int = 0,
                 quantization: str | None = None) -> KimiLinearForCausalLM:
    """The model with random weights drawn directly on `device` (no host copy of 98 GB); with quantization
    "fp8" its linear and expert weights are drawn and quantised one expert or weight at a time, so the 48B
    model is built on an 80 GB GPU."""
    check_quantization(quantization, device)
    with torch.device("meta"):
        model = KimiLinearForCausalLM(config)
    for name, p in model.named_parameters():
        if not name.endswith(HELD_IN_FP32):
            p.data = p.data.to(dtype)
    if quantization is not None:
        quantize_fp8_(model)
    model = model.to_empty(device=device)
    randomize_(model, torch.Generator(device=device).manual_seed(seed))
    return model.eval()


@torch.no_grad()
def randomize_(model: torch.nn.Module, generator: torch.Generator) -> Counter[tuple[str, int]]:
    """Draw every floating parameter and buffer in place, by a rule that depends only on the tensor's role and
    fan-in, so ours and transformers' model (whose tensors are fused and named differently) get the same
    distributions. transformers keeps the router's `e_score_correction_bias` as a buffer: left uninitialised
    it sends every token to the same experts. Any other floating buffer is refused rather than left undrawn.

    Returns how many elements each rule drew, keyed by (rule, fan-in), so two models can be compared."""
    drawn: Counter[tuple[str, int]] = Counter()
    params = dict(model.named_parameters())
    scale_of = {name: params[f"{name}_scale"] for name, p in params.items() if p.dtype == FP8}
    buffers = [(n, b) for n, b in model.named_buffers() if b.is_floating_point()]
    unknown = [n for n, _ in buffers if not n.endswith("e_score_correction_bias")]
    if unknown:
        raise ValueError(f"no drawing rule for floating buffers {unknown[:3]}")
    for name, p in [*params.items(), *buffers]:
        if name.endswith("_scale") and name.removesuffix("_scale") in scale_of:
            continue  # drawn with its FP8 weight
        if name.endswith("A_log"):
            rule, fan_in = "A_log", 0
            p.uniform_(0.0, 2.0, generator=generator)
        elif name.endswith("dt_bias"):
            rule, fan_in = "dt_bias", 0
            p.normal_(0.0, 0.5, generator=generator)
        elif name.endswith("e_score_correction_bias"):
            rule, fan_in = "router_bias", 0
            p.normal_(0.0, ROUTER_BIAS_STD, generator=generator)
        elif p.dim() == 1 or name.endswith("o_norm.weight"):
            rule, fan_in = "ones", 0
            p.fill_(1.0)
        else:
            rule, fan_in = "normal", p.shape[-1]
            if name in scale_of:
                _draw_fp8(p, scale_of[name], generator)
            else:
                p.normal_(0.0, fan_in ** -0.5, generator=generator)
        drawn[rule, fan_in] += p.numel()
    return drawn


def _draw_fp8(weight: torch.Tensor, scale: torch.Tensor, generator: torch.Generator) -> None:
    """The normal rule drawn in fp32 and quantised, one expert (or the whole 2-D weight) at a time."""
    for q, s in zip(weight.view(-1, *weight.shape[-2:]), scale.view(-1, scale.shape[-1]), strict=True):
        drawn = torch.empty(q.shape, device=q.device).normal_(0.0, q.shape[-1] ** -0.5, generator=generator)
        q[:], s[:] = quantize_rows(drawn)
