"""The server's engine boundary: a prompt's token ids in, text deltas out, with the numbers usage reports.

`EngineGenerator` runs requests on the in-process engine through the prefix cache. Anything with the same
two methods can stand in for it (benchmarks/serve.py times the server alone with a generator that answers at once).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from kimi_swarm.backend import Engine, SamplingParams
from kimi_swarm.backend.chat.prefix_cache import Lease, PrefixCache
from kimi_swarm.backend.model.tokenizer import Tokenizer


class GenerationStream(Protocol):
    """One request's generation: iterate for text deltas; the counts are final once iteration ends."""

    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    finish_reason: str

    def __aiter__(self) -> AsyncIterator[str]: ...

    def close(self) -> None:
        """Free what the request holds (idempotent); a generation cut short is cancelled."""


class Generator(Protocol):
    tokenizer: Tokenizer
    context_tokens: int
    """The longest prompt plus completion a request may have (the engine's whole cache: Kimi Linear has no
    trained position limit to add)."""

    async def start(self, segments: Sequence[Sequence[int]], params: SamplingParams) -> GenerationStream:
        """Admit a request (its prompt cut at message boundaries): raises PromptTooLongError or CacheFullError."""


class EngineStream:
    def __init__(self, cache: PrefixCache, lease: Lease, params: SamplingParams, stop_ids: Sequence[int]):
        self._cache = cache
        self._lease = lease
        self._params = params
        self._stop_ids = set(params.stop_token_ids if params.stop_token_ids is not None else stop_ids)
        self.prompt_tokens = lease.prompt_tokens
        self.cached_tokens = lease.cached_tokens
        self.completion_tokens = 0
        self.finish_reason = "stop"
        self._finished = False
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[str]:
        session = self._lease.session
        assert session is not None
        start = session.num_tokens
        try:
            async for delta in session.stream(self._params):
                yield delta
        except BaseException:
            self.close()
            raise
        generated = session.token_ids[start:]
        self.completion_tokens = len(generated)
        self.finish_reason = self._finish_reason(generated, session.engine.tokenizer)
        self._finished = True

    def _finish_reason(self, generated: list[int], tokenizer: Tokenizer) -> str:
        """Why the generation ended, read back from its tokens (Session.stream does not return the completion):
        an end-of-turn token or a stop string is 'stop', reaching max_tokens 'length'."""
        if generated and generated[-1] in self._stop_ids:
            return "stop"
        if self._params.stop and any(stop in tokenizer.decode(generated) for stop in self._params.stop):
            return "stop"
        return "length" if len(generated) >= self._params.max_tokens else "stop"

    def close(self) -> None:
        """A finished generation stays as a snapshot for the conversation's next turn; any other is closed."""
        if not self._closed:
            self._closed = True
            self._cache.release(self._lease, keep=self._finished)


class EngineGenerator:
    def __init__(self, engine: Engine, *, prefix_reuse: bool = True):
        if engine.tokenizer is None:
            raise ValueError("the engine has no tokenizer; serving chat needs one")
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.cache = PrefixCache(engine, reuse=prefix_reuse)
        stats = engine.stats()
        self.context_tokens = stats["num_pages"] * stats["page_size"]

    async def start(self, segments: Sequence[Sequence[int]], params: SamplingParams) -> EngineStream:
        lease = await self.cache.open(segments, params.max_tokens)
        return EngineStream(self.cache, lease, params, self.engine.stop_ids)

    def shutdown(self) -> None:
        self.cache.clear()
        self.engine.shutdown()
