"""The benchmark baseline is fair: ours and transformers' KimiLinearForCausalLM are drawn by the same rules, and
no floating tensor of either (parameters and buffers alike) is left as whatever memory `to_empty` handed out."""

from __future__ import annotations

import pytest
import torch
from model_support import tiny_config_kwargs

from kimi_swarm.backend.model.config import KimiLinearConfig
from kimi_swarm.backend.model.model import KimiLinearForCausalLM
from kimi_swarm.backend.model.presets import randomize_


def config_kwargs() -> dict:
    # moe_intermediate_size differs from hidden / 2, so a fused [E, 2I, H] tensor's fan-in is told apart
    return {**tiny_config_kwargs(layers="KKKM", q_lora_rank=16), "moe_intermediate_size": 24}


def empty_model(build) -> torch.nn.Module:
    """The model as the benchmark builds it (meta, then to_empty), every floating tensor poisoned with NaN."""
    with torch.device("meta"):
        model = build()
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.fill_(float("nan"))
    return model


def undrawn(model: torch.nn.Module) -> list[str]:
    return [name for name, t in [*model.named_parameters(), *model.named_buffers()]
            if t.is_floating_point() and bool(t.isnan().any())]


def test_ours_and_transformers_are_drawn_alike_and_completely():
    from transformers import KimiLinearConfig as HFConfig
    from transformers import KimiLinearForCausalLM as HFModel

    ours = empty_model(lambda: KimiLinearForCausalLM(
        KimiLinearConfig.model_validate({**config_kwargs(), "model_type": "kimi_linear"})))
    theirs = empty_model(lambda: HFModel(HFConfig(**config_kwargs())))
    assert any(n.endswith("e_score_correction_bias") for n, _ in theirs.named_buffers())  # the tensor that was missed

    drawn_ours = randomize_(ours, torch.Generator().manual_seed(0))
    drawn_theirs = randomize_(theirs, torch.Generator().manual_seed(0))

    assert undrawn(ours) == [] and undrawn(theirs) == []
    assert drawn_ours == drawn_theirs
    assert sum(drawn_ours.values()) == sum(t.numel() for t in ours.parameters())


def test_a_floating_buffer_without_a_rule_is_refused_not_left_undrawn():
    model = torch.nn.Linear(4, 4)
    model.register_buffer("running_scale", torch.full((4,), float("nan")))
    with pytest.raises(ValueError, match="running_scale"):
        randomize_(model, torch.Generator().manual_seed(0))
