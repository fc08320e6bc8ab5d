"""The engine on CPU with a random tiny checkpoint written by transformers: forking, batching,
accounting, admission control, streaming. Greedy results must not depend on batching or forking."""

from __future__ import annotations

import asyncio
import os
import random

import pytest
import torch
from model_support import extend_then_generate, forks_prefilled_with_and_without_sharing, write_chat_checkpoint

from kimi_swarm.backend import Engine, SamplingParams
from kimi_swarm.backend.engine.engine import EngineCrashedError
from kimi_swarm.backend.engine.state_cache import CacheCapacityError, CacheLayout

PAGE = 16
GREEDY = SamplingParams(max_tokens=8, stop_token_ids=[])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_chat_checkpoint(tmp_path_factory.mktemp("engine-ckpt"), layers="KMKKM", seed=3)


@pytest.fixture
def engine(checkpoint):
    engine = Engine.from_pretrained(checkpoint, max_sessions=128, memory=64 << 20, page_size=PAGE,
                                    prefill_chunk=48)
    yield engine
    engine.shutdown()


def random_ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(0, 256) for _ in range(n)]


async def assert_released(engine: Engine) -> None:
    await engine.drain()
    stats = engine.stats()
    assert (stats["used_slots"], stats["used_pages"]) == (0, 0), stats


async def forks_at_once_and_alone(checkpoint, seed: int, lengths: tuple[int, ...],
                                  **options) -> tuple[list, list, list]:
    """Forks of one session extended at once by prompts of `lengths`, then one at a time: (their outputs at once,
    alone, and the (rows, tokens) of every prefill forward while they ran at once)."""
    rng = random.Random(seed)
    prefix = random_ids(rng, PAGE + 3)
    suffixes = [random_ids(rng, n) for n in lengths]
    options = {"prefill_chunk": 256, **options}
    engine = Engine.from_pretrained(checkpoint, max_sessions=16, memory=64 << 20, page_size=PAGE, **options)
    try:
        parent = await engine.session(prefix)
        widths = []
        prefill = engine.runner.prefill
        engine.runner.prefill = lambda seqs, n: (widths.append((len(seqs), n)), prefill(seqs, n))[1]
        children = parent.fork(len(suffixes))
        together = await asyncio.gather(*(extend_then_generate(c, s, GREEDY) for c, s in zip(children, suffixes)))
        engine.runner.prefill = prefill
        alone = []
        for suffix in suffixes:
            (child,) = parent.fork(1)
            children.append(child)
            alone.append(await extend_then_generate(child, suffix, GREEDY))
        for session in (parent, *children):
            session.close()
        await assert_released(engine)
    finally:
        engine.shutdown()
    return [out.token_ids for out in together], [out.token_ids for out in alone], widths


async def test_forks_with_prompts_of_similar_length_prefill_together(checkpoint):
    """Six forks extended at once by 30-36 tokens share forwards (n shrinks to what every member has left);
    each still generates what it generates alone."""
    together, alone, widths = await forks_at_once_and_alone(checkpoint, 4, (36, 33, 30, 35, 31, 34))
    assert together == alone
    assert widths[0] == (6, 30), widths  # all six together for the 30 tokens each has (one pending token each)


async def test_a_forward_takes_several_forks_chunks_within_its_token_budget(checkpoint):
    """A chunk of 16 tokens per fork, 64 per forward: four forks' chunks run in each forward, not one."""
    together, alone, widths = await forks_at_once_and_alone(checkpoint, 6, (36, 33, 30, 35, 31, 34),
                                                            prefill_chunk=16, prefill_tokens=64)
    assert together == alone
    assert widths[0] == (4, 16), widths
    assert all(rows * n <= 64 and n <= 16 for rows, n in widths)


async def test_forks_with_long_prompts_prefill_one_by_one_past_the_batched_width(checkpoint):
    """Past `batched_prefill_width` tokens a row (the CPU default, 64), forks extended at once each take their own
    forwards, and each generates what it generates alone."""
    together, alone, widths = await forks_at_once_and_alone(checkpoint, 5, (70, 66, 75))
    assert together == alone
    assert all(rows == 1 for rows, n in widths if n > 64) and sorted(n for _, n in widths if n > 64) == [66, 70, 75]


async def test_fork_equals_fresh_session(engine):
    rng = random.Random(0)
    prefix = random_ids(rng, 3 * PAGE + 5)  # ends inside a page, so the tail page is copy-on-write
    suffixes = [random_ids(rng, n) for n in (1, 2, 7, PAGE, PAGE + 1, 2 * PAGE + 9)]
    parent = await engine.session(prefix)
    children = parent.fork(len(suffixes))

    forked_out = await asyncio.gather(*(extend_then_generate(c, s, GREEDY) for c, s in zip(children, suffixes)))
    parent_out = await parent.generate(GREEDY)

    async def fresh(ids):
        session = await engine.session(ids)
        try:
            return await session.generate(GREEDY)
        finally:
            session.close()

    for suffix, got in zip(suffixes, forked_out):
        want = await fresh(prefix + suffix)
        assert got.token_ids == want.token_ids, f"suffix of {len(suffix)} tokens"
        assert got.finish_reason == "length" and len(got.token_ids) == GREEDY.max_tokens
    assert parent_out.token_ids == (await fresh(prefix)).token_ids
    for child, suffix, out in zip(children, suffixes, forked_out):
        assert child.token_ids == prefix + suffix + out.token_ids
    for session in [parent, *children]:
        session.close()
    await assert_released(engine)


async def test_batched_equals_one_at_a_time(engine):
    rng = random.Random(1)
    prompts = [random_ids(rng, rng.randrange(1, 40)) for _ in range(16)]
    params = SamplingParams(max_tokens=12, stop_token_ids=[])

    async def run(ids):
        session = await engine.session(ids)
        out = await session.generate(params)
        session.close()
        return out.token_ids

    together = await asyncio.gather(*(run(p) for p in prompts))
    alone = [await run(p) for p in prompts]
    assert together == alone


async def test_sampling_is_seeded_per_request(engine):
    session = await engine.session([5, 6, 7])
    a, b = session.fork(2)
    params = SamplingParams(max_tokens=10, temperature=1.0, top_k=50, top_p=0.9, seed=42, stop_token_ids=[])
    out_a, out_b = await asyncio.gather(a.generate(params), b.generate(params))
    assert out_a.token_ids == out_b.token_ids
    other = await a.generate(params.model_copy(update={"seed": 7}))
    assert len(other.token_ids) == 10
    for s in (session, a, b):
        s.close()


async def test_hundred_sessions_decode_together_and_release_everything(engine):
    root = await engine.session(list(range(40)))
    children = root.fork(100)
    rng = random.Random(2)

    async def run(i, child):
        await child.extend(random_ids(rng, 1 + i % 5))
        return await child.generate(SamplingParams(max_tokens=4, stop_token_ids=[]))

    outs = await asyncio.gather(*(run(i, c) for i, c in enumerate(children)))
    assert all(len(o.token_ids) == 4 for o in outs)
    stats = engine.stats()
    assert stats["used_slots"] == 101
    # the 40-token prefix fills 2 full pages shared by all; each child owns at most 2 private pages
    assert stats["used_pages"] <= 3 + 2 * 100
    for c in children:
        c.close()
    root.close()
    await assert_released(engine)


async def test_a_fork_closed_before_it_gets_a_slot_does_not_pin_its_parent(engine):
    parent = await engine.session(list(range(20)))
    (child,) = parent.fork(1)
    child.close()  # the fork waits in the admission queue: closing it must release the parent
    await asyncio.wait_for(parent.extend([3, 4, 5]), 30)
    out = await asyncio.wait_for(parent.generate(GREEDY), 30)
    assert len(out.token_ids) == 8
    parent.close()
    await assert_released(engine)


async def test_text_prompt_stop_strings_and_stream(engine):
    session = await engine.session("<|im_user|>user<|im_middle|>hello<|im_end|>")
    fork_a, fork_b = session.fork(2)
    params = SamplingParams(max_tokens=20, stop_token_ids=[])
    full = await fork_a.generate(params)
    streamed = "".join([d async for d in fork_b.stream(params)])
    assert streamed == full.text
    if len(full.text) >= 3:
        stop = full.text[1:3]
        third = session.fork(1)[0]
        cut = await third.generate(params.model_copy(update={"stop": [stop]}))
        assert cut.finish_reason == "stop" and cut.text == full.text[:full.text.index(stop)]
        third.close()
    for s in (session, fork_a, fork_b):
        s.close()


async def test_admission_control_waits_for_memory(checkpoint):
    config_engine = Engine.from_pretrained(checkpoint, max_sessions=4, memory=64 << 20, page_size=PAGE)
    layout = CacheLayout.for_config(config_engine.config, torch.float32, PAGE)
    config_engine.shutdown()
    # room for 4 sessions and 6 pages: two 40-token sessions (3 pages each) at a time
    budget = 4 * layout.slot_bytes + 6 * layout.page_bytes
    engine = Engine.from_pretrained(checkpoint, max_sessions=4, memory=budget, page_size=PAGE)
    try:
        with pytest.raises(CacheCapacityError, match="can never fit"):
            await engine.session(list(range(7 * PAGE)))
        peak = 0

        async def run(i):
            nonlocal peak
            session = await engine.session([i] * 39)
            peak = max(peak, engine.stats()["used_pages"])
            out = await session.generate(SamplingParams(max_tokens=1, stop_token_ids=[]))
            await asyncio.sleep(0.05)
            session.close()
            return out

        outs = await asyncio.wait_for(asyncio.gather(*(run(i) for i in range(6))), timeout=60)
        assert len(outs) == 6 and peak <= 6
        await assert_released(engine)
    finally:
        engine.shutdown()


def resident_bytes() -> int:
    """This process's resident memory now (Linux /proc)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def test_a_cpu_budget_of_gigabytes_costs_memory_only_as_sessions_use_it(checkpoint):
    before = resident_bytes()
    engine = Engine.from_pretrained(checkpoint, max_sessions=64, memory=4 << 30, page_size=PAGE)
    try:
        assert engine.stats()["num_pages"] * CacheLayout.for_config(engine.config, torch.float32, PAGE).page_bytes \
            > 3 << 30
        assert resident_bytes() - before < 256 << 20
        assert all(float(pool[-1].abs().sum()) == 0.0 for pool in (*engine.cache.latent, *engine.cache.recurrent))
        session = await engine.session(list(range(1, 3 * PAGE)))
        out = await session.generate(SamplingParams(max_tokens=4, stop_token_ids=[]))
        assert len(out.token_ids) == 4
        session.close()
        await assert_released(engine)
    finally:
        engine.shutdown()


def test_budget_too_small_is_a_clear_error(checkpoint):
    with pytest.raises(CacheCapacityError, match="too small"):
        Engine.from_pretrained(checkpoint, max_sessions=8, memory=1000)


async def test_bad_input_is_named(engine):
    with pytest.raises(ValueError, match="out of range"):
        await engine.session([1, 2, 10_000])
    with pytest.raises(ValueError, match="non-empty"):
        await engine.session([])
    session = await engine.session([1, 2, 3])
    session.close()
    with pytest.raises(RuntimeError, match="closed"):
        await session.generate()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_a_crashed_worker_fails_every_request_instead_of_hanging(engine, monkeypatch):
    session = await engine.session([1, 2, 3])

    def broken_step() -> bool:
        raise RuntimeError("injected worker bug")

    monkeypatch.setattr(engine, "_step", broken_step)
    with pytest.raises(EngineCrashedError, match="injected worker bug"):
        await asyncio.wait_for(session.generate(GREEDY), timeout=30)
    with pytest.raises(EngineCrashedError):
        await engine.session([4, 5])


@pytest.mark.parametrize("expand", [True, False], ids=["expanded", "absorbed"])
def test_paged_prefill_in_either_form_matches_the_dense_absorbed_form(engine, monkeypatch, expand):
    """Prefill chunks attend with decompressed keys (SDPA) or, when that does not pay, in the absorbed form
    over the pages; DenseContext always absorbed. Both chunk forms must give the dense logits."""
    from kimi_swarm.backend.engine.paged_context import PagedContext
    from kimi_swarm.backend.model.context import DenseContext
    from kimi_swarm.backend.model.mla_layer import KimiMLAAttention

    monkeypatch.setattr(KimiMLAAttention, "_expanding_pays", lambda self, queries, device: expand)

    model, cache = engine.model, engine.cache
    ids = torch.tensor([random_ids(random.Random(5), 40)])
    dense = model(ids, DenseContext(model.config, 1))
    slot, pages = cache.alloc_slot(), [cache.alloc_page() for _ in range(cache.pages_for(40))]
    for index, page in enumerate(pages):
        cache.set_table_entry(slot, index, page)
    first = model(ids[:, :24], PagedContext(cache, [slot], [pages[:2]], [0], 24))
    rest = model(ids[:, 24:], PagedContext(cache, [slot], [pages], [24], 16))
    paged = torch.cat([first, rest], dim=1)
    assert torch.allclose(paged, dense, atol=1e-4, rtol=1e-4), (paged - dense).abs().max()


def test_forks_prefilled_together_attend_their_shared_prefix_once_with_the_same_result(engine, monkeypatch):
    """A batch of forks' new tokens attends the shared pages in one call (merged by log-sum-exp with each
    fork's own keys); it must give the logits of prefilling each fork alone."""
    from kimi_swarm.backend.model.mla_layer import KimiMLAAttention

    monkeypatch.setattr(KimiMLAAttention, "_expanding_pays", lambda self, queries, device: True)
    together, alone = forks_prefilled_with_and_without_sharing(engine.model, engine.cache, seed=11)
    assert torch.allclose(together, alone, atol=1e-4, rtol=1e-4), (together - alone).abs().max()


def test_forked_token_histories_share_the_parent_list_and_read_like_copies():
    from kimi_swarm.backend.engine.sequence import TokenHistory

    root = TokenHistory(range(10))
    child = root.fork()
    root.extend([100, 101])
    child.extend([200, 201, 202])
    grandchild = child.fork()
    child.append(203)
    grandchild.append(300)
    assert root.tolist() == [*range(10), 100, 101]
    assert child.tolist() == [*range(10), 200, 201, 202, 203]
    assert grandchild.tolist() == [*range(10), 200, 201, 202, 300]
    assert grandchild[8:12] == [8, 9, 200, 201] and grandchild[-1] == 300 and len(grandchild) == 14
    assert child[9] == 9 and child[10] == 200
    with pytest.raises(IndexError):
        child[14]
