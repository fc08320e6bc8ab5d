"""One session's bookkeeping: its tokens, its state slot and its page table.

A session gets its slot when the engine admits it (slot -1 until then). Every token of a session is in
`token_ids`; the first `num_cached` of them have been run through the model (their KDA state and latent rows
are in the cache). The last token always stays pending, so that generating or forking never needs stored
logits: the next forward feeds it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


class TokenHistory:
    """A session's tokens. A fork shares its parent's list up to the fork point instead of copying it
    (the lists only ever grow), so forking 100 sessions off a 128K-token context copies no tokens."""

    def __init__(self, tokens: Iterable[int] = (), *, shared: list[int] | None = None, shared_len: int = 0):
        self._shared = shared if shared is not None else []
        self._shared_len = shared_len
        self._own = list(tokens)

    def __len__(self) -> int:
        return self._shared_len + len(self._own)

    def __getitem__(self, index: int | slice) -> int | list[int]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise ValueError("token slices take no step")
            split = self._shared_len
            head = self._shared[start:min(stop, split)] if start < split else []
            return head + self._own[max(start - split, 0):max(stop - split, 0)]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"token {index} of a session of {len(self)}")
        return self._shared[index] if index < self._shared_len else self._own[index - self._shared_len]

    def extend(self, tokens: Iterable[int]) -> None:
        self._own.extend(tokens)

    def append(self, token: int) -> None:
        self._own.append(token)

    def fork(self) -> TokenHistory:
        """A child history that reads this one's tokens so far without copying them."""
        if self._shared_len:  # flatten once, so children never chain through several lists
            self._own = self._shared[:self._shared_len] + self._own
            self._shared, self._shared_len = [], 0
        return TokenHistory(shared=self._own, shared_len=len(self._own))

    def tolist(self) -> list[int]:
        return self._shared[:self._shared_len] + self._own


@dataclass
class Sequence:
    seq_id: int
    slot: int = -1
    block_table: list[int] = field(default_factory=list)
    token_ids: TokenHistory = field(default_factory=TokenHistory)
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
