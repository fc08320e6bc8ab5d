"""The engine's ForwardContext: a batch of sessions reading and writing the shared StateCache.

Decode batches are N sessions x 1 token; prefill chunks are N sessions x T tokens each. Each MLA layer's
new latent rows are scattered into the sessions' pages, then attention reads them back through
the block tables, so a prefix shared by forks is stored once; when a batch shares leading pages,
attention reads them once for the whole batch (shared-prefix mode), in decode and prefill alike.
"""

from __future__ import annotations

import torch

from kimi_swarm import kernels
from kimi_swarm.kernels.mla_reference import gather_tokens, mla_prefill_shared_reference

from ..model.context import CachedLatents
from .expanded_prefix import ExpandedPrefix
from .state_cache import StateCache


def shared_prefix_pages(tables: torch.Tensor, starts: list[int], page_size: int) -> int:
    """Leading full pages that every sequence of the batch holds (forks of one session), all before
    the first new token; tables are the batch's device block tables."""
    full = min(starts) // page_size
    if len(starts) < 2 or not full:
        return 0
    same = (tables[:, :full] == tables[:1, :full]).all(dim=0)
    return int(same.int().cumprod(0).sum())


class PagedContext:
    def __init__(self, cache: StateCache, slots: list[int], block_tables: list[list[int]],
                 starts: list[int], num_new: int, *, shared_pages: int | None = None,
                 expanded: ExpandedPrefix | None = None):
        """shared_pages: the batch's shared leading pages if the caller knows them (0 attends every sequence
        alone); None finds them. expanded: a decode step's shared prefix, decompressed (engine/expanded_prefix)."""
        device = cache.latent[0].device if cache.latent else cache.recurrent[0].device
        slot_ids = torch.tensor(slots, device=device, dtype=torch.long)
        tables = cache.table_rows(slot_ids, max(len(t) for t in block_tables))
        self._bind(cache, slot_ids, tables, torch.tensor(starts, device=device), num_new, expanded)
        self.starts = starts
        self.shared_pages = (shared_prefix_pages(tables, starts, cache.page_size) if shared_pages is None
                             else shared_pages)

    @classmethod
    def for_decode(cls, cache: StateCache, slots: torch.Tensor, block_tables: torch.Tensor,
                   starts: torch.Tensor, shared_pages: int, expanded: ExpandedPrefix | None) -> PagedContext:
        """A decode step from device tensors alone, with no host sync: what a CUDA graph captures, and an eager
        step whose block tables the caller has read already."""
        ctx = cls.__new__(cls)
        ctx._bind(cache, slots, block_tables, starts, 1, expanded)
        ctx.shared_pages = shared_pages
        return ctx

    def _bind(self, cache: StateCache, slots: torch.Tensor, block_tables: torch.Tensor, starts: torch.Tensor,
              num_new: int, expanded: ExpandedPrefix | None) -> None:
        self.cache = cache
        self.expanded = expanded
        self.num_new = num_new
        self.slots = slots
        self.block_tables = block_tables
        self.seq_lens = (starts + num_new).to(torch.int32)
        positions = starts[:, None] + torch.arange(num_new, device=starts.device)
        pages = block_tables.long().gather(1, positions // cache.page_size)
        self.write_rows = (pages * cache.page_size + positions % cache.page_size).reshape(-1)

    def kda_state(self, kda_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.cache.recurrent[kda_index], self.cache.conv[kda_index], self.slots

    def _store(self, mla_index: int, latent_new: torch.Tensor) -> torch.Tensor:
        pool = self.cache.latent[mla_index]
        pool.view(-1, pool.shape[-1]).index_copy_(0, self.write_rows,
                                                  latent_new.reshape(-1, pool.shape[-1]).to(pool.dtype))
        return pool

    def mla_cached_keys(self, mla_index: int, latent_new: torch.Tensor) -> CachedLatents | None:
        """A prefill chunk: store latent_new, return the sequences' cached latent for the expanded form.
        None for a decode step, which attends in the absorbed form (mla_attend)."""
        if self.num_new == 1:
            return None
        pool = self._store(mla_index, latent_new)
        shared = self.shared_pages * self.cache.page_size
        return CachedLatents(
            gather_tokens(pool, self.block_tables[0], 0, shared) if shared else None,
            [gather_tokens(pool, self.block_tables[i], shared, start + self.num_new)
             for i, start in enumerate(self.starts)])

    def mla_expanded_prefix(self, mla_index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A decode step's shared prefix decompressed (keys, padded values [E, H, D]), or None to stay absorbed."""
        if self.expanded is None:
            return None
        return self.expanded.keys[mla_index], self.expanded.values[mla_index]

    def mla_attend_after_prefix(self, mla_index: int, q_latent: torch.Tensor, q_pe: torch.Tensor,
                                latent_new: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Store a decode step's latent [N, 1, R+P] and attend, absorbed, each session's keys after the expanded
        prefix: (o [N, H, R], log-sum-exp [N, H]) to merge with the prefix's part."""
        pool = self._store(mla_index, latent_new)
        return kernels.mla_decode_from(q_latent, q_pe, pool, self.block_tables, self.seq_lens, self.expanded.rows,
                                       scale)

    def mla_attend(self, mla_index: int, q_latent: torch.Tensor, q_pe: torch.Tensor,
                   latent_new: torch.Tensor, scale: float) -> torch.Tensor:
        """Attention in the absorbed form: a decode step, or a chunk too short to pay for expanding the
        cache (the layer decides; longer chunks go through mla_cached_keys), causal within the chunk. Forks
        sharing leading pages attend them once for the whole batch, in a decode step and a chunk alike; a
        chunk only reaches here on the CPU (the GPU always expands), so it uses the PyTorch reference."""
        pool = self._store(mla_index, latent_new)
        if self.num_new != 1:
            starts = self.seq_lens.long() - self.num_new
            if self.shared_pages:
                return mla_prefill_shared_reference(q_latent, q_pe, pool, self.block_tables[0, :self.shared_pages],
                                                    self.shared_pages * self.cache.page_size, self.block_tables,
                                                    starts, scale)
            return torch.cat([  # each sequence alone, its own past as the unmasked part
                mla_prefill_shared_reference(q_latent[i:i + 1], q_pe[i:i + 1], pool, self.block_tables[i], start,
                                             self.block_tables[i:i + 1], starts[i:i + 1], scale)
                for i, start in enumerate(self.starts)])
        if self.shared_pages:
            out = kernels.mla_decode_shared(q_latent[:, 0], q_pe[:, 0], pool, self.block_tables[0, :self.shared_pages],
                                            self.shared_pages * self.cache.page_size, self.block_tables,
                                            self.seq_lens, scale)
        else:
            out = kernels.mla_decode(q_latent[:, 0], q_pe[:, 0], pool, self.block_tables, self.seq_lens, scale)
        return out.unsqueeze(1)
