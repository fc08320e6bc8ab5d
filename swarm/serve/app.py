"""The HTTP face of `swarm serve`: OpenAI's /v1/models and /v1/chat/completions as a Starlette app.

Every error, ours or the framework's (an unknown route, a wrong method), is in OpenAI's error shape. A streamed
reply watches for the client going away, and a client that disconnects mid-stream has its generation cancelled and
its session closed at once, not when the next delta fails to send.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import anyio
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .completions import complete, prepare, start, stream_chunks
from .errors import APIError, bad_request, invalid_body, too_large, unauthorized
from .generator import Generator
from .schema import ChatCompletionRequest

DISCONNECT_POLL_SECONDS = 0.25
"""How often a non-streamed request checks that its client is still there."""
MAX_BODY_BYTES = 64 * 2**20
"""The largest request body read (a 128K-token transcript is well under this)."""


def json_response(payload: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(body, status_code=status, headers=headers, media_type="application/json")


class EventStream(Response):
    """Server-sent events from `events`, cancelled when the client disconnects; `on_close` runs however it ends."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], on_close: Callable[[], None]):
        self.events = events
        self.on_close = on_close
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._stream, send, group.cancel_scope)
                group.start_soon(self._watch, receive, group.cancel_scope)
        finally:
            self.on_close()

    async def _stream(self, send: Send, scope: anyio.CancelScope) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for event in self.events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away between two events
            pass
        finally:
            scope.cancel()

    async def _watch(self, receive: Receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()


def create_app(generator: Generator, *, model_name: str, api_key: str | None = None,
               max_body_bytes: int = MAX_BODY_BYTES) -> Starlette:
    """The app serving `generator` as the model `model_name`; with `api_key`, /v1 requests must present it."""
    created = int(time.time())
    model_card = {"id": model_name, "object": "model", "created": created, "owned_by": "kimi-swarm"}

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), api_key.encode()):
            raise unauthorized()

    async def models(request: Request) -> Response:
        authorize(request)
        return json_response({"object": "list", "data": [model_card]})

    async def model(request: Request) -> Response:
        authorize(request)
        if request.path_params["model"] != model_name:
            raise _no_such_model(request.path_params["model"])
        return json_response(model_card)

    async def chat_completions(request: Request) -> Response:
        authorize(request)
        body = await _read_body(request, max_body_bytes)
        try:
            parsed = ChatCompletionRequest.model_validate_json(body)
        except ValidationError as error:
            if any(e["type"] == "json_invalid" for e in error.errors()):
                raise bad_request("the request body is not valid JSON") from None
            raise invalid_body(error) from None
        if parsed.model != model_name:
            raise _no_such_model(parsed.model)
        prepared = prepare(parsed, generator)
        stream = await start(prepared, generator)
        if prepared.stream:
            return EventStream(stream_chunks(prepared, stream, model_name), on_close=stream.close)
        reply = await _unless_disconnected(request, complete(prepared, stream, model_name), on_cancel=stream.close)
        return json_response(reply) if reply is not None else Response(status_code=499)

    async def health(request: Request) -> Response:
        return Response("ok", media_type="text/plain")

    return Starlette(
        routes=[Route("/v1/models", models), Route("/v1/models/{model:path}", model),
                Route("/v1/chat/completions", chat_completions, methods=["POST"]), Route("/health", health)],
        exception_handlers={APIError: _api_error, HTTPException: _http_error, Exception: _server_error},
    )


async def _unless_disconnected(request: Request, work: Coroutine[Any, Any, dict[str, Any]],
                               on_cancel: Callable[[], None]) -> dict[str, Any] | None:
    """The result of `work`, or None (work cancelled, `on_cancel` run) if the client goes away first: a request
    nobody waits for must not keep decoding."""
    task = asyncio.ensure_future(work)
    try:
        while not (await asyncio.wait({task}, timeout=DISCONNECT_POLL_SECONDS))[0]:
            if await request.is_disconnected():
                task.cancel()
                on_cancel()
                return None
        return task.result()
    finally:
        task.cancel()


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(f"the request body is {declared} bytes; this server reads at most {limit}")
    body = b""
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise too_large(f"the request body is over {limit} bytes, the most this server reads")
    return body


def _no_such_model(name: str) -> APIError:
    return APIError(404, f"The model {name!r} does not exist; GET /v1/models lists the one served here.",
                    param="model", code="model_not_found")


async def _api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, APIError)
    return json_response(error.body(), error.status, error.headers)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return json_response(APIError(error.status_code, str(error.detail), type="invalid_request_error").body(),
                         error.status_code, dict(error.headers or {}))


async def _server_error(request: Request, error: Exception) -> Response:
    return json_response(APIError(500, f"the server failed: {type(error).__name__}: {error}",
                                  type="server_error").body(), 500)
