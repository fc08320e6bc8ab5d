"""A session: one growing token sequence held in the engine as KDA state plus latent-cache pages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from collections.abc import Sequence as Seq
from typing import Any, Protocol

from .bridge import Waiter, drain_while_running
from .errors import SessionBusyError, SessionClosedError
from .generation import Generation
from .sampling import Completion, SamplingParams
from .sequence import Sequence


class SessionHost(Protocol):
    """What a session needs of the engine that holds it (the engine implements it)."""

    tokenizer: Any

    def encode(self, prompt: str | Seq[int]) -> list[int]: ...

    async def run_job(self, seq: Sequence, new_tokens: list[int], generation: Generation | None,
                      waiter: Waiter) -> Any: ...

    def new_generation(self, params: SamplingParams) -> Generation: ...

    def fork_sequence(self, parent: Sequence, n: int) -> list[Sequence]: ...

    def close_sequence(self, seq: Sequence) -> None: ...


class Session:
    """A handle on one sequence in the engine; `fork` makes more that continue from the same point."""

    def __init__(self, engine: SessionHost, seq: Sequence):
        self.engine = engine
        self._seq = seq
        self._busy = False

    @property
    def session_id(self) -> int:
        return self._seq.seq_id

    @property
    def token_ids(self) -> list[int]:
        return self._seq.token_ids.tolist()

    @property
    def num_tokens(self) -> int:
        return len(self._seq.token_ids)

    @property
    def num_cached(self) -> int:
        """Tokens run through the model so far; the last token always stays pending (the next forward feeds it)."""
        return self._seq.num_cached

    @property
    def closed(self) -> bool:
        return self._seq.close_requested

    def _start(self, what: str) -> None:
        if self._seq.close_requested:
            raise SessionClosedError(f"session {self.session_id} is closed; cannot {what}")
        if self._busy:
            raise SessionBusyError(f"session {self.session_id} is still running an operation; cannot {what}")

    async def extend(self, prompt: str | Seq[int]) -> None:
        """Append tokens (a user turn, a tool result) and run them, without generating."""
        self._start("extend")
        ids = self.engine.encode(prompt)
        if not ids:
            return
        self._busy = True
        try:
            await self.engine.run_job(self._seq, ids, None, Waiter(asyncio.get_running_loop()))
        finally:
            self._busy = False

    async def generate(self, params: SamplingParams | None = None) -> Completion:
        """Generate until a stop condition; the generated tokens become part of the session."""
        self._start("generate")
        generation = self.engine.new_generation(params or SamplingParams())
        self._busy = True
        try:
            return await self.engine.run_job(self._seq, [], generation, Waiter(asyncio.get_running_loop()))
        finally:
            self._busy = False

    async def stream(self, params: SamplingParams | None = None) -> AsyncIterator[str]:
        """Text deltas of a generation as they are produced."""
        self._start("stream")
        generation = self.engine.new_generation(params or SamplingParams())
        waiter = Waiter(asyncio.get_running_loop(), stream=True)
        self._busy = True
        task = asyncio.ensure_future(self.engine.run_job(self._seq, [], generation, waiter))
        try:
            async for delta in drain_while_running(waiter.deltas, task):
                yield delta
            task.result()
        finally:
            if not task.done():
                task.cancel()
            self._busy = False

    def fork(self, n: int) -> list[Session]:
        """n sessions continuing from exactly this point: state copied, cache pages shared."""
        self._start("fork")
        return [Session(self.engine, seq) for seq in self.engine.fork_sequence(self._seq, n)]

    def close(self) -> None:
        """Return the session's slot and pages to the engine (idempotent)."""
        if not self._seq.close_requested:
            self._seq.close_requested = True
            self.engine.close_sequence(self._seq)

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
