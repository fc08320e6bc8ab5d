"""Runs the model on the engine's two kinds of work: a prefill chunk (sessions x n tokens), a decode batch."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..model.model import KimiLinearForCausalLM
from .decode_graphs import DecodeGraphs
from .expanded_prefix import ExpandedPrefixes
from .paged_context import PagedContext, shared_prefix_pages
from .sequence import Sequence
from .state_cache import StateCache

SMALL_FORWARD_TOKENS = 32
"""On the CPU a forward over at most this many tokens runs on one thread: waking the others costs more than
they save at this size (benchmarks/engine.py measures it)."""


class ModelRunner:
    def __init__(self, model: KimiLinearForCausalLM, cache: StateCache, *, shared_prefix_attention: bool = True,
                 expand_shared_prefix: bool | None = None, cuda_graphs: bool = True):
        """expand_shared_prefix: decode steps of many forks attend their long shared prefix decompressed
        (engine/expanded_prefix.py); None turns it on where it was measured to pay, the GPU (benchmarks/RESULTS.md,
        End to end: 1.28x faster decode steps of 100 agents over 128K)."""
        model.fuse_projections_()
        self.model = model
        self.cache = cache
        self.shared_prefix_attention = shared_prefix_attention
        if expand_shared_prefix is None:
            expand_shared_prefix = model.device.type == "cuda"
        self.prefixes = ExpandedPrefixes(model, cache, enabled=shared_prefix_attention and expand_shared_prefix)
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

    def _forward(self, seqs: list[Sequence], ids: torch.Tensor, *, last_only: bool,
                 ctx: PagedContext | None = None) -> torch.Tensor:
        """Run ids [N, T], the next T tokens of each session, into its state and pages; fp32 logits. `ctx`: the
        batch's context when the caller has built it already."""
        if ctx is None:
            ctx = PagedContext(self.cache, [s.slot for s in seqs], [s.block_table for s in seqs],
                               [s.num_cached for s in seqs], ids.shape[1],
                               shared_pages=None if self.shared_prefix_attention else 0)
        with self._threads_for(ids.numel()):
            logits = self.model(ids, ctx, last_only=last_only)
        for s in seqs:
            s.num_cached += ids.shape[1]
        return logits

    @torch.inference_mode()
    def prefill(self, seqs: list[Sequence], num_tokens: int) -> None:
        """Run the next `num_tokens` pending tokens of each session into its state and pages."""
        ids = torch.tensor([s.token_ids[s.num_cached:s.num_cached + num_tokens] for s in seqs])
        self._forward(seqs, ids, last_only=True)

    @torch.inference_mode()
    def verify(self, seq: Sequence, draft: list[int]) -> torch.Tensor:
        """Feed the session's pending tokens and `draft` in one forward; fp32 logits [len(draft) + 1, vocab]:
        row i is the model's next-token distribution after the pending tokens and draft[:i]. More than one
        token is pending after a step that kept part of its draft."""
        ids = [*seq.token_ids[seq.num_cached:], *draft]
        return self._forward([seq], torch.tensor([ids]), last_only=False)[0, -(len(draft) + 1):]

    @torch.inference_mode()
    def decode(self, seqs: list[Sequence]) -> torch.Tensor:
        """Feed each session's last pending token; fp32 next-token logits [N, vocab], left on the device."""
        ids = [s.token_ids[s.num_cached] for s in seqs]
        starts = [s.num_cached for s in seqs]
        slot_ids = torch.tensor([s.slot for s in seqs], device=self.model.device)
        tables = self.cache.table_rows(slot_ids, max(len(s.block_table) for s in seqs))
        shared = shared_prefix_pages(tables, starts, self.cache.page_size) if self.shared_prefix_attention else 0
        expanded = self.prefixes.for_batch(seqs[0].block_table[:shared], len(seqs)) if shared else None
        if self.graphs is not None:
            logits = self.graphs.decode(ids, slot_ids, starts, tables, shared, expanded)
            if logits is not None:
                for s in seqs:
                    s.num_cached += 1
                return logits
        ctx = PagedContext.for_decode(self.cache, slot_ids, tables, torch.tensor(starts, device=self.model.device),
                                      shared, expanded)
        return self._forward(seqs, torch.tensor(ids)[:, None], last_only=True, ctx=ctx)[:, 0]
