"""OpenAI-compatible chat completions over httpx (vLLM, SGLang, Moonshot's API) as a ChatBackend.

A fork copies the message list, so every sub-agent's request starts with the identical prefix and
the server's prefix cache hits. With several base URLs, each `open()` (one per run) picks the least
busy server and all of that run's agents stay on it. 429/503 are not failures: the request waits
(honouring Retry-After) and the server's concurrency limit halves, then grows back one by one (AIMD).
A 500, a timeout, and a connection or stream that breaks off (a stream ends with `data: [DONE]`) are
retried with exponential backoff, so a half-received reply is never taken for the whole.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import itertools
import json
import random
import time
from collections.abc import Sequence
from typing import Any

import httpx

from .conversation import ChatBackend, Conversation, ConversationClosedError, FinishReason, Reply, ReplyOptions
from .messages import Message, ToolCall, ToolSpec

CONNECTIONS_PER_CLIENT = 8
RETRY_STATUSES = frozenset({429, 502, 503, 504})
FAILED_ATTEMPT_STATUSES = frozenset({500})
"""A server error of this one request (vLLM answers 500 when a generation fails): retried with backoff, but
not an overload, so the concurrency limit stays."""
_FINISH_REASONS: dict[str | None, FinishReason] = {
    "stop": "stop", "length": "length", "tool_calls": "tool_calls", "function_call": "tool_calls", None: "stop",
}


class BackendError(RuntimeError):
    """The server answered with an error that retrying will not fix, or retries ran out."""


class FailedAttempt(Exception):
    """One request failed in a way the next may not (a server error, a stream cut short): retried with backoff."""


RETRIED_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError, FailedAttempt)
"""A timeout, a reset, a connection closed mid-body (RemoteProtocolError), a failed attempt."""


class AdaptiveLimiter:
    """A concurrency limit that halves on overload and grows by one per `limit` successes."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.limit = float(maximum)
        self.in_flight = 0
        self.peak_in_flight = 0
        self.overloads = 0
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight < int(self.limit))
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    async def __aexit__(self, *_: object) -> None:
        async with self._changed:
            self.in_flight -= 1
            self._changed.notify_all()

    def on_success(self) -> None:
        self.limit = min(self.maximum, self.limit + 1 / self.limit)

    def on_overload(self) -> None:
        self.overloads += 1
        self.limit = max(1.0, self.limit / 2)


class _Server:
    def __init__(self, base_url: str, max_concurrency: int) -> None:
        self.base_url = base_url.rstrip("/")
        self.limiter = AdaptiveLimiter(max_concurrency)
        self.open_conversations = 0


class OpenAIBackend(ChatBackend):
    name = "openai"

    def __init__(
        self,
        base_url: str | Sequence[str],
        model: str,
        api_key: str | None = None,
        *,
        max_concurrency: int = 128,
        timeout: float = 600.0,
        max_retries: int = 8,
        backoff_base: float = 0.5,
        max_backoff: float = 60.0,
        stream: bool = False,
        extra_body: dict[str, Any] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls or not all(u.startswith(("http://", "https://")) for u in urls):
            raise ValueError(f"base_url must be one or more http(s) URLs, got {base_url!r}")
        if not model:
            raise ValueError("model is required (the served model name)")
        self.model = model
        self.servers = [_Server(u, max_concurrency) for u in urls]
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.max_backoff = max_backoff
        self.stream = stream
        self.extra_body = extra_body or {}
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=CONNECTIONS_PER_CLIENT, max_keepalive_connections=CONNECTIONS_PER_CLIENT)
        shards = max(1, -(-max_concurrency * len(urls) // CONNECTIONS_PER_CLIENT))
        ssl_context = httpx.create_ssl_context()  # built once: loading the CA store costs ~0.1 s per client
        self.clients = [httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits, transport=transport,
                                          verify=ssl_context) for _ in range(shards)]
        self._next_client = itertools.cycle(self.clients)

    def client_for_conversation(self) -> httpx.AsyncClient:
        """Conversations spread over small connection pools: httpcore's pool bookkeeping grows with
        connections x waiting requests, which dominates one shared pool of a hundred connections."""
        return next(self._next_client)

    async def open(self, messages: list[Message], tools: list[ToolSpec]) -> Conversation:
        server = min(self.servers, key=lambda s: s.open_conversations)
        server.open_conversations += 1
        return OpenAIConversation(self, server, list(messages), list(tools))

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()

    async def complete(self, client: httpx.AsyncClient, server: _Server, messages: list[Message], tools: list[ToolSpec],
                       options: ReplyOptions) -> Reply:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [_message_json(m) for m in messages],
            "max_tokens": options.max_tokens,
            "temperature": options.temperature,
            "top_p": options.top_p,
            **self.extra_body,
        }
        if options.seed is not None:
            body["seed"] = options.seed
        if tools:
            body["tools"] = [t.openai_schema() for t in tools]
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        url = f"{server.base_url}/chat/completions"
        for attempt in range(self.max_retries + 1):
            async with server.limiter:
                try:
                    reply, wait = await self._post(client, url, body)
                except RETRIED_ERRORS as error:
                    if attempt == self.max_retries:
                        raise BackendError(f"{url}: {type(error).__name__}: {error}") from error
                    await asyncio.sleep(self._backoff(attempt))
                    continue
            if reply is not None:
                server.limiter.on_success()
                return reply
            server.limiter.on_overload()
            if attempt < self.max_retries:
                await asyncio.sleep(wait if wait is not None else self._backoff(attempt))
        raise BackendError(f"{url}: still overloaded after {self.max_retries} retries")

    async def _post(self, client: httpx.AsyncClient, url: str,
                    body: dict[str, Any]) -> tuple[Reply | None, float | None]:
        """(reply, None) on success; (None, seconds to wait) on a retryable status."""
        if self.stream:
            async with client.stream("POST", url, json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    return None, self._retry_wait(response)
                return await _read_stream(response), None
        response = await client.post(url, json=body)
        if response.status_code != 200:
            return None, self._retry_wait(response)
        try:
            return _parse_completion(response.json()), None
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise BackendError(f"{url}: unexpected response ({error}): {response.text[:500]}") from error

    def _retry_wait(self, response: httpx.Response) -> float | None:
        if response.status_code in FAILED_ATTEMPT_STATUSES:
            raise FailedAttempt(f"HTTP {response.status_code}: {response.text[:1000]}")
        if response.status_code not in RETRY_STATUSES:
            raise BackendError(f"{response.request.url}: HTTP {response.status_code}: {response.text[:1000]}")
        return _retry_after_seconds(response.headers.get("retry-after"), self.max_backoff)

    def _backoff(self, attempt: int) -> float:
        return min(self.max_backoff, self.backoff_base * 2 ** attempt) * random.uniform(0.5, 1.0)


class OpenAIConversation(Conversation):
    def __init__(self, backend: OpenAIBackend, server: _Server, messages: list[Message], tools: list[ToolSpec]) -> None:
        self._backend = backend
        self._server = server
        self._client = backend.client_for_conversation()
        self._messages = messages
        self._tools = tools
        self._closed = False

    async def add(self, messages: list[Message]) -> None:
        self._messages.extend(messages)

    async def reply(self, options: ReplyOptions) -> Reply:
        if self._closed:
            raise ConversationClosedError("the conversation is closed")
        reply = await self._backend.complete(self._client, self._server, self._messages, self._tools, options)
        self._messages.append(reply.as_message())
        return reply

    def fork(self, n: int) -> list[Conversation]:
        self._server.open_conversations += n
        return [OpenAIConversation(self._backend, self._server, list(self._messages), self._tools) for _ in range(n)]

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._server.open_conversations -= 1

    @property
    def messages(self) -> list[Message]:
        return list(self._messages)


def _message_json(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.name:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
        if not message.content:
            out["content"] = None
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    return out


def _parse_completion(data: dict[str, Any]) -> Reply:
    choice = data["choices"][0]
    message = choice.get("message") or {}
    raw_calls = [
        (call.get("id"), (call.get("function") or {}).get("name"), (call.get("function") or {}).get("arguments"))
        for call in message.get("tool_calls") or []
    ]
    usage = data.get("usage") or {}
    return _reply(message.get("content") or "", raw_calls, choice.get("finish_reason"), usage)


async def _read_stream(response: httpx.Response) -> Reply:
    """Accumulate server-sent chunks: content deltas and tool-call deltas keyed by index."""
    content: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish_reason: str | None = None
    usage: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            break
        try:
            chunk = json.loads(payload)
        except json.JSONDecodeError:
            raise FailedAttempt(f"the stream broke off inside a chunk: {payload[:80]!r}") from None
        if chunk.get("error"):  # a server whose generation failed mid-stream says so in-band (vLLM, SGLang)
            raise FailedAttempt(f"the server reported an error mid-stream: {chunk['error']}")
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            content.append(delta.get("content") or "")
            for call in delta.get("tool_calls") or []:
                slot = calls.setdefault(call.get("index", 0), {"id": None, "name": None, "arguments": []})
                slot["id"] = call.get("id") or slot["id"]
                function = call.get("function") or {}
                slot["name"] = function.get("name") or slot["name"]
                slot["arguments"].append(function.get("arguments") or "")
            finish_reason = choice.get("finish_reason") or finish_reason
    else:  # a body that ends without [DONE] was cut short: what came may be half an answer
        raise FailedAttempt("the stream ended before data: [DONE]")
    raw_calls = [(c["id"], c["name"], "".join(c["arguments"])) for _, c in sorted(calls.items())]
    return _reply("".join(content), raw_calls, finish_reason, usage)


def _reply(content: str, raw_calls: list[tuple[Any, Any, Any]], finish_reason: str | None,
           usage: dict[str, Any]) -> Reply:
    tool_calls: list[ToolCall] = []
    malformed: list[str] = []
    for number, (call_id, name, arguments) in enumerate(raw_calls, start=1):
        if not name:
            malformed.append(f"tool call {number} has no function name")
            continue
        tool_calls.append(ToolCall(id=call_id or _fallback_call_id(number, name, arguments), name=name,
                                   arguments=arguments if isinstance(arguments, str) else json.dumps(arguments or {})))
    return Reply(
        content=content, tool_calls=tool_calls, malformed=malformed,
        finish_reason=_FINISH_REASONS.get(finish_reason, "stop"),
        prompt_tokens=int(usage.get("prompt_tokens") or 0), completion_tokens=int(usage.get("completion_tokens") or 0),
    )


def _fallback_call_id(number: int, name: str, arguments: Any) -> str:
    """Some servers omit call ids; a deterministic one keeps recorded runs replayable."""
    digest = hashlib.sha1(f"{name}\0{arguments}".encode()).hexdigest()[:12]
    return f"call_{number}_{digest}"


def _retry_after_seconds(header: str | None, cap: float) -> float | None:
    """Retry-After as seconds (a number or an HTTP date), capped; None when absent or unreadable."""
    if not header:
        return None
    try:
        return min(cap, max(0.0, float(header)))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return min(cap, max(0.0, when.timestamp() - time.time()))
