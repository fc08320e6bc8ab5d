"""One session's bookkeeping: its tokens, its state slot and its page table.

A session gets its slot when the engine admits it (slot -1 until then). Every token of a session is in `token_ids`; the first `num_cached` of them have been run through
the model (their KDA state and latent rows are in the cache). The last token always stays
pending, so that generating or forking never needs stored logits: the next forward feeds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Sequence:
    seq_id: int
    slot: int = -1
    block_table: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    num_cached: int = 0
    pending_forks: int = 0
    close_requested: bool = False
    closed: bool = False

    @property
    def pinned(self) -> bool:
        """Forks of this session still wait for slots, so its state must not move yet."""
        return self.pending_forks > 0

    @property
    def num_pending(self) -> int:
        return len(self.token_ids) - self.num_cached

    @property
    def prefill_pending(self) -> int:
        """Tokens to run before the session is ready to generate (all but the last pending one)."""
        return max(self.num_pending - 1, 0)
