"""Per-host politeness: at most N requests in flight and at most R request starts per second per host."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class HostLimiter:
    def __init__(self, concurrency: int, rate_per_s: float) -> None:
        self._interval = 1.0 / rate_per_s
        self._slots: defaultdict[str, asyncio.Semaphore] = defaultdict(lambda: asyncio.Semaphore(concurrency))
        self._next_start: defaultdict[str, float] = defaultdict(float)

    @asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[None]:
        """Holds one of the host's slots, started no sooner than the host's rate allows."""
        async with self._slots[host]:
            now = time.monotonic()
            start = max(now, self._next_start[host])
            self._next_start[host] = start + self._interval
            if start > now:
                await asyncio.sleep(start - now)
            yield
