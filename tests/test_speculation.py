"""Speculative greedy decoding from prompt-lookup drafts: the drafts, and an engine whose output and
later state are exactly those of plain greedy decoding, whatever part of a draft the model keeps."""

from __future__ import annotations

import random
from array import array

import pytest
from model_support import write_chat_checkpoint

from kimi_swarm.backend import Engine, SamplingParams
from kimi_swarm.backend.engine import engine as engine_module
from kimi_swarm.backend.engine.speculation import lookup_draft

PAGE = 16


def test_draft_follows_the_latest_occurrence_of_the_longest_ending():
    history = [1, 2, 3, 4, 5, 6, 7, 9, 9, 1, 2, 3, 4, 5, 6, 8, 0, 3, 4, 5, 6]
    # the ending 3 4 5 6 occurs twice and the longer ending 0 3 4 5 6 never: the latest occurrence wins
    assert lookup_draft(history, 3) == [8, 0, 3]
    assert lookup_draft([7, 1, 2, 3, 4, 5, 9, 9, 9, 0, 2, 3, 4, 5, 1, 2, 3, 4, 5], 2) == [9, 9]
    assert lookup_draft(history, 1) == [8]
    assert lookup_draft(history, 0) == []


def test_no_draft_without_an_earlier_match_of_the_minimum_length():
    assert lookup_draft([1, 2, 3, 4, 5, 6, 7, 8], 4) == []
    assert lookup_draft([1, 2, 3, 9, 1, 2, 3], 4) == []  # a 3-token match is below the minimum of 4
    assert lookup_draft([5, 5, 5, 5, 5, 5], 3) == [5]  # overlapping occurrences count; the draft stops at the end


def test_draft_matches_whole_token_ids_of_a_large_vocabulary():
    big = [70000, 163840, 256, 70001]
    history = [1, *big, 42, 43, 2, 3, *big]
    assert lookup_draft(history, 2) == [42, 43]
    ending = [0x11223344, 0x55667788, 0x99AABBCC, 0x0D0E0F10]
    straddling = array("I", bytes(2) + array("I", ending).tobytes() + bytes(2)).tolist()
    assert lookup_draft([*straddling, *ending], 1) == []  # its bytes recur, but across id boundaries
    assert lookup_draft([*ending, 9, *straddling, *ending], 1) == [9]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_chat_checkpoint(tmp_path_factory.mktemp("speculation-ckpt"), layers="KMKKM", seed=3)


def engine_for(checkpoint, speculative_tokens: int) -> Engine:
    return Engine.from_pretrained(checkpoint, max_sessions=8, memory=64 << 20, page_size=PAGE, prefill_chunk=48,
                                  speculative_tokens=speculative_tokens)


async def greedy_run(engine: Engine, prompt: list[int], params: SamplingParams, more: list[int]):
    """Generate, then fork the session and let each fork extend and generate: what they generate shows that
    the state and the pages (private to each fork once written) are right."""
    session = await engine.session(prompt)
    first = await session.generate(params)
    forks = session.fork(2)
    then = SamplingParams(max_tokens=10, stop_token_ids=[])
    later = []
    for fork, extra in zip(forks, (more, more[::-1])):
        await fork.extend(extra)
        later.append(await fork.generate(then))
    for s in (session, *forks):
        s.close()
    await engine.drain()
    assert (engine.stats()["used_slots"], engine.stats()["used_pages"]) == (0, 0)
    return first, *later


@pytest.mark.parametrize("stop_at", [None, 17])
async def test_kept_drafts_give_exactly_the_plain_greedy_output_and_state(checkpoint, monkeypatch, stop_at):
    """Drafts are the true continuation with one token spoiled at a moving place, so the engine keeps
    none, some or all of them; with a stop token inside a draft, it stops there as plain decoding does."""
    rng = random.Random(5)
    prompt = [rng.randrange(0, 256) for _ in range(2 * PAGE + 3)]  # ends inside a page
    more = [rng.randrange(0, 256) for _ in range(PAGE + 2)]
    plain_engine = engine_for(checkpoint, 0)
    free_run, *_ = await greedy_run(plain_engine, prompt, SamplingParams(max_tokens=48, stop_token_ids=[]), more)
    stop_ids = [] if stop_at is None else [free_run.token_ids[stop_at]]
    params = SamplingParams(max_tokens=48, stop_token_ids=stop_ids)
    want = await greedy_run(plain_engine, prompt, params, more)
    plain_engine.shutdown()

    calls = []
    pending = []

    def oracle_draft(history: list[int], max_draft: int) -> list[int]:
        # a step that kept less than it fed has handed back the pages it no longer needs; the kept tokens
        # wait, uncached, for this step's forward
        if engine.stats()["used_slots"] == 1:
            seq = engine.scheduler.decoding[0].seq
            assert engine.stats()["used_pages"] == engine.cache.pages_for(seq.num_cached)
            pending.append(seq.num_pending)
        done = len(history) - len(prompt)
        draft = list(free_run.token_ids[done:done + max_draft])
        spoil = len(calls) % (max_draft + 2)
        if spoil < len(draft):
            draft[spoil] = (draft[spoil] + 1) % 256
        calls.append((done, len(draft)))
        return draft if done < len(free_run.token_ids) else []

    monkeypatch.setattr(engine_module, "lookup_draft", oracle_draft)
    engine = engine_for(checkpoint, 6)
    got = await greedy_run(engine, prompt, params, more)
    steps = list(engine.speculative_steps)
    engine.shutdown()
    assert [out.token_ids for out in got] == [out.token_ids for out in want]
    assert [out.finish_reason for out in got] == [out.finish_reason for out in want]
    kept = {k for _, k, _ in steps}
    assert 1 in kept and len(kept) > 3, steps
    assert stop_at is not None or any(k == d + 1 for d, k, _ in steps), steps  # whole drafts kept too
    assert sum(k for _, k, _ in steps) >= len(want[0].token_ids) - 1  # all but a last lone token
    assert max(pending) > 1  # partly kept drafts were run by the next forward, not by one of their own


async def test_engine_rejects_a_negative_draft_length(checkpoint):
    with pytest.raises(ValueError, match="speculative_tokens"):
        engine_for(checkpoint, -1)
