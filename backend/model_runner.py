"""Runs the model on the engine's two kinds of work: a prefill chunk (sessions x n tokens), a decode batch."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from backend.decode_graphs import DecodeGraphs
from backend.model import KimiLinearForCausalLM
from backend.paged_context import PagedContext
from backend.sequence import Sequence
from backend.state_cache import StateCache

SMALL_FORWARD_TOKENS = 32
"""On the CPU a forward over at most this many tokens runs on one thread: waking the others costs more than
they save at this size (benchmarks.engine, 2 cores: batch-8 decode 58 -> 28 ms a step, batch 20 even)."""


class ModelRunner:
    def __init__(self, model: KimiLinearForCausalLM, cache: StateCache, *, shared_prefix_attention: bool = True,
                 cuda_graphs: bool = True):
        self.model = model
        self.cache = cache
        self.shared_prefix_attention = shared_prefix_attention
        self.graphs = DecodeGraphs(model, cache) if cuda_graphs and DecodeGraphs.supported(model) else None
        """Decode steps replay CUDA graphs while this is set; None runs them eagerly (CPU, fp32, or asked)."""
        self.threads = torch.get_num_threads()

    @contextmanager
    def _threads_for(self, tokens: int) -> Iterator[None]:
        """One intra-op thread for a small CPU forward (SMALL_FORWARD_TOKENS), all of them otherwise."""
        if self.model.device.type != "cpu" or tokens > SMALL_FORWARD_TOKENS or self.threads == 1:
            yield
            return
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(self.threads)

    @torch.inference_mode()
    def prefill(self, seqs: list[Sequence], num_tokens: int) -> None:
        """Run the next `num_tokens` pending tokens of each session into its state and pages."""
        starts = [s.num_cached for s in seqs]
        ids = torch.tensor([s.token_ids[p:p + num_tokens] for s, p in zip(seqs, starts)])
        ctx = PagedContext(self.cache, [s.slot for s in seqs], [s.block_table for s in seqs], starts, num_tokens,
                           shared_prefix=self.shared_prefix_attention)
        with self._threads_for(ids.numel()):
            self.model(ids, ctx, last_only=True)
        for s in seqs:
            s.num_cached += num_tokens

    @torch.inference_mode()
    def verify(self, seq: Sequence, draft: list[int]) -> torch.Tensor:
        """Feed the session's pending token and `draft` in one forward; fp32 logits [len(draft) + 1, vocab]:
        row i is the model's next-token distribution after the pending token and draft[:i]."""
        start = seq.num_cached
        ids = torch.tensor([[seq.token_ids[start], *draft]])
        ctx = PagedContext(self.cache, [seq.slot], [seq.block_table], [start], ids.shape[1],
                           shared_prefix=self.shared_prefix_attention)
        with self._threads_for(ids.numel()):
            logits = self.model(ids, ctx)[0]
        seq.num_cached += ids.shape[1]
        return logits

    @torch.inference_mode()
    def decode(self, seqs: list[Sequence]) -> torch.Tensor:
        """Feed each session's last pending token; fp32 next-token logits [N, vocab], left on the device."""
        ids, slots, starts = ([s.token_ids[s.num_cached] for s in seqs], [s.slot for s in seqs],
                              [s.num_cached for s in seqs])
        tables = [s.block_table for s in seqs]
        logits = self.graphs.decode(ids, slots, starts, tables, self.shared_prefix_attention) if self.graphs else None
        if logits is None:
            ctx = PagedContext(self.cache, slots, tables, starts, 1, shared_prefix=self.shared_prefix_attention)
            with self._threads_for(len(ids)):
                logits = self.model(torch.tensor(ids)[:, None], ctx, last_only=True)[:, 0]
        for s in seqs:
            s.num_cached += 1
        return logits
