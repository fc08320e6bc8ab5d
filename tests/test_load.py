"""Load under faults: 100 sub-agents that want 1,800 tool calls share a budget of 1,500, against a loopback
OpenAI-compatible server that fails 10% of requests with 500, resets 5% mid-stream and throttles in 429 bursts."""

from __future__ import annotations

import gc
import hashlib
import json
import random
import time
import tracemalloc
from collections import Counter as Tally
from typing import Any

import pytest
from fake_openai import Counter, FakeCut, FakeError, FakeOpenAI, FakeReply, Script, counting_lookup, swarm_script

from kimi_swarm import Swarm
from kimi_swarm.backend.chat.openai_backend import OpenAIBackend

SEED = 1500
AGENTS = 100
CALLS_PER_TURN = 3
WANTED = 18
"""Calls each agent wants (six turns of three): 1,800 in all, 300 more than the budget."""
BUDGET = 1500
DEADLINE = 60.0
BURSTS = ((100, 140), (300, 340), (500, 540))
"""Stretches of the request count answered 429 with Retry-After: 0.05, every request in them."""
MEMORY_BOUND = 25_000_000


class FaultPlan:
    """The model behind a faulty server. A request's fault is a pure function of the seed, its messages and how
    often that exact request came before, so a rerun injects the same faults into the same requests whatever
    order they arrive in; the bursts hit fixed stretches of the request count."""

    def __init__(self, script: Script, seed: int) -> None:
        self.script = script
        self.seed = seed
        self.requests = 0
        self.seen: Tally[str] = Tally()

    def __call__(self, request: dict[str, Any]) -> Any:
        self.requests += 1
        if any(start < self.requests <= end for start, end in BURSTS):
            return FakeError(429, retry_after="0.05")
        key = hashlib.sha1(json.dumps(request["messages"]).encode()).hexdigest()
        self.seen[key] += 1
        dice = random.Random(f"{self.seed}:{key}:{self.seen[key]}")
        reply = self.script(request)
        roll = dice.random()
        if roll < 0.10:
            return FakeError(500, message="injected failure")
        if roll < 0.15:
            return FakeCut(reply, dice.uniform(0.2, 0.8), "reset")
        return reply


def subagent(request: dict[str, Any], task: str, results: list[str]) -> FakeReply:
    if len(results) >= WANTED or any(r.startswith("Not executed") for r in results):
        return FakeReply(content=f"{task}: {len(results)} results.")
    return FakeReply(tool_calls=[("lookup", {"query": f"{task} #{len(results) + i}"}) for i in range(CALLS_PER_TURN)])


@pytest.mark.timeout(90)
async def test_100_agents_under_faults_finish_within_the_deadline_on_exactly_the_budget_in_bounded_memory():
    """100 agents, each wanting 18 lookups (3 per turn), share max_tool_calls=1500 over a streamed backend whose
    server answers 10% of requests 500, resets 5% mid-stream and answers three bursts of 40 requests 429
    (all seeded). Expected: every fault is retried (backoff 10 ms, Retry-After honoured) and no agent fails;
    exactly 1,500 calls execute; the run ends well within its 60 s deadline, stopped by the budget; every
    agent's answer arrives whole and reaches the orchestrator; every successful reply is booked once.

    Memory: Python allocations (tracemalloc, the in-process server included) peak under 25 MB. The run keeps
    what it reports: 101 transcripts, 1,500 tool-call records and ~6,200 trace events, 11 MB measured once it
    is done; in flight at once are at most 128 requests of a few KB, sent and parsed: the peak measured 16 MB.
    The bound is about 1.5 times that: memory that grows with the ~900 attempts fails it (keeping every
    request's parsed body, as `keep_bodies` does, peaks at 33 MB)."""
    counter = Counter()
    tasks = [f"Find fact {i:03d}" for i in range(AGENTS)]
    plan = FaultPlan(swarm_script([tasks], subagent), SEED)
    with FakeOpenAI(plan) as server:
        backend = OpenAIBackend(server.base_url, "fake-model", stream=True, backoff_base=0.01, timeout=10)
        swarm = Swarm(backend, [counting_lookup(counter)], max_tool_calls=BUDGET, deadline=DEADLINE)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            started = time.perf_counter()
            result = await swarm.run("Collect 100 facts.")
            elapsed = time.perf_counter() - started
            peak = tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
            await backend.aclose()

    assert elapsed < DEADLINE / 2 and result.stop_reason == "budget"
    assert counter.calls == result.usage.tool_calls == BUDGET
    assert sum(a.executed_tool_calls for a in result.agents) == BUDGET
    assert len(result.agents) == AGENTS and {a.status for a in result.agents} <= {"done", "budget"}
    assert all(a.result == f"{a.task}: {len(a.tool_calls)} results." for a in result.agents)
    assert sum(a.executed_tool_calls < len(a.tool_calls) for a in result.agents) > 0, "some agents were refused"
    assert result.status == "done" and result.answer == "Final answer."
    spawn_answer = result.orchestrator.transcript[3].content
    assert all(f"Result: {a.result}" in spawn_answer for a in result.agents)

    failures = server.statuses.count(500)
    resets = server.faults.count("reset")
    attempts = server.requests
    throttled = sum(end - start for start, end in BURSTS)
    assert server.statuses.count(429) == throttled
    assert 0.06 < failures / attempts < 0.14 and 0.02 < resets / attempts < 0.08
    assert result.usage.model_calls == server.statuses.count(200) == attempts - throttled - failures - resets
    assert peak < MEMORY_BOUND, f"peak {peak / 1e6:.1f} MB"
