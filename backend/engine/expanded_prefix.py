"""A prefix shared by many decoding sessions, decompressed once so their decode steps attend it in the expanded form.

A decode step of N forks over a shared prefix of E tokens attends it, in the absorbed form, at H x (576 + 512)
multiply-adds per query and key: compute-bound. Decompressed through kv_b_proj once (keys [E, H, 192], values
[E, H, 128] padded to 192 so the flash kernel takes them), the same prefix is ordinary multi-head attention at
H x (192 + 192), read as a matrix product by all N queries. Each session's own later keys stay absorbed; the
two parts merge by log-sum-exp (KimiMLAAttention._decode_over_expanded_prefix).

The decompressed rows are 21x the latent's size, so they live in latent-cache pages taken off the top of the
pool: they count against the engine's memory budget (Engine.stats shows them apart) and go back when the prefix
is no longer shared (its last forks closed), when a batch needs another prefix, or as soon as a session waits for
pages.
It pays with many sharers over a long prefix (ExpandedPrefixes.min_sharers, .min_tokens); otherwise decode stays
absorbed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kimi_swarm.kernels.mla_reference import gather_tokens

from ..model.mla_layer import KimiMLAAttention
from ..model.model import KimiLinearForCausalLM
from .state_cache import StateCache

BUILD_ROWS = 8192
"""Prefix tokens decompressed per step while building, bounding the temporary memory."""


@dataclass(eq=False)
class ExpandedPrefix:
    pages: tuple[int, ...]
    """The latent pages the prefix was decompressed from, in order: it serves any batch sharing these first."""
    reserved: range
    """The cache pages whose memory holds it."""
    keys: list[torch.Tensor]
    """Per MLA layer, [E, H, nope + rope]."""
    values: list[torch.Tensor]
    """Per MLA layer, [E, H, nope + rope]: v_head_dim values, then zeros."""

    @property
    def rows(self) -> int:
        return self.keys[0].shape[0]


class ExpandedPrefixes:
    """At most one expanded prefix at a time, built for the decode batch that shares the most."""

    def __init__(self, model: KimiLinearForCausalLM, cache: StateCache, *, enabled: bool,
                 min_tokens: int = 2048, min_sharers: int = 32):
        self.layers: list[KimiMLAAttention] = [layer.self_attn for layer in model.model.layers
                                               if isinstance(layer.self_attn, KimiMLAAttention)]
        self.cache = cache
        self.enabled = enabled and bool(self.layers)
        self.min_tokens = min_tokens
        """Shorter prefixes are cheap to attend absorbed and not worth 21x their memory."""
        self.min_sharers = min_sharers
        """Below this many queries the absorbed form's smaller reads win (measured in benchmarks/e2e.py)."""
        self.current: ExpandedPrefix | None = None
        self.builds = 0

    def for_batch(self, prefix_pages: list[int], sharers: int) -> ExpandedPrefix | None:
        """The expanded prefix that `sharers` sessions whose block tables start with `prefix_pages` attend, built
        now if worth it and memory allows; None keeps the step absorbed."""
        if not self.enabled or sharers < self.min_sharers:
            return None
        current = self.current
        if current is not None and tuple(prefix_pages[:len(current.pages)]) == current.pages:
            return current
        if len(prefix_pages) * self.cache.page_size < self.min_tokens:
            return None
        self.release()
        self.current = self._build(tuple(prefix_pages))
        return self.current

    def release_unshared(self) -> None:
        """Drop the prefix once fewer than two sessions hold its pages (its forks have closed): its pages may be
        freed and reused from then on."""
        if self.current is not None and int(self.cache.page_refs[list(self.current.pages)].min()) < 2:
            self.release()

    @property
    def reserved_pages(self) -> int:
        return len(self.current.reserved) if self.current is not None else 0

    def release(self) -> None:
        """Give the prefix's pages back to the cache. The engine calls it when a session waits for pages, so the
        expansion never holds back a session."""
        if self.current is not None:
            self.cache.unreserve_pages(self.current.reserved)
            self.current = None

    def _build(self, pages: tuple[int, ...]) -> ExpandedPrefix | None:
        cache, first = self.cache, self.layers[0]
        rows = len(pages) * cache.page_size
        width = first.nope_dim + first.rope_dim
        elements = 2 * rows * first.num_heads * width
        per_page = cache.page_size * cache.latent[0].shape[-1]
        reserved = cache.reserve_top_pages(-(-elements // per_page), keep_free=cache.num_pages // 4)
        if reserved is None:
            return None
        table = torch.tensor(pages, device=cache.latent[0].device, dtype=torch.int32)
        keys, values = [], []
        with torch.inference_mode():
            for layer, pool in zip(self.layers, cache.latent, strict=True):
                region = pool[reserved.start:reserved.stop].view(-1)[:elements].view(2, rows, first.num_heads, width)
                for start in range(0, rows, BUILD_ROWS):
                    stop = min(start + BUILD_ROWS, rows)
                    k, v = layer.decompress(gather_tokens(pool, table, start, stop))
                    region[0, start:stop].copy_(k)
                    region[1, start:stop].copy_(v)
                keys.append(region[0])
                values.append(region[1])
        self.builds += 1
        return ExpandedPrefix(pages, reserved, keys, values)
