"""Hands results from the engine's worker thread to the asyncio task awaiting them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeVar

Item = TypeVar("Item")


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


async def drain_while_running(queue: asyncio.Queue[Item], producer: asyncio.Future[Any]) -> AsyncIterator[Item]:
    """What `producer` puts on `queue`, as it arrives, until the producer is done; then what is left.

    The caller reads the producer's result (or error) afterwards. Nothing the producer queued is lost.
    """
    getter: asyncio.Future[Item] | None = None
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, producer}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                break
            yield getter.result()
        getter.cancel()
        while not queue.empty():
            yield queue.get_nowait()
    finally:
        if getter is not None and not getter.done():
            getter.cancel()
