"""Where every session's memory lives: KDA state slots and a paged MLA latent cache.

A session holds one slot (per KDA layer: the fp32 recurrent state [H, K, V] and the short-conv
window) whose size does not depend on its length, plus a block table of latent-cache pages (per
MLA layer: page_size tokens x (kv_lora_rank + qk_rope_head_dim) values). Pages carry reference
counts so that forks share their parent's pages; a shared page is copied before it is written.
Everything is allocated once, up front, from a byte budget. The block tables are mirrored on the
device, one row per slot, updated entry by entry, so a decode step never rebuilds them from the host.
One more slot and page than the budget names are scratch: rows that pad a CUDA-graph decode batch
read and write them, and nothing else does.
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass

import numpy as np
import torch

from ..model.config import KimiLinearConfig
from .errors import CacheCapacityError


def zeroed_pool(*shape: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A pool of zeros. On the CPU it comes from a private anonymous memory map (as malloc's large blocks do, so a
    forked child gets a copy-on-write view, never shared writes), which the OS fills with zeros page by page when
    first touched: a budget of gigabytes costs neither start-up time nor resident memory until sessions use it
    (torch.zeros writes every page up front, which took most of the main job's start-up)."""
    count = math.prod(shape)
    if device.type != "cpu" or count == 0:
        return torch.zeros(shape, device=device, dtype=dtype)
    memory = mmap.mmap(-1, count * torch.empty((), dtype=dtype).element_size(), flags=mmap.MAP_PRIVATE)
    return torch.frombuffer(memory, dtype=dtype, count=count).view(shape)


@dataclass(frozen=True)
class CacheLayout:
    """Byte sizes that turn a memory budget into slot and page counts."""

    slot_bytes: int
    page_bytes: int
    page_size: int

    @classmethod
    def for_config(cls, config: KimiLinearConfig, dtype: torch.dtype, page_size: int) -> CacheLayout:
        h, d = config.kda_heads, config.kda_head_dim
        n_kda, n_mla = len(config.kda_layer_ids), len(config.mla_layer_ids)
        item = torch.empty((), dtype=dtype).element_size()
        slot = n_kda * (h * d * d * 4 + 3 * h * d * (config.conv_size - 1) * item)
        page = n_mla * page_size * config.latent_dim * item
        return cls(slot_bytes=slot, page_bytes=max(page, 1), page_size=page_size)


class StateCache:
    """Fixed pools of slots and pages with free lists and page reference counts (not thread-safe)."""

    def __init__(self, config: KimiLinearConfig, *, max_sessions: int, num_pages: int, page_size: int,
                 device: torch.device, dtype: torch.dtype):
        h, d = config.kda_heads, config.kda_head_dim
        n_kda, n_mla = len(config.kda_layer_ids), len(config.mla_layer_ids)
        self.page_size = page_size
        self.num_pages = num_pages
        self.max_sessions = max_sessions
        self.scratch_slot, self.scratch_page = max_sessions, num_pages
        self.recurrent = [zeroed_pool(max_sessions + 1, h, d, d, device=device, dtype=torch.float32)
                          for _ in range(n_kda)]
        self.conv = [zeroed_pool(max_sessions + 1, 3 * h * d, config.conv_size - 1, device=device, dtype=dtype)
                     for _ in range(n_kda)]
        self.latent = [zeroed_pool(num_pages + 1, page_size, config.latent_dim, device=device, dtype=dtype)
                       for _ in range(n_mla)]
        self.free_slots = list(range(max_sessions - 1, -1, -1))
        self.free_pages = list(range(num_pages - 1, -1, -1))
        self.page_refs = np.zeros(num_pages, dtype=np.int64)
        self.tables = torch.zeros(max_sessions, min(num_pages, 256), device=device, dtype=torch.int32)
        self._table_writes: list[tuple[int, int, int]] = []

    @classmethod
    def from_budget(cls, config: KimiLinearConfig, *, memory_bytes: int, max_sessions: int, page_size: int,
                    device: torch.device, dtype: torch.dtype) -> StateCache:
        """As many pages as fit in `memory_bytes` once `max_sessions` slots (and the scratch slot and page) are
        paid for."""
        layout = CacheLayout.for_config(config, dtype, page_size)
        left = memory_bytes - (max_sessions + 1) * layout.slot_bytes
        num_pages = left // layout.page_bytes - 1
        if num_pages < 1:
            need = (max_sessions + 1) * layout.slot_bytes + 2 * layout.page_bytes
            raise CacheCapacityError(
                f"memory budget of {memory_bytes / 2**20:.1f} MiB is too small: {max_sessions} session slots "
                f"({layout.slot_bytes / 2**20:.2f} MiB each) plus one cache page and the scratch slot and page need "
                f"{need / 2**20:.1f} MiB; "
                "raise the budget or lower max_sessions")
        return cls(config, max_sessions=max_sessions, num_pages=int(num_pages), page_size=page_size,
                   device=device, dtype=dtype)

    def pages_for(self, tokens: int) -> int:
        return -(-tokens // self.page_size)

    def alloc_slot(self) -> int:
        slot = self.free_slots.pop()
        for pool in (*self.recurrent, *self.conv):
            pool[slot].zero_()
        return slot

    def free_slot(self, slot: int) -> None:
        self.free_slots.append(slot)

    def copy_slot(self, src: int, dsts: list[int]) -> None:
        """Copy one slot into many with one indexed write per pool, whatever the number of copies."""
        index = torch.tensor(dsts, device=self.recurrent[0].device if self.recurrent else "cpu")
        for pool in (*self.recurrent, *self.conv):
            pool.index_copy_(0, index, pool[src].clone().expand(len(dsts), *pool.shape[1:]))

    def snapshot_slot(self, slot: int) -> list[torch.Tensor]:
        """A copy of one slot's states, to undo a forward whose tokens are not all kept."""
        return [pool[slot].clone() for pool in (*self.recurrent, *self.conv)]

    def restore_slot(self, slot: int, snapshot: list[torch.Tensor]) -> None:
        for pool, saved in zip((*self.recurrent, *self.conv), snapshot, strict=True):
            pool[slot].copy_(saved)

    def set_table_entry(self, slot: int, index: int, page: int) -> None:
        """Block-table entry `index` of `slot` is `page` (written to the device at the next flush)."""
        if index >= self.tables.shape[1]:
            self._grow_tables(index + 1)
        self._table_writes.append((slot, index, page))

    def copy_table(self, src: int, dsts: list[int]) -> None:
        """Forks start with their parent's block table."""
        self.flush_tables()
        index = torch.tensor(dsts, device=self.tables.device)
        self.tables.index_copy_(0, index, self.tables[src].clone().expand(len(dsts), -1))

    def table_rows(self, slots: torch.Tensor, width: int) -> torch.Tensor:
        """The device block tables [len(slots), width] of a batch (entries past a table's end are stale)."""
        self.flush_tables()
        return self.tables[slots, :width]

    def flush_tables(self) -> None:
        if self._table_writes:
            writes = torch.tensor(self._table_writes, dtype=torch.int64).to(self.tables.device)
            self.tables[writes[:, 0], writes[:, 1]] = writes[:, 2].to(torch.int32)
            self._table_writes.clear()

    def _grow_tables(self, width: int) -> None:
        grown = torch.zeros(self.max_sessions, min(self.num_pages, max(width, 2 * self.tables.shape[1])),
                            device=self.tables.device, dtype=torch.int32)
        grown[:, :self.tables.shape[1]] = self.tables
        self.tables = grown

    def fresh_slots(self, count: int) -> list[int]:
        """Slots for forks: taken from the free list, not zeroed (they are overwritten by copy_slot)."""
        return [self.free_slots.pop() for _ in range(count)]

    def alloc_page(self) -> int:
        page = self.free_pages.pop()
        self.page_refs[page] = 1
        return page

    def share_pages(self, pages: list[int], times: int = 1) -> None:
        """One more holder (`times` more) for each of `pages`, which are distinct."""
        if pages:
            self.page_refs[np.asarray(pages)] += times

    def release_pages(self, pages: list[int]) -> None:
        """Drop one holder of each of `pages` (distinct); pages nobody holds go back to the free list."""
        if pages:
            index = np.asarray(pages)
            self.page_refs[index] -= 1
            self.free_pages.extend(index[self.page_refs[index] == 0].tolist())

    def writable_page(self, page: int) -> int:
        """The page itself if only one table holds it, else a private copy (copy-on-write)."""
        if self.page_refs[page] == 1:
            return page
        copy = self.alloc_page()
        for pool in self.latent:
            pool[copy].copy_(pool[page])
        self.release_pages([page])
        return copy

    def reserve_top_pages(self, count: int, keep_free: int) -> range | None:
        """The `count` highest page ids, taken off the free list for another use of their memory, or None when
        one of them is in use or fewer than `keep_free` pages would stay free. Pages are handed out lowest id
        first, so the top of the pool is the last to be taken."""
        first = self.num_pages - count
        if count < 1 or first < 0 or len(self.free_pages) - count < keep_free or self.page_refs[first:].any():
            return None
        self.free_pages = [page for page in self.free_pages if page < first]
        self.page_refs[first:] = 1
        return range(first, self.num_pages)

    def unreserve_pages(self, pages: range) -> None:
        """Give reserved pages back, behind the others on the free list so the top stays free the longest."""
        self.page_refs[pages.start:pages.stop] = 0
        self.free_pages = [*reversed(pages), *self.free_pages]

    @property
    def used_slots(self) -> int:
        return self.max_sessions - len(self.free_slots)

    @property
    def used_pages(self) -> int:
        return self.num_pages - len(self.free_pages)
