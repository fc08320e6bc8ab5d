"""Hands results from the engine's worker thread to the asyncio task awaiting them."""

from __future__ import annotations

import asyncio
from typing import Any


class Waiter:
    """A future plus an optional queue of stream deltas, fed thread-safely from the worker."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stream: bool = False):
        self.loop = loop
        self.future: asyncio.Future = loop.create_future()
        self.deltas: asyncio.Queue[str] | None = asyncio.Queue() if stream else None

    def _call(self, fn, *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more

    def resolve(self, value: Any) -> None:
        self._call(_settle, self.future, value, None)

    def fail(self, error: BaseException) -> None:
        self._call(_settle, self.future, None, error)

    def push(self, delta: str) -> None:
        if self.deltas is not None and delta:
            self._call(self.deltas.put_nowait, delta)


def _settle(future: asyncio.Future, value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
