"""Decode steps over a shared prefix decompressed once (engine/expanded_prefix.py) give what the absorbed form
gives, in float64 and through the whole engine (forks of forks included), and its memory comes out of the
cache's pages and goes back when the prefix is no longer shared."""

from __future__ import annotations

import asyncio
import random

import pytest
import torch
from model_support import write_chat_checkpoint

from kimi_swarm.backend import Engine, SamplingParams
from kimi_swarm.backend.engine.expanded_prefix import ExpandedPrefixes
from kimi_swarm.backend.engine.paged_context import PagedContext
from kimi_swarm.backend.engine.state_cache import CacheLayout, StateCache
from kimi_swarm.backend.model.config import KimiLinearConfig
from kimi_swarm.backend.model.weights import load_model

PAGE = 16
GREEDY = SamplingParams(max_tokens=6, stop_token_ids=[])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_chat_checkpoint(tmp_path_factory.mktemp("expanded-ckpt"), layers="KMKKM", seed=5)


def cache_with_prefixes(model, *, max_sessions: int, num_pages: int) -> tuple[StateCache, ExpandedPrefixes]:
    """A state cache for `model` and its expanded prefixes, which expand a prefix of a page with two sharers."""
    cache = StateCache(model.config, max_sessions=max_sessions, num_pages=num_pages, page_size=PAGE,
                       device=model.device, dtype=model.dtype)
    return cache, ExpandedPrefixes(model, cache, enabled=True, min_tokens=PAGE, min_sharers=2)


def forked_decode_logits(model, *, expand: bool, seed: int = 0) -> tuple[torch.Tensor, ExpandedPrefixes]:
    """One decode step of 5 forks of a 4-page root, each with a few private tokens, over the shared pages,
    attended absorbed or with the prefix expanded."""
    cache, prefixes = cache_with_prefixes(model, max_sessions=8, num_pages=96)
    gen = torch.Generator().manual_seed(seed)
    root, pages = cache.alloc_slot(), [cache.alloc_page() for _ in range(4)]
    for index, page in enumerate(pages):
        cache.set_table_entry(root, index, page)
    model(torch.randint(0, 256, (1, 4 * PAGE), generator=gen), PagedContext(cache, [root], [pages], [0], 4 * PAGE))
    slots, tables, starts = cache.fresh_slots(5), [], []
    cache.copy_slot(root, slots)
    for i, slot in enumerate(slots):
        cache.share_pages(pages)
        table = [*pages, cache.alloc_page()]
        own = i % 3 + 1  # private tokens before the decoded one
        for index, page in enumerate(table):
            cache.set_table_entry(slot, index, page)
        model(torch.randint(0, 256, (1, own), generator=gen), PagedContext(cache, [slot], [table], [4 * PAGE], own))
        tables.append(table)
        starts.append(4 * PAGE + own)
    expanded = prefixes.for_batch(pages, len(slots)) if expand else None
    assert (expanded is not None) == expand
    ctx = PagedContext(cache, slots, tables, starts, 1, expanded=expanded)
    assert ctx.shared_pages == 4
    return model(torch.randint(0, 256, (5, 1), generator=gen), ctx)[:, 0], prefixes


def test_decode_over_an_expanded_prefix_equals_the_absorbed_form_and_float64(checkpoint):
    exact = load_model(checkpoint, device="cpu", dtype=torch.float64)
    absorbed64, _ = forked_decode_logits(exact, expand=False)
    expanded64, prefixes = forked_decode_logits(exact, expand=True)
    assert prefixes.builds == 1 and prefixes.current.rows == 4 * PAGE
    assert (expanded64 - absorbed64).abs().max() <= 1e-6  # the model returns fp32 logits
    expanded32, _ = forked_decode_logits(load_model(checkpoint, device="cpu", dtype=torch.float32), expand=True)
    assert (expanded32.double() - absorbed64).abs().max() <= 1e-4


def test_expanded_prefix_pages_are_reserved_from_the_budget_and_given_back(checkpoint):
    model = load_model(checkpoint, device="cpu", dtype=torch.float32)
    cache, prefixes = cache_with_prefixes(model, max_sessions=4, num_pages=64)
    pages = [cache.alloc_page() for _ in range(3)]
    cache.share_pages(pages)  # two holders
    expanded = prefixes.for_batch(pages, 2)
    layer = prefixes.layers[0]
    needed = -(-2 * 3 * PAGE * layer.num_heads * (layer.nope_dim + layer.rope_dim) // (PAGE * cache.latent[0].shape[-1]))
    assert expanded.reserved == range(64 - needed, 64) and cache.used_pages == 3 + needed
    assert prefixes.for_batch([*pages, cache.alloc_page()], 2) is expanded  # a longer shared run reuses it
    assert prefixes.for_batch(pages, 1) is None  # too few sharers: absorbed
    cache.release_pages(pages)  # one holder left: no longer shared
    prefixes.release_unshared()
    assert prefixes.current is None and cache.used_pages == 4
    assert cache.free_pages[0] == 63  # the top of the pool is handed out last again


def test_no_expansion_when_it_would_leave_the_cache_short(checkpoint):
    model = load_model(checkpoint, device="cpu", dtype=torch.float32)
    cache, prefixes = cache_with_prefixes(model, max_sessions=4, num_pages=12)
    pages = [cache.alloc_page() for _ in range(3)]
    assert prefixes.for_batch(pages, 8) is None and cache.used_pages == 3


async def run_fork_tree(checkpoint, *, expand: bool, pages: int = 4096) -> tuple[list[list[int]], Engine, list]:
    """A 100-token root forked into 4 agents; two of them fork 3 more each after their own turn (forks of
    forks); all 10 decode together, in an engine whose cache holds `pages` pages."""
    config = KimiLinearConfig.from_pretrained(checkpoint)
    layout = CacheLayout.for_config(config, torch.float32, PAGE)
    engine = Engine.from_pretrained(checkpoint, max_sessions=16, page_size=PAGE, expand_shared_prefix=expand,
                                    memory=17 * layout.slot_bytes + (pages + 1) * layout.page_bytes)
    assert engine.cache.num_pages == pages
    engine.runner.prefixes.min_tokens, engine.runner.prefixes.min_sharers = PAGE, 4
    rng = random.Random(9)
    root = await engine.session([rng.randrange(3, 256) for _ in range(100)])
    agents = root.fork(4)
    for agent in agents:
        await agent.extend([rng.randrange(3, 256) for _ in range(20)])
    grandchildren = [*agents[0].fork(3), *agents[1].fork(3)]
    everyone = [*agents, *grandchildren]
    outs = await asyncio.gather(*(a.generate(GREEDY) for a in everyone))
    return [o.token_ids for o in outs], engine, [root, *everyone]


async def test_a_fork_tree_decodes_alike_with_and_without_the_expanded_prefix(checkpoint):
    absorbed, engine_a, sessions_a = await run_fork_tree(checkpoint, expand=False)
    expanded, engine_b, sessions_b = await run_fork_tree(checkpoint, expand=True)
    try:
        assert engine_a.runner.prefixes.builds == 0 and engine_b.runner.prefixes.builds >= 1
        assert expanded == absorbed
        assert engine_b.runner.prefixes.current is not None
        for session in sessions_b:
            session.close()
        await engine_b.drain()
        assert engine_b.runner.prefixes.current is None and engine_b.stats()["used_pages"] == 0
    finally:
        for session in sessions_a:
            session.close()
        engine_a.shutdown()
        engine_b.shutdown()


async def test_a_session_waiting_for_pages_gets_the_expanded_prefixs_pages(checkpoint):
    """The decompressed prefix is memory on loan: Engine.stats shows it apart from used pages, and a prompt that
    needs more pages than are free takes them back instead of waiting for ever."""
    _, engine, sessions = await run_fork_tree(checkpoint, expand=True, pages=100)
    try:
        prefixes, stats = engine.runner.prefixes, engine.stats()
        assert prefixes.current is not None and stats["expanded_prefix_pages"] == len(prefixes.current.reserved) > 0
        assert stats["used_pages"] == engine.cache.used_pages - stats["expanded_prefix_pages"]
        free = len(engine.cache.free_pages)
        assert free + stats["expanded_prefix_pages"] > free + 4
        big = await asyncio.wait_for(engine.session([7] * ((free + 4) * PAGE)), 60)
        assert prefixes.current is None and engine.stats()["expanded_prefix_pages"] == 0
        big.close()
    finally:
        for session in sessions:
            session.close()
        engine.shutdown()
