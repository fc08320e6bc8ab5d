"""A fake OpenAI-compatible chat-completions server on loopback: real HTTP/1.1 (h11 over asyncio).

It runs its own event loop in a thread, so both async tests and the synchronous CLI can talk to it.
A `script(request) -> FakeReply | FakeError` plays the model; the server counts requests and the
peak number in flight, and can delay each reply so that concurrency is observable. A script may also
answer `FakeCut` (a reply that breaks off mid-body) or `FakeStall` (a server that never answers).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import h11
from teacher import Teacher

from kimi_swarm import prompts, tool
from kimi_swarm.backend.chat.messages import Message, ToolCall
from kimi_swarm.offline_web.site import SiteManifest
from kimi_swarm.offline_web.tasks import ResearchTask


@dataclass
class FakeReply:
    content: str = ""
    tool_calls: list[tuple[str, Any]] = field(default_factory=list)
    """(function name, arguments as a dict or raw JSON text; None for a call with no name: malformed)."""
    prompt_tokens: int = 10
    completion_tokens: int = 5


@dataclass
class FakeError:
    status: int
    retry_after: str | None = None
    message: str = "overloaded"


@dataclass
class FakeCut:
    """A 200 answer that breaks off after `fraction` of its body: then the connection is reset (a TCP RST),
    closed (a FIN short of the announced length), held open without another byte for `stall` seconds, or a
    stream "end"s cleanly at the last event boundary before it, framed as complete, so only the missing
    `data: [DONE]` tells."""

    reply: FakeReply = field(default_factory=FakeReply)
    fraction: float = 0.5
    how: Literal["reset", "close", "stall", "end"] = "reset"
    stall: float = 0.0


@dataclass
class FakeStall:
    """A server that takes the request and sends nothing for `seconds`, then closes the connection."""

    seconds: float


Script = Callable[[dict[str, Any]], FakeReply | FakeError | FakeCut | FakeStall]
_CUT_PAUSE = 0.02
"""Seconds between a cut answer's first bytes and its break: the client has read the head, the break is mid-body."""


class FakeOpenAI:
    def __init__(self, script: Script, *, delay: float = 0.0) -> None:
        self.script = script
        self.delay = delay
        self.requests = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.statuses: list[int] = []
        self.faults: list[str] = []
        """How each FakeCut or FakeStall answer broke: "reset", "close", "stall", "end" or "hang"."""
        self.bodies: list[dict[str, Any]] = []
        self.keep_bodies = False
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(timeout=10)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in asyncio.all_tasks(self._loop):
            if task is not asyncio.current_task():
                task.cancel()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = h11.Connection(h11.SERVER)
        body = bytearray()
        request: h11.Request | None = None
        try:
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    connection.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Request):
                    request, body = event, bytearray()
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    assert request is not None
                    chunks, broken = await self._respond(request, bytes(body), connection)
                    for chunk in chunks:
                        writer.write(chunk)
                    await writer.drain()
                    if broken is not None:
                        await _break_off(writer, broken)
                        break
                    if connection.our_state is h11.MUST_CLOSE:
                        break
                    connection.start_next_cycle()
                else:
                    break
        except (ConnectionError, h11.RemoteProtocolError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _respond(self, request: h11.Request, body: bytes,
                       connection: h11.Connection) -> tuple[list[bytes], FakeCut | FakeStall | None]:
        """The bytes to send, and the fault that breaks the connection after them (None: a whole answer)."""
        self.requests += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if request.method != b"POST" or not request.target.endswith(b"/chat/completions"):
                return _http(connection, 404, b'{"error": {"message": "not found"}}'), None
            payload = json.loads(body)
            if self.keep_bodies:
                self.bodies.append(payload)
            outcome = self.script(payload)
        except Exception as error:  # the script's bug, reported as a server error rather than a hang-up
            outcome = FakeError(500, message=f"fake script failed: {type(error).__name__}: {error}")
        finally:
            self.in_flight -= 1
        if isinstance(outcome, FakeError):
            self.statuses.append(outcome.status)
            headers = [("retry-after", outcome.retry_after)] if outcome.retry_after is not None else []
            error = json.dumps({"error": {"message": outcome.message}}).encode()
            return _http(connection, outcome.status, error, headers), None
        if isinstance(outcome, FakeStall):
            self.faults.append("hang")
            return [], outcome
        if isinstance(outcome, FakeCut):
            self.faults.append(outcome.how)
            whole, headers = self._answer(payload, outcome.reply)
            part = whole[:int(len(whole) * outcome.fraction)]
            if outcome.how == "end":
                return _http(connection, 200, part[:part.rfind(b"\n\n") + 2], headers), None
            return [_head(connection, 200, len(whole), headers), connection.send(h11.Data(data=part))], outcome
        self.statuses.append(200)
        return _http(connection, 200, *self._answer(payload, outcome)), None

    def _answer(self, payload: dict[str, Any], outcome: FakeReply) -> tuple[bytes, list[tuple[str, str]]]:
        """A reply's body (server-sent events when the request asked for a stream) and its extra headers."""
        calls = _tool_calls(payload, outcome)
        if payload.get("stream"):
            return _sse(payload, outcome, calls), [("content-type", "text/event-stream")]
        message: dict[str, Any] = {"role": "assistant", "content": outcome.content or None}
        if calls:
            message["tool_calls"] = calls
        answer = {
            "id": f"chatcmpl-{self.requests}", "object": "chat.completion", "model": payload.get("model"),
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
            "usage": {"prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens,
                      "total_tokens": outcome.prompt_tokens + outcome.completion_tokens},
        }
        return json.dumps(answer).encode(), []


async def _break_off(writer: asyncio.StreamWriter, fault: FakeCut | FakeStall) -> None:
    """Break the connection the way `fault` says, after what was sent so far; the caller then closes it (a FIN)."""
    if isinstance(fault, FakeStall) or fault.how == "stall":
        await asyncio.sleep(fault.seconds if isinstance(fault, FakeStall) else fault.stall)
    elif fault.how == "reset":
        await asyncio.sleep(_CUT_PAUSE)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() then sends a RST
        writer.transport.abort()
    else:
        await asyncio.sleep(_CUT_PAUSE)


def _tool_calls(payload: dict[str, Any], reply: FakeReply) -> list[dict[str, Any]]:
    turn = len(payload["messages"])
    calls = []
    for index, (name, arguments) in enumerate(reply.tool_calls):
        text = arguments if isinstance(arguments, str) else json.dumps(arguments)
        calls.append({"id": f"call_{turn}_{index}", "type": "function", "function": {"name": name, "arguments": text}})
    return calls


def _sse(payload: dict[str, Any], reply: FakeReply, calls: list[dict[str, Any]]) -> bytes:
    """The reply as chat.completion.chunk events: content in pieces, each call's arguments in two halves."""
    chunks: list[dict[str, Any]] = []
    content = reply.content
    for start in range(0, len(content), 7):
        chunks.append({"delta": {"content": content[start:start + 7]}})
    for index, call in enumerate(calls):
        arguments = call["function"]["arguments"]
        half = len(arguments) // 2
        chunks.append({"delta": {"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                                 "function": {"name": call["function"]["name"],
                                                              "arguments": arguments[:half]}}]}})
        chunks.append({"delta": {"tool_calls": [{"index": index, "function": {"arguments": arguments[half:]}}]}})
    chunks.append({"delta": {}, "finish_reason": "tool_calls" if calls else "stop"})
    lines = [f"data: {json.dumps({'object': 'chat.completion.chunk', 'choices': [dict(index=0, **c)]})}\n\n"
             for c in chunks]
    usage = {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens}
    lines.append(f"data: {json.dumps({'object': 'chat.completion.chunk', 'choices': [], 'usage': usage})}\n\n")
    lines.append("data: [DONE]\n\n")
    return "".join(lines).encode()


def _http(connection: h11.Connection, status: int, body: bytes,
          headers: list[tuple[str, str]] | None = None) -> list[bytes]:
    return [
        _head(connection, status, len(body), headers),
        connection.send(h11.Data(data=body)),
        connection.send(h11.EndOfMessage()),
    ]


def _head(connection: h11.Connection, status: int, length: int, headers: list[tuple[str, str]] | None) -> bytes:
    all_headers = [("content-type", "application/json"), ("content-length", str(length))]
    if headers:
        all_headers = [h for h in all_headers if h[0] not in {k for k, _ in headers}] + headers
    return connection.send(h11.Response(status_code=status, headers=all_headers))


def _task_message(template: str) -> re.Pattern[str]:
    pattern = (re.escape(template).replace(r"\{index\}", r"\d+").replace(r"\{total\}", r"\d+")
               .replace(r"\{task\}", r"(?P<task>.*)").replace(r"\{header\}", r".*"))
    return re.compile(pattern, re.DOTALL)


_TASK_MESSAGES = [_task_message(prompts.SUBAGENT_INSTRUCTIONS), _task_message(prompts.SUBAGENT_ROW_INSTRUCTIONS)]


def subagent_task(request: dict[str, Any]) -> str | None:
    """The task when the request comes from a sub-agent (read from its spawn answer), else None."""
    for message in request["messages"]:
        if message["role"] == "tool":
            for pattern in _TASK_MESSAGES:
                match = pattern.fullmatch(message.get("content") or "")
                if match:
                    return match.group("task")
    return None


def tool_results_since_task(request: dict[str, Any]) -> list[str]:
    """Tool results a sub-agent has received after its task message."""
    results: list[str] = []
    seen_task = False
    for message in request["messages"]:
        if message["role"] != "tool":
            continue
        if seen_task:
            results.append(message.get("content") or "")
        elif (message.get("content") or "").startswith(prompts.SUBAGENT_INSTRUCTIONS.split("{index}")[0]):
            seen_task = True
    return results


def spawn_results(request: dict[str, Any]) -> list[str]:
    """Tool results the orchestrator has received for its spawn_agents calls."""
    spawn_ids = {c["id"] for m in request["messages"] if m["role"] == "assistant"
                 for c in m.get("tool_calls") or [] if c["function"]["name"] == prompts.SPAWN_TOOL_NAME}
    return [m.get("content") or "" for m in request["messages"]
            if m["role"] == "tool" and m.get("tool_call_id") in spawn_ids]


def orchestrator_script(waves: list[list[str]], answer: str = "Final answer.") -> Callable[[dict], FakeReply]:
    """Spawns the given waves one after another, then answers."""

    def orchestrate(request: dict[str, Any]) -> FakeReply:
        done = len(spawn_results(request))
        if done < len(waves):
            return FakeReply(tool_calls=[("spawn_agents", {"tasks": waves[done]})])
        return FakeReply(content=answer)

    return orchestrate


def swarm_script(waves: list[list[str]], subagent: Callable[[dict, str, list[str]], FakeReply],
                 answer: str = "Final answer.") -> Callable[[dict], FakeReply]:
    """Orchestrator turns from `waves`; sub-agent turns from `subagent(request, task, tool_results)`."""
    orchestrate = orchestrator_script(waves, answer)

    def script(request: dict[str, Any]) -> FakeReply:
        task = subagent_task(request)
        if task is None:
            return orchestrate(request)
        return subagent(request, task, tool_results_since_task(request))

    return script


class Counter:
    """Counts executions and the peak number running at once."""

    def __init__(self) -> None:
        self.calls = 0
        self.running = 0
        self.peak = 0

    async def run(self, seconds: float = 0.0) -> None:
        self.calls += 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.running -= 1


def counting_lookup(counter: Counter, seconds: float = 0.0):
    @tool
    async def lookup(query: str) -> str:
        """Looks a query up and returns what was found.

        Args:
            query: What to look up.
        """
        await counter.run(seconds)
        return f"Fact about {query}. Source: http://facts.test/{query.replace(' ', '-')}"

    return lookup


CLI_COUNTER = Counter()
CLI_TOOLS = [counting_lookup(CLI_COUNTER)]
"""Test-local tools for `swarm run --tools-from tests.fake_openai:CLI_TOOLS`."""

SLOW_TOOLS = [counting_lookup(Counter(), seconds=60)]
"""A tool that never finishes in a test's time: for deadline and Ctrl-C tests of the CLI."""


def request_messages(request: dict[str, Any]) -> list[Message]:
    """The request's chat messages as the project's Message type."""
    return [Message(role=m["role"], content=m.get("content") or "", tool_call_id=m.get("tool_call_id"),
                    tool_calls=[ToolCall(id=c["id"], name=c["function"]["name"], arguments=c["function"]["arguments"])
                                for c in m.get("tool_calls") or []])
            for m in request["messages"]]


def teacher_script(task: ResearchTask, manifest: SiteManifest) -> Script:
    """The offline web's programmatic teacher as the model: it plans `task`, searches and fetches with the
    real tools and cites what they returned. The offline web's address is read from the tool results."""

    def script(request: dict[str, Any]) -> FakeReply:
        seen = re.search(r"http://127\.0\.0\.1:\d+/", json.dumps(request["messages"]))
        teacher = Teacher(task, manifest, seen.group(0) if seen else "")
        reply = teacher.next_turn(request_messages(request))
        return FakeReply(content=reply.content, tool_calls=[(c.name, c.arguments) for c in reply.tool_calls])

    return script
