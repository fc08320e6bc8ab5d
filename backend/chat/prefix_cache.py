"""Prefix reuse across independent requests: a radix tree over token ids whose nodes hold idle session snapshots.

A server gets every request as a whole transcript. Most of it is usually something the engine has run before: a
shared system prompt or document, or the previous turn of the same conversation. A snapshot is an idle fork of a
session at some token (its KDA state copied, its latent pages shared), so a request whose tokens start with a
snapshot's continues from a fork of it and runs only the rest. Snapshots are taken at the request's message
boundaries, at the end of its prompt, where it branches off a path the tree already knows, and at the end of its
generation (the working session itself, kept). The longest snapshot that prefixes a request wins, to the token.

A request that would recompute a prefix another request is computing right now waits for that snapshot instead
(a node under construction carries a future). Snapshots are evicted least-recently-used when the engine's slots
or pages are needed by a request; a request is refused (CacheFullError) only when running requests hold them.
Built only on the engine's public Session API; nothing here knows about HTTP.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..engine.engine import Engine
from ..engine.errors import CacheCapacityError
from ..engine.session import Session

MIN_BRANCH_TOKENS = 512
"""A request that leaves a known path inside a message takes a snapshot where it branches off only this far past
its own start: a shorter shared stretch costs little to compute again, and is not worth a session slot and an
extra prefill split."""


class CacheFullError(CacheCapacityError):
    """Not now: running requests hold the engine's slots or pages; retrying later can succeed."""


class PromptTooLongError(CacheCapacityError):
    """Never: the prompt plus the tokens asked for are more than the engine's whole cache holds."""


@dataclass(eq=False)
class _Node:
    """Tokens [depth - len(edge), depth) of a path; a snapshot (or a future for one) of the session at depth."""

    edge: list[int]
    parent: _Node | None
    depth: int
    children: dict[int, _Node] = field(default_factory=dict)
    snapshot: Session | None = None
    computed: int = 0
    """Tokens the snapshot's session had run when it was taken (the rest are pending)."""
    building: asyncio.Future[None] | None = None
    pins: int = 0
    """Requests about to fork the snapshot: it is not evicted meanwhile."""
    last_used: int = 0


@dataclass(eq=False)
class Lease:
    """A request's working session, holding its prompt; `cached_tokens` of the prompt were not computed again."""

    session: Session | None
    """None until the session opens (an admitted request reserves its slot and pages first)."""
    prompt_tokens: int
    cached_tokens: int
    reserved_pages: int
    shared_pages: int


def _common_length(edge: list[int], ids: Sequence[int], start: int, end: int) -> int:
    """How many leading tokens of `edge` equal ids[start:end]."""
    window = ids[start:min(start + len(edge), end)]
    if window == edge:
        return len(edge)
    return next((i for i, (a, b) in enumerate(zip(edge, window)) if a != b), min(len(edge), len(window)))


class PrefixCache:
    """Opens working sessions for whole prompts, continuing from the longest snapshot that prefixes them."""

    def __init__(self, engine: Engine, *, reuse: bool = True):
        self.engine = engine
        self.reuse = reuse
        self._root = _Node(edge=[], parent=None, depth=0)
        self._snapshots: set[_Node] = set()
        self._clock = itertools.count(1)
        self._live = 0
        self._active: set[Lease] = set()
        self.prompt_tokens = 0
        self.cached_tokens = 0

    @property
    def max_sessions(self) -> int:
        return self.engine.stats()["max_sessions"]

    @property
    def snapshot_count(self) -> int:
        return len(self._snapshots)

    @property
    def live_sessions(self) -> int:
        """Sessions this cache holds open in the engine: working sessions and snapshots."""
        return self._live

    def check_fits(self, prompt_tokens: int, max_tokens: int) -> None:
        """Raise PromptTooLongError when a prompt and its completion can never fit in the engine's cache."""
        stats = self.engine.stats()
        if -(-(prompt_tokens + max_tokens) // stats["page_size"]) > stats["num_pages"]:
            raise PromptTooLongError(
                f"the prompt's {prompt_tokens} tokens plus {max_tokens} completion tokens can never fit: the engine's "
                f"cache holds {stats['num_pages'] * stats['page_size']} tokens in all")

    async def open(self, segments: Sequence[Sequence[int]], max_tokens: int) -> Lease:
        """A working session holding the concatenated `segments` (a prompt cut at its message boundaries), with room
        reserved for `max_tokens` more. Raises PromptTooLongError or CacheFullError."""
        ids = [token for segment in segments for token in segment]
        if not ids:
            raise ValueError("a prompt needs at least one token")
        self.check_fits(len(ids), max_tokens)
        if not self.reuse:
            return await self._open_fresh(ids, max_tokens)
        while True:
            path, known = self._walk(ids)
            start = next((n for n in reversed(path) if n.snapshot is not None or n.building is not None), self._root)
            if start.snapshot is not None or start is self._root:
                break
            await asyncio.shield(start.building)  # another request is computing this prefix: wait for its snapshot
        boundaries = itertools.accumulate(len(segment) for segment in segments)
        branch = {known} if known >= start.depth + MIN_BRANCH_TOKENS else set()
        points = sorted({b for b in boundaries if b > start.depth} | branch)
        building = [node for node in (self._node_at(ids, point) for point in points)
                    if node.snapshot is None and node.building is None]
        for node in building:
            node.building = asyncio.get_running_loop().create_future()
        start.pins += 1
        lease: Lease | None = None
        try:
            lease = await self._admit(ids, start, max_tokens, extra_pages=len(building))
            await self._build(lease, ids, start, building)
        except BaseException:
            if lease is not None:
                self.release(lease, keep=False)
            raise
        finally:
            start.pins -= 1
            for node in building:
                self._settle(node)
        lease.cached_tokens = start.computed
        self.prompt_tokens += len(ids)
        self.cached_tokens += start.computed
        return lease

    def release(self, lease: Lease, *, keep: bool) -> None:
        """Done with a working session: keep it as a snapshot of its tokens (prompt and generation), or close it."""
        self._active.discard(lease)
        session = lease.session
        if session is None:  # refused or failed before its session opened
            self._live -= 1
            return
        if session.closed:
            return
        if keep and self.reuse:
            ids = session.token_ids
            node = self._node_at(ids, len(ids))
            if node.snapshot is None and node.building is None:
                self._keep(node, session, session.num_cached)
                return
        self._close(session)

    def clear(self) -> None:
        """Close every snapshot (the working sessions of running requests stay)."""
        for node in [n for n in self._snapshots if not n.pins]:
            self._evict(node)

    # --- building a request's session ---------------------------------------------------------

    async def _open_fresh(self, ids: list[int], max_tokens: int) -> Lease:
        lease = await self._admit(ids, self._root, max_tokens, extra_pages=0)
        try:
            lease.session = await self.engine.session(ids)
        except BaseException:
            self.release(lease, keep=False)
            raise
        self.prompt_tokens += len(ids)
        return lease

    async def _build(self, lease: Lease, ids: list[int], start: _Node, building: list[_Node]) -> None:
        """Run the prompt from `start` to its end, snapshotting at each node of `building` on the way."""
        position = start.depth
        if start.snapshot is not None:
            lease.session = start.snapshot.fork(1)[0]
            start.last_used = next(self._clock)
        for node in building:
            await self._advance(lease, ids, position, node.depth)
            position = node.depth
            self._snapshot(lease.session, node)
        await self._advance(lease, ids, position, len(ids))

    async def _advance(self, lease: Lease, ids: list[int], position: int, depth: int) -> None:
        if depth <= position:
            return
        if lease.session is None:
            lease.session = await self.engine.session(ids[:depth])
        else:
            await lease.session.extend(ids[position:depth])

    def _snapshot(self, session: Session, node: _Node) -> None:
        """An idle fork of `session` into `node`, if a slot is free or a less recently used snapshot gives one up."""
        if self._free_slot():
            self._live += 1
            self._keep(node, session.fork(1)[0], session.num_cached)

    def _keep(self, node: _Node, session: Session, computed: int) -> None:
        node.snapshot, node.computed, node.last_used = session, computed, next(self._clock)
        self._snapshots.add(node)

    def _settle(self, node: _Node) -> None:
        """A node under construction is done (snapshot taken, skipped or abandoned): wake its waiters."""
        future, node.building = node.building, None
        if future is not None and not future.done():
            future.set_result(None)
        self._prune(node)

    # --- capacity -------------------------------------------------------------------------------

    async def _admit(self, ids: list[int], start: _Node, max_tokens: int, extra_pages: int) -> Lease:
        """Reserve a slot and the pages this request will add, evicting snapshots if they are in the way."""
        stats = self.engine.stats()
        page_size = stats["page_size"]
        shared = start.computed // page_size
        need = -(-(len(ids) + max_tokens) // page_size) - shared + extra_pages
        if not self._free_slot():
            raise CacheFullError(f"all {self.max_sessions} engine sessions are held by running requests (and the "
                                 "snapshots they start from)")
        self._live += 1
        try:
            while need > self._free_pages():
                victim = self._least_recently_used()
                if victim is None:
                    raise CacheFullError(f"the cache's free pages cannot hold {need} more pages while the running "
                                         "requests hold theirs")
                self._evict(victim)
                await self.engine.drain()
        except BaseException:
            self._live -= 1
            raise
        lease = Lease(session=None, prompt_tokens=len(ids), cached_tokens=0,
                      reserved_pages=need, shared_pages=shared)
        self._active.add(lease)
        return lease

    def _free_pages(self) -> int:
        """Free pages less what running requests reserved and have not taken yet."""
        stats = self.engine.stats()
        page_size = stats["page_size"]
        outstanding = 0
        for lease in self._active:
            taken = -(-lease.session.num_tokens // page_size) - lease.shared_pages if lease.session else 0
            outstanding += max(lease.reserved_pages - taken, 0)
        return stats["num_pages"] - stats["used_pages"] - outstanding

    def _free_slot(self) -> bool:
        """Whether one more session fits in the engine's slots, after evicting a snapshot if need be."""
        if self._live < self.max_sessions:
            return True
        victim = self._least_recently_used()
        if victim is None:
            return False
        self._evict(victim)
        return True

    def _least_recently_used(self) -> _Node | None:
        return min((n for n in self._snapshots if not n.pins), key=lambda n: n.last_used, default=None)

    def _evict(self, node: _Node) -> None:
        session, node.snapshot = node.snapshot, None
        self._snapshots.discard(node)
        if session is not None:
            self._close(session)
        self._prune(node)

    def _close(self, session: Session) -> None:
        session.close()
        self._live -= 1

    # --- the radix tree --------------------------------------------------------------------------

    def _walk(self, ids: Sequence[int]) -> tuple[list[_Node], int]:
        """The nodes whose whole path prefixes `ids` (root first), and how many tokens of `ids` the tree holds."""
        node, position, path = self._root, 0, [self._root]
        while position < len(ids):
            child = node.children.get(ids[position])
            if child is None:
                break
            matched = _common_length(child.edge, ids, position, len(ids))
            if matched < len(child.edge):
                return path, position + matched
            node, position = child, position + matched
            path.append(node)
        return path, position

    def _node_at(self, ids: Sequence[int], depth: int) -> _Node:
        """The node for ids[:depth], made (splitting an edge) if the tree has none there."""
        node, position = self._root, 0
        while position < depth:
            child = node.children.get(ids[position])
            if child is None:
                leaf = _Node(edge=list(ids[position:depth]), parent=node, depth=depth)
                node.children[ids[position]] = leaf
                return leaf
            matched = _common_length(child.edge, ids, position, depth)
            if matched < len(child.edge):
                middle = _Node(edge=child.edge[:matched], parent=node, depth=position + matched)
                node.children[middle.edge[0]] = middle
                child.edge, child.parent = child.edge[matched:], middle
                middle.children[child.edge[0]] = child
                child = middle
            node, position = child, position + matched
        return node

    def _prune(self, node: _Node) -> None:
        """Drop nodes that hold nothing and branch nowhere, and merge a bare node into its only child."""
        while node is not self._root and node.snapshot is None and node.building is None and len(node.children) <= 1:
            parent = node.parent
            assert parent is not None
            if node.children:
                (child,) = node.children.values()
                child.edge, child.parent = node.edge + child.edge, parent
                parent.children[node.edge[0]] = child
            else:
                del parent.children[node.edge[0]]
            node = parent
