"""Page-table operations on top of the StateCache: append room, fork, copy-on-write, free."""

from __future__ import annotations

from .sequence import Sequence
from .state_cache import StateCache


class BlockManager:
    def __init__(self, cache: StateCache):
        self.cache = cache

    def pages_needed(self, seq: Sequence, num_tokens: int) -> int:
        """Free pages that appending `num_tokens` cached tokens to `seq` would take (new + copy-on-write)."""
        cache = self.cache
        new = cache.pages_for(seq.num_cached + num_tokens) - len(seq.block_table)
        offset = seq.num_cached % cache.page_size
        shared_tail = offset != 0 and cache.page_refs[seq.block_table[-1]] > 1
        return max(new, 0) + int(shared_tail)

    def can_append(self, seq: Sequence, num_tokens: int) -> bool:
        return self.pages_needed(seq, num_tokens) <= len(self.cache.free_pages)

    def prepare_append(self, seq: Sequence, num_tokens: int) -> None:
        """Make the pages that the next `num_tokens` cached tokens land in exist and be private."""
        cache = self.cache
        if seq.num_cached % cache.page_size:
            page = cache.writable_page(seq.block_table[-1])
            if page != seq.block_table[-1]:
                seq.block_table[-1] = page
                cache.set_table_entry(seq.slot, len(seq.block_table) - 1, page)
        while len(seq.block_table) < cache.pages_for(seq.num_cached + num_tokens):
            seq.block_table.append(cache.alloc_page())
            cache.set_table_entry(seq.slot, len(seq.block_table) - 1, seq.block_table[-1])

    def truncate(self, seq: Sequence, num_cached: int) -> None:
        """Forget cached tokens past `num_cached` (their KDA state is the caller's to restore) and give back
        the pages no longer needed, so a later append never writes into a page it does not own."""
        seq.num_cached = num_cached
        keep = self.cache.pages_for(num_cached)
        self.cache.release_pages(seq.block_table[keep:])
        del seq.block_table[keep:]

    def admit(self, seq: Sequence) -> None:
        seq.slot = self.cache.alloc_slot()

    def fork_into(self, parent: Sequence, children: list[Sequence]) -> None:
        """Give each child a copy of the parent's slot and the parent's pages, shared by reference.

        The cost is one indexed copy per state pool and one vectorised refcount update, whatever
        the number of children or the length of the shared prefix.
        """
        slots = self.cache.fresh_slots(len(children))
        self.cache.copy_slot(parent.slot, slots)
        self.cache.copy_table(parent.slot, slots)
        self.cache.share_pages(parent.block_table, times=len(children))
        for child, slot in zip(children, slots):
            child.slot = slot
            child.block_table = list(parent.block_table)
            child.num_cached = parent.num_cached

    def free(self, seq: Sequence) -> None:
        self.cache.release_pages(seq.block_table)
        seq.block_table = []
        self.cache.free_slot(seq.slot)
        seq.closed = True
