"""Errors the engine raises that a caller may catch; each names what went wrong."""

from __future__ import annotations


class SessionClosedError(RuntimeError):
    """An operation on a session that has been closed."""


class SessionBusyError(RuntimeError):
    """A second operation on a session while one is still running."""


class EngineCrashedError(RuntimeError):
    """The engine's worker thread died on an unexpected error; every request fails with it, none hangs."""


class CacheCapacityError(RuntimeError):
    """A request that cannot fit in the engine's memory budget, now or ever."""
