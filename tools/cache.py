"""A content-addressed cache shared by all agents of a run, with single-flight fetching.

Keys (normalised URLs) point at the SHA-256 digest of what was fetched; documents are stored once
per digest, so mirrors of one page share storage. Concurrent requests for one key wait on one
fetch: 20 agents asking for the same URL make one request.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class ContentCache(Generic[T]):
    def __init__(self, ttl_s: float, max_entries: int) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._keys: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._blobs: dict[str, T] = {}
        self._refs: Counter[str] = Counter()
        self._inflight: dict[str, asyncio.Task[tuple[str, T]]] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def _lookup(self, key: str) -> T | None:
        entry = self._keys.get(key)
        if entry is None:
            return None
        digest, expires = entry
        if time.monotonic() >= expires:
            self._drop(key)
            return None
        self._keys.move_to_end(key)
        return self._blobs[digest]

    def _store(self, key: str, digest: str, value: T) -> None:
        if key in self._keys:
            self._drop(key)
        self._keys[key] = (digest, time.monotonic() + self._ttl_s)
        self._blobs.setdefault(digest, value)
        self._refs[digest] += 1
        while len(self._keys) > self._max_entries:
            self._drop(next(iter(self._keys)))

    def _drop(self, key: str) -> None:
        digest, _ = self._keys.pop(key)
        self._refs[digest] -= 1
        if self._refs[digest] <= 0:
            del self._refs[digest]
            del self._blobs[digest]

    async def get_or_fetch(self, key: str, fetch: Callable[[], Awaitable[tuple[str, T]]]) -> T:
        """The cached value for `key`, or the result of one shared call to `fetch` -> (digest, value)."""
        cached = self._lookup(key)
        if cached is not None:
            return cached
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(fetch())
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._finish(key, done))
        _, value = await asyncio.shield(task)
        return value

    def _finish(self, key: str, task: asyncio.Task[tuple[str, T]]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled() and task.exception() is None and self._ttl_s > 0:
            digest, value = task.result()
            self._store(key, digest, value)

    async def aclose(self) -> None:
        """Cancels fetches nobody will wait for any more."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
