"""Sampling parameters, the completion a generate call returns, and the per-row sampler.

Every request owns its random generator (seeded from `seed`), so a sampled completion does not
depend on which other sessions happen to share its decode batch.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, Field, field_validator

FinishReason = Literal["stop", "length"]


class SamplingParams(BaseModel):
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0 keeps every token")
    stop: list[str] = Field(default_factory=list, description="strings that end generation (not returned)")
    stop_token_ids: list[int] | None = Field(None, description="defaults to the tokenizer's end-of-turn ids")
    seed: int | None = None

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, stop: list[str]) -> list[str]:
        if any(s == "" for s in stop):
            raise ValueError("stop strings must not be empty")
        return stop


class Completion(BaseModel):
    text: str
    token_ids: list[int]
    finish_reason: FinishReason


def new_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    """A generator for a sampled request; greedy requests need none."""
    if params.temperature == 0.0:
        return None
    generator = torch.Generator(device=device)
    if params.seed is None:
        generator.seed()
    else:
        generator.manual_seed(params.seed)
    return generator


def sample_row(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Next token from one row of fp32 logits [vocab]."""
    if params.temperature == 0.0:
        return int(logits.argmax())
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > params.top_p
        probs = probs.scatter(0, order, sorted_probs.masked_fill(outside, 0.0))
    return int(torch.multinomial(probs, 1, generator=generator))
