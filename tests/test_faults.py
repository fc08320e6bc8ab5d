"""Fault injection on loopback: a model server that resets, cuts, stalls, fails and throttles; tools that raise,
hang and flood; Chromium killed mid-browse. Each test names the behaviour it expects and asserts it."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import re
import signal
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from fake_openai import FakeCut, FakeError, FakeOpenAI, FakeReply, FakeStall, subagent_task, swarm_script
from tools_support import LoopbackSite, respond

from kimi_swarm import Swarm, TransientToolError, tool
from kimi_swarm.backend.chat.conversation import ReplyOptions
from kimi_swarm.backend.chat.messages import Message
from kimi_swarm.backend.chat.openai_backend import OpenAIBackend
from kimi_swarm.events import ToolCallFinished
from kimi_swarm.tools import ToolError, Web, WebConfig

USER = [Message(role="user", content="hello")]
WHOLE = FakeReply(content="The whole answer: the 07:45 ferry leaves from pier 3 [http://harbour.test/ferries].",
                  tool_calls=[("lookup", {"query": "ferry timetable for the winter season"})])


def tool_results(request: dict) -> list[str]:
    return [m.get("content") or "" for m in request["messages"] if m["role"] == "tool"]


async def run(server: FakeOpenAI, tools=(), *, task: str = "Research it.", backend_options: dict | None = None,
              **limits):
    backend = OpenAIBackend(server.base_url, "fake-model", **(backend_options or {}))
    try:
        return await Swarm(backend, tools, **limits).run(task)
    finally:
        await backend.aclose()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("how", ["reset", "close", "end", "stall", "hang", "500"])
async def test_a_reply_broken_mid_stream_is_retried_and_arrives_whole(how):
    """A streamed reply that breaks (a TCP reset mid-body, a close short of its length, a stream that ends cleanly
    before `data: [DONE]`, a stall past the read timeout mid-body or before any byte, an HTTP 500) is retried with
    backoff, and the agent gets the whole reply, never the half that came: content and tool calls intact."""
    faults: dict[str, FakeCut | FakeStall | FakeError] = {
        "reset": FakeCut(WHOLE, 0.5, "reset"), "close": FakeCut(WHOLE, 0.5, "close"), "end": FakeCut(WHOLE, 0.6, "end"),
        "stall": FakeCut(WHOLE, 0.5, "stall", stall=5), "hang": FakeStall(5), "500": FakeError(500, message="boom"),
    }

    def script(request):
        return faults[how] if server.requests == 1 else WHOLE

    with FakeOpenAI(script) as server:
        backend = OpenAIBackend(server.base_url, "m", stream=True, timeout=0.3, backoff_base=0.01)
        conversation = await backend.open(USER, [])
        started = time.perf_counter()
        reply = await conversation.reply(ReplyOptions())
        elapsed = time.perf_counter() - started
        await backend.aclose()

    assert reply.content == WHOLE.content and reply.finish_reason == "tool_calls"
    assert [(c.name, json.loads(c.arguments)) for c in reply.tool_calls] == [
        ("lookup", {"query": "ferry timetable for the winter season"})]
    assert server.requests == 2 and server.statuses == ([500, 200] if how == "500" else [200])
    assert conversation.messages[-1].content == WHOLE.content
    if how in ("stall", "hang"):
        assert 0.3 <= elapsed < 2, "the stalled attempt is abandoned at the read timeout"
    else:
        assert elapsed < 1


@pytest.mark.timeout(20)
async def test_500s_back_off_exponentially_and_leave_the_concurrency_limit_alone():
    """Three 500s in a row: each retry waits longer (exponential backoff from backoff_base, with jitter in
    [0.5, 1]), the fourth attempt succeeds, and a 500 is not an overload: the concurrency limit stays whole."""
    arrivals: list[float] = []

    def script(request):
        arrivals.append(time.perf_counter())
        return FakeError(500, message="generation failed") if len(arrivals) <= 3 else FakeReply(content="fine")

    with FakeOpenAI(script) as server:
        backend = OpenAIBackend(server.base_url, "m", max_concurrency=16, backoff_base=0.1)
        reply = await (await backend.open(USER, [])).reply(ReplyOptions())
        await backend.aclose()

    assert reply.content == "fine" and server.statuses == [500, 500, 500, 200]
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:])]
    for attempt, gap in enumerate(gaps):
        assert 0.1 * 2 ** attempt * 0.5 - 0.01 <= gap <= 0.1 * 2 ** attempt + 0.15
    limiter = backend.servers[0].limiter
    assert limiter.overloads == 0 and limiter.limit == 16


@pytest.mark.timeout(30)
async def test_a_429_storm_is_waited_out_honouring_retry_after():
    """For its first 0.6 s the server answers every request 429 with Retry-After: 0.2. No request comes back
    sooner than 0.2 s after its 429, the concurrency limit halves, and all 20 sub-agents still finish: the storm
    slows the run, it loses nothing."""
    inner = swarm_script([[f"task {i}" for i in range(20)]],
                         lambda request, task, results: FakeReply(content=f"{task} is done."))
    history: dict[str, list[tuple[float, int]]] = {}
    storm: list[float] = []

    def script(request):
        now = time.perf_counter()
        storm.append(now)
        key = hashlib.sha1(json.dumps(request["messages"]).encode()).hexdigest()
        outcome = FakeError(429, retry_after="0.2") if now < storm[0] + 0.6 else inner(request)
        history.setdefault(key, []).append((now, outcome.status if isinstance(outcome, FakeError) else 200))
        return outcome

    with FakeOpenAI(script) as server:
        backend = OpenAIBackend(server.base_url, "m", max_concurrency=32)
        result = await Swarm(backend, []).run("Weather the storm.")
        await backend.aclose()

    assert result.status == "done" and not result.partial and result.answer == "Final answer."
    assert sorted(a.result for a in result.agents) == sorted(f"task {i} is done." for i in range(20))
    assert server.statuses.count(429) >= 2
    waits = [later[0] - earlier[0] for attempts in history.values()
             for earlier, later in zip(attempts, attempts[1:]) if earlier[1] == 429]
    assert waits and min(waits) >= 0.19
    limiter = backend.servers[0].limiter
    assert limiter.overloads == server.statuses.count(429) and limiter.limit < 32


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("fault", "reason"), [
    (FakeError(500, message="CUDA out of memory"), r"HTTP 500: .*CUDA out of memory"),
    (FakeError(429, retry_after="0.01"), "still overloaded after 2 retries"),
    (FakeStall(10), "ReadTimeout"),
    (FakeCut(FakeReply(content="half an answer, then nothing"), 0.5, "reset"), "ReadError"),
    (FakeCut(FakeReply(content="half an answer, then nothing"), 0.6, "end"), r"ended before data: \[DONE\]"),
], ids=["500", "429-storm", "stall", "reset", "end-before-done"])
async def test_a_fault_that_outlasts_the_retries_fails_that_agent_with_the_reason(fault, reason):
    """When every attempt of one sub-agent's request fails (3 attempts: max_retries=2), that agent ends `failed`
    with the reason; the other agents finish, the orchestrator still answers, and the run says it is partial
    because an agent failed. Nothing waits longer than the retries allow."""
    inner = swarm_script([["doomed", "fine one", "fine two"]],
                         lambda request, task, results: FakeReply(content=f"{task}: answered."))

    def script(request):
        return fault if subagent_task(request) == "doomed" else inner(request)

    with FakeOpenAI(script) as server:
        started = time.perf_counter()
        result = await run(server, backend_options=dict(stream=True, max_retries=2, timeout=0.3, backoff_base=0.01))
        elapsed = time.perf_counter() - started

    doomed, *fine = result.agents
    assert doomed.status == "failed" and doomed.error is not None
    assert doomed.error.startswith("BackendError: ") and re.search(reason, doomed.error)
    assert [(a.status, a.result) for a in fine] == [("done", "fine one: answered."), ("done", "fine two: answered.")]
    assert result.status == "done" and result.answer == "Final answer."
    assert result.partial and result.stop_reason == "failed"
    assert "Agent 1 (failed) task: doomed" in result.orchestrator.transcript[3].content
    assert len(server.faults) + server.statuses.count(429) + server.statuses.count(500) == 3
    assert elapsed < 3


@pytest.mark.timeout(20)
async def test_an_orchestrator_whose_server_stalls_returns_a_partial_result_with_the_reason():
    """A model server that never answers: each attempt is abandoned at the client timeout (0.3 s), and after
    its one retry the orchestrator fails; the run returns at once, partial, its answer saying why."""
    with FakeOpenAI(lambda request: FakeStall(30)) as server:
        started = time.perf_counter()
        result = await run(server, backend_options=dict(max_retries=1, timeout=0.3, backoff_base=0.01))
        elapsed = time.perf_counter() - started

    assert server.faults == ["hang", "hang"]
    assert 0.6 <= elapsed < 2
    assert result.status == "failed" and result.partial and result.stop_reason == "failed"
    assert result.answer.startswith("Partial result (failed): the orchestrator did not finish.")
    assert "ReadTimeout" in result.answer and result.usage.model_calls == 0


@pytest.mark.timeout(20)
async def test_a_tool_that_raises_gives_the_agent_an_error_it_can_act_on():
    """A tool's exception becomes the tool result "Error from <tool>: <type>: <message>" (every executed call
    counts against the budget, failed or not); the model reads it, corrects its call and answers. A transient
    failure (TransientToolError) is retried with backoff and its third attempt succeeds."""
    flaky_attempts = 0

    @tool
    async def row(number: int) -> str:
        """Reads one row of the timetable.

        Args:
            number: The row, from 1.
        """
        if number > 5:
            raise ValueError(f"the timetable has rows 1 to 5, not {number}")
        return f"Row {number}: the 07:45 ferry leaves from pier 3."

    @tool
    async def flaky() -> str:
        """Reads the harbour's notice board."""
        nonlocal flaky_attempts
        flaky_attempts += 1
        if flaky_attempts < 3:
            raise TransientToolError("the notice board is busy")
        return "No delays today."

    def script(request):
        results = tool_results(request)
        if not results:
            return FakeReply(tool_calls=[("row", {"number": 7}), ("flaky", {})])
        if len(results) == 2:
            assert results[0] == "Error from row: ValueError: the timetable has rows 1 to 5, not 7"
            return FakeReply(tool_calls=[("row", {"number": 5})])
        return FakeReply(content=f"{results[-1]} {results[1]}")

    with FakeOpenAI(script) as server:
        result = await run(server, [row, flaky])

    assert result.status == "done" and not result.partial
    assert result.answer == "Row 5: the 07:45 ferry leaves from pier 3. No delays today."
    calls = result.orchestrator.tool_calls
    assert [(c.tool, c.ok, c.attempts) for c in calls] == [("row", False, 1), ("flaky", True, 3), ("row", True, 1)]
    assert calls[1].seconds >= 0.2 + 0.4 - 0.05, "two backoffs: 0.2 s, then 0.4 s"
    assert result.usage.tool_calls == 3


@pytest.mark.timeout(20)
async def test_a_hanging_tool_times_out_and_the_agent_goes_on():
    """A tool that never returns (an async one awaiting forever, a sync one blocked in its worker thread) is
    abandoned at the tool timeout: a timeout is transient, so it is retried once (tool_retries=1) and then the
    agent gets "timed out after 0.3 s" and answers. The run is not held up by the blocked thread."""
    released = threading.Event()

    @tool
    async def stuck(query: str) -> str:
        """Asks a service that never answers.

        Args:
            query: The question.
        """
        await asyncio.Event().wait()
        return "never"

    @tool(retries=0)
    def frozen(query: str) -> str:
        """Reads a file on a hung network share.

        Args:
            query: The file.
        """
        released.wait(30)
        return "too late"

    def script(request):
        results = tool_results(request)
        if not results:
            return FakeReply(tool_calls=[("stuck", {"query": "a"}), ("frozen", {"query": "b"})])
        return FakeReply(content=" | ".join(results))

    try:
        with FakeOpenAI(script) as server:
            started = time.perf_counter()
            result = await run(server, [stuck, frozen], tool_timeout=0.3, tool_retries=1)
            elapsed = time.perf_counter() - started
    finally:
        released.set()

    assert result.status == "done" and result.answer == (
        "Error from stuck (after 2 attempts): timed out after 0.3 s | Error from frozen: timed out after 0.3 s")
    assert [(c.tool, c.ok, c.attempts) for c in result.orchestrator.tool_calls] == [
        ("stuck", False, 2), ("frozen", False, 1)]
    assert elapsed < 2, "two 0.3 s attempts and one 0.2 s backoff, side by side with the frozen call"
    assert result.usage.tool_calls == 2


@pytest.mark.timeout(60)
async def test_a_50_mb_tool_result_is_cut_to_the_limit_with_a_marker_and_memory_stays_bounded():
    """A tool that returns 50 MB (and one whose error message is 5 MB): the agent gets the first
    `max_tool_output_chars` characters (default 100,000) and a marker saying how much was cut, and so does every
    later request, record and trace. Memory: the run peaks at the tool's own 50 MB plus less than 20 MB (without
    the bound the 50 MB would be copied into the transcript, every request body, and the server's parse of it),
    and it keeps under 2 MB once done."""
    size = 50_000_004
    limit = 100_000

    @tool
    async def dump() -> str:
        """Exports the whole database."""
        return "row of data;" * (size // 12)

    @tool
    async def shout() -> str:
        """Calls an upstream that fails loudly."""
        raise ToolError("E" * 5_000_000)

    def script(request):
        results = tool_results(request)
        if not results:
            return FakeReply(tool_calls=[("dump", {}), ("shout", {})])
        return FakeReply(content=f"Got {len(results[0])} and {len(results[1])} characters.")

    with FakeOpenAI(script) as server:
        server.keep_bodies = True
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            result = await run(server, [dump, shout])
            gc.collect()  # the raised error and its traceback form a cycle: only the collector frees them
            kept, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()

    dumped, shouted = result.orchestrator.tool_calls
    assert dumped.ok and dumped.output == "row of data;" * (limit // 12) + "row " + (
        "\n[truncated: the tool returned 50,000,004 characters; the last 49,900,004 were cut (limit: 100,000)]")
    assert not shouted.ok and shouted.output.startswith("Error from shout: ToolError: EEEE")
    assert shouted.output.endswith(f"were cut (limit: {limit:,})]") and len(shouted.output) < limit + 200
    assert result.status == "done" and result.answer == f"Got {len(dumped.output)} and {len(shouted.output)} characters."
    assert max(len(json.dumps(body)) for body in server.bodies) < 3 * limit
    assert peak - before < size + 20_000_000
    assert kept - before < 2_000_000


def browser_processes() -> list[int]:
    """The Chromium browser processes (not their helpers, which carry --type=) under this test process."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found = []
    for pid in parents:
        ancestor = parents.get(pid)
        while ancestor and ancestor != os.getpid():
            ancestor = parents.get(ancestor)
        if ancestor != os.getpid():
            continue
        try:
            arguments = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if arguments[0].endswith("chromium") and not any(a.startswith("--type=") for a in arguments):
            found.append(pid)
    return found


@pytest.mark.timeout(60)
async def test_chromium_killed_mid_browse_is_an_error_result_and_the_next_browse_works(tmp_path):
    """Chromium is SIGKILLed while a browse is waiting for its page: that call ends within a second of the kill
    (not at the page's 5 s or the 10 s browse timeout) with an error result that says the browser ended and to
    browse again; the agent does, a new browser starts, the page is read, and no browser context is left open."""
    arrived = threading.Event()
    hits = 0

    def timetable(request: BaseHTTPRequestHandler) -> None:
        nonlocal hits
        hits += 1
        if hits == 1:
            arrived.set()
            time.sleep(5)
        respond(request, "<html><head><title>Timetable</title></head><body><article><p>"
                + "The 07:45 ferry to Ushant leaves from pier 3 every weekday. " * 4 + "</p></article></body></html>")

    def script(request):
        results = tool_results(request)
        if not results or (len(results) == 1 and "browse again" in results[0]):
            return FakeReply(tool_calls=[("browse", {"url": site.url("/timetable")})])
        found = "The 07:45 ferry to Ushant leaves from pier 3" in results[-1]
        return FakeReply(content=f"The 07:45 ferry leaves from pier 3 [{site.url('/timetable')}]." if found
                         else "The timetable could not be read.")

    killed: list[int] = []
    killed_at: list[float] = []

    async def kill_chromium_mid_browse() -> None:
        if await asyncio.to_thread(arrived.wait, 20):
            killed.extend(browser_processes())
            killed_at.append(time.perf_counter())
            for pid in killed:
                os.kill(pid, signal.SIGKILL)

    with LoopbackSite({"/timetable": timetable}) as site, FakeOpenAI(script) as server:
        config = WebConfig(allowed_hosts=[site.host], per_host_rate=1000, browser_timeout_s=10,
                           screenshot_dir=tmp_path)
        async with Web(config) as web:
            killer = asyncio.create_task(kill_chromium_mid_browse())
            run_started = time.perf_counter()
            result = await run(server, [web.browse], task="When does the ferry leave?")
            await killer
            assert web.browser.open_contexts == 0

    assert len(killed) == 1 and killed[0] not in browser_processes()
    first, second = result.orchestrator.tool_calls
    assert not first.ok
    assert first.output.startswith(f"Error from browse: ToolError: The browser failed on {site.url('/timetable')}")
    assert first.output.endswith("(the browser process ended; browse again and a new browser starts)")
    first_finished = next(e.t for e in result.trace if isinstance(e, ToolCallFinished))
    assert first_finished - (killed_at[0] - run_started) < 1.0
    assert second.ok and "The 07:45 ferry to Ushant leaves from pier 3" in second.output
    assert result.status == "done" and result.answer.startswith("The 07:45 ferry leaves from pier 3") and hits == 2


@pytest.mark.timeout(30)
@pytest.mark.parametrize("bad_chunk", ['{"choices": [{"delta": {"content": "half', '{"error": {"message": "CUDA error", "code": 500}}'])
async def test_a_stream_that_breaks_inside_a_chunk_or_reports_an_error_in_band_is_retried(bad_chunk):
    """A chunk cut mid-JSON, or an in-band error event followed by [DONE] (what vLLM sends when a generation fails
    mid-stream), is a failed attempt: retried, never taken as the reply."""
    body = f'data: {{"choices": [{{"delta": {{"content": "The first "}}}}]}}\n\ndata: {bad_chunk}\n\ndata: [DONE]\n\n'
    attempts: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        attempts.append(1)
        first = len(attempts) == 1
        text = body if first else 'data: {"choices": [{"delta": {"content": "whole"}, "finish_reason": "stop"}]}\n\n' \
            'data: [DONE]\n\n'
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n" + text.encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    backend = OpenAIBackend([f"http://127.0.0.1:{port}/v1"], "m", stream=True, backoff_base=0.01)
    try:
        conversation = await backend.open([Message(role="user", content="hi")], [])
        reply = await conversation.reply(ReplyOptions())
    finally:
        await backend.aclose()
        server.close()
    assert reply.content == "whole" and len(attempts) == 2
