"""What runs next: one prefill chunk (oldest first, batched with others of its length, when their
pages fit) and one decode step for every
generating session whose next token has a page. A long prefill therefore delays running
decodes by at most one chunk, and work that does not fit waits instead of failing."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .block_manager import BlockManager
from .bridge import Waiter
from .generation import Generation
from .sequence import Sequence


@dataclass(eq=False)
class Job:
    """Bring a session up to date (extend/prefill) and, with a generation, generate."""

    seq: Sequence
    waiter: Waiter
    new_tokens: list[int] = field(default_factory=list)
    generation: Generation | None = None
    cancelled: bool = False


class Scheduler:
    def __init__(self, blocks: BlockManager, prefill_chunk: int, max_batch: int,
                 batched_prefill_width: int | None = None, prefill_tokens: int | None = None):
        if prefill_tokens is not None and prefill_tokens < prefill_chunk:
            raise ValueError(f"prefill_tokens ({prefill_tokens}) must be at least prefill_chunk ({prefill_chunk})")
        self.blocks = blocks
        self.prefill_chunk = prefill_chunk
        """Tokens of one job per forward."""
        self.prefill_tokens = prefill_chunk if prefill_tokens is None else prefill_tokens
        """Tokens of all jobs in one forward."""
        self.batched_prefill_width = prefill_chunk if batched_prefill_width is None else batched_prefill_width
        """The widest forward in which several jobs prefill together; a wider one runs one job."""
        self.max_batch = max_batch
        self.prefilling: deque[Job] = deque()
        self.decoding: list[Job] = []

    def add(self, job: Job) -> None:
        self.prefilling.append(job)

    def drop_cancelled(self) -> None:
        self.prefilling = deque(j for j in self.prefilling if not j.cancelled)
        self.decoding = [j for j in self.decoding if not j.cancelled]

    def next_prefill(self) -> tuple[list[Job], int]:
        """Waiting jobs to prefill together, n tokens each (at most a chunk), within one forward's token budget.

        The oldest runnable job sets n; a later job joins if it has at least half that many tokens
        left and at most `batched_prefill_width`, and n shrinks to what every member has (a rectangular
        batch), as far as the budget and the free pages allow. Forks extended at once with prompts of
        similar length (a wave of sub-agents' tasks) then share one forward instead of taking one each.
        """
        available = len(self.blocks.cache.free_pages)
        batch: list[Job] = []
        n = needed = 0
        for job in self.prefilling:
            seq = job.seq
            if seq.slot < 0 or seq.pinned or seq.prefill_pending == 0:
                continue
            width = min(n if batch else self.prefill_chunk, seq.prefill_pending)
            if batch and (2 * width < n or width > self.batched_prefill_width
                          or (len(batch) + 1) * width > self.prefill_tokens):
                continue
            members = needed if width == n else sum(self.blocks.pages_needed(m.seq, width) for m in batch)
            total = members + self.blocks.pages_needed(seq, width)
            if total <= available:
                batch.append(job)
                n, needed = width, total
        return batch, n

    def prefill_waiting(self) -> bool:
        """Whether a job could prefill now but for free pages."""
        return any(j.seq.slot >= 0 and not j.seq.pinned and j.seq.prefill_pending for j in self.prefilling)

    def runnable_decodes(self) -> int:
        """How many generating jobs a decode step would take if pages were no limit."""
        return min(self.max_batch, sum(not j.seq.pinned for j in self.decoding))

    def promote_ready(self) -> list[Job]:
        """Jobs whose prefill is complete: generations move to decoding, the rest are returned as done."""
        done, waiting = [], deque()
        for job in self.prefilling:
            if job.seq.slot >= 0 and not job.seq.pinned and job.seq.prefill_pending == 0:
                (self.decoding.append(job) if job.generation else done.append(job))
            else:
                waiting.append(job)
        self.prefilling = waiting
        return done

    def decode_batch(self) -> list[Job]:
        """Generating jobs whose next token fits in the free pages, oldest first."""
        free = len(self.blocks.cache.free_pages)
        batch = []
        for job in self.decoding:
            if job.seq.pinned:
                continue
            need = self.blocks.pages_needed(job.seq, 1)
            if need <= free:
                free -= need
                batch.append(job)
            if len(batch) == self.max_batch:
                break
        return batch
