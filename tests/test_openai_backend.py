"""OpenAIBackend against the loopback fake server: retries, Retry-After, AIMD, streaming, several servers."""

from __future__ import annotations

import asyncio
import time

import pytest
from fake_openai import Counter, FakeError, FakeOpenAI, FakeReply, counting_lookup, swarm_script

from kimi_swarm import Swarm
from kimi_swarm.backend.chat.conversation import ReplyOptions
from kimi_swarm.backend.chat.messages import Message, ToolSpec
from kimi_swarm.backend.chat.openai_backend import BackendError, OpenAIBackend, _retry_after_seconds

USER = [Message(role="user", content="hello")]


async def test_429_waits_for_retry_after_and_halves_the_concurrency_limit():
    def script(request):
        return FakeError(429, retry_after="0.3") if server.requests <= 3 else FakeReply(content="finally")

    with FakeOpenAI(script) as server:
        backend = OpenAIBackend(server.base_url, "m", max_concurrency=16)
        conversation = await backend.open(USER, [])
        started = time.perf_counter()
        reply = await conversation.reply(ReplyOptions())
        elapsed = time.perf_counter() - started
        await backend.aclose()

    assert reply.content == "finally" and server.statuses == [429, 429, 429, 200]
    assert elapsed >= 0.9
    limiter = backend.servers[0].limiter
    assert limiter.overloads == 3 and 2 <= limiter.limit < 3


async def test_503_without_retry_after_backs_off_and_client_errors_fail_at_once():
    def flaky(request):
        return FakeError(503) if server.requests == 1 else FakeReply(content="up again")

    with FakeOpenAI(flaky) as server:
        backend = OpenAIBackend(server.base_url, "m", backoff_base=0.05)
        reply = await (await backend.open(USER, [])).reply(ReplyOptions())
        await backend.aclose()
    assert reply.content == "up again" and server.statuses == [503, 200]

    with FakeOpenAI(lambda request: FakeError(400, message="context too long")) as server:
        backend = OpenAIBackend(server.base_url, "m")
        with pytest.raises(BackendError, match="HTTP 400.*context too long"):
            await (await backend.open(USER, [])).reply(ReplyOptions())
        await backend.aclose()
    assert server.requests == 1

    with FakeOpenAI(lambda request: FakeError(429, retry_after="0")) as server:
        backend = OpenAIBackend(server.base_url, "m", max_retries=2)
        with pytest.raises(BackendError, match="still overloaded after 2 retries"):
            await (await backend.open(USER, [])).reply(ReplyOptions())
        await backend.aclose()
    assert server.requests == 3


def test_retry_after_accepts_seconds_and_http_dates():
    assert _retry_after_seconds("2.5", 60) == 2.5
    assert _retry_after_seconds("600", 60) == 60
    assert _retry_after_seconds(None, 60) is None
    assert _retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", 60) == 0.0
    assert _retry_after_seconds("soon", 60) is None


async def test_streaming_reassembles_content_tool_calls_and_usage():
    reply_script = FakeReply(content="Let me look that up for you.",
                             tool_calls=[("search", {"query": "kimi linear"}), ("fetch", {"url": "http://a.test/x"})],
                             prompt_tokens=42, completion_tokens=17)
    with FakeOpenAI(lambda request: reply_script) as server:
        server.keep_bodies = True
        backend = OpenAIBackend(server.base_url, "m", stream=True)
        tools = [ToolSpec(name="search"), ToolSpec(name="fetch")]
        conversation = await backend.open(USER, tools)
        reply = await conversation.reply(ReplyOptions(max_tokens=64, seed=7))
        await backend.aclose()

    assert server.bodies[0]["stream"] is True and server.bodies[0]["seed"] == 7
    assert [t["function"]["name"] for t in server.bodies[0]["tools"]] == ["search", "fetch"]
    assert reply.content == "Let me look that up for you."
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [
        ("search", '{"query": "kimi linear"}'), ("fetch", '{"url": "http://a.test/x"}')]
    assert reply.finish_reason == "tool_calls" and (reply.prompt_tokens, reply.completion_tokens) == (42, 17)
    assert conversation.messages[-1].tool_calls == reply.tool_calls


async def test_each_run_stays_on_one_server_and_runs_spread_across_servers():
    script = swarm_script([["a", "b", "c"]], lambda request, task, results: FakeReply(content=f"did {task}"))
    with FakeOpenAI(script) as first, FakeOpenAI(script) as second:
        backend = OpenAIBackend([first.base_url, second.base_url], "m")
        swarm = Swarm(backend, [])
        one, two = await asyncio.gather(swarm.run("run one"), swarm.run("run two"))
        await backend.aclose()

    assert one.answer == two.answer == "Final answer."
    # Each run: 2 orchestrator turns + 3 sub-agent turns, all on the server its orchestrator opened on.
    assert first.requests == second.requests == 5


async def test_a_429_storm_slows_the_swarm_down_but_does_not_fail_it():
    counter = Counter()
    capacity = 6

    def subagent(request, task, results):
        if len(results) < 2:
            return FakeReply(tool_calls=[("lookup", {"query": f"{task} {len(results)}"})])
        return FakeReply(content="done")

    inner = swarm_script([[f"task {i}" for i in range(30)]], subagent)

    def overloaded(request):
        return FakeError(429, retry_after="0.05") if server.in_flight > capacity else inner(request)

    with FakeOpenAI(overloaded, delay=0.05) as server:
        backend = OpenAIBackend(server.base_url, "m", max_concurrency=64)
        result = await Swarm(backend, [counting_lookup(counter)]).run("Survive the storm.")
        await backend.aclose()

    assert result.status == "done" and not result.partial
    assert {a.status for a in result.agents} == {"done"} and counter.calls == 60
    assert 429 in server.statuses
    limiter = backend.servers[0].limiter
    assert limiter.overloads > 0 and limiter.limit < 64
