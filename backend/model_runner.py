"""Runs the model on the engine's two kinds of work: a prefill chunk of one session, a decode batch."""

from __future__ import annotations

import torch

from backend.model import KimiLinearForCausalLM
from backend.paged_context import PagedContext
from backend.sequence import Sequence
from backend.state_cache import StateCache


class ModelRunner:
    def __init__(self, model: KimiLinearForCausalLM, cache: StateCache):
        self.model = model
        self.cache = cache

    @torch.inference_mode()
    def prefill(self, seq: Sequence, num_tokens: int) -> None:
        """Run `num_tokens` pending tokens of one session into its state and pages."""
        start = seq.num_cached
        ids = torch.tensor([seq.token_ids[start:start + num_tokens]])
        ctx = PagedContext(self.cache, [seq.slot], [seq.block_table], [start], num_tokens)
        self.model(ids, ctx, last_only=True)
        seq.num_cached += num_tokens

    @torch.inference_mode()
    def decode(self, seqs: list[Sequence]) -> torch.Tensor:
        """Feed each session's last pending token; fp32 next-token logits [N, vocab] on the CPU."""
        ids = torch.tensor([[s.token_ids[s.num_cached]] for s in seqs])
        ctx = PagedContext(self.cache, [s.slot for s in seqs], [s.block_table for s in seqs],
                           [s.num_cached for s in seqs], 1)
        logits = self.model(ids, ctx, last_only=True)[:, 0]
        for s in seqs:
            s.num_cached += 1
        return logits.cpu()
