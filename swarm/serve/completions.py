"""One chat-completions request: rendered with the Kimi chat format, run by a Generator, answered in OpenAI's shape.

The reply is parsed by the chat layer (`parse_assistant`, or `ReplyStreamParser` as it streams), so clients get
proper `tool_calls` with the ids the model wrote, which the chat format renders back unchanged on the next turn.
`tool_choice` naming a function (or 'required') is enforced by starting the reply with the call's opening
markers, so the model writes only the arguments.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from kimi_swarm.backend import CacheCapacityError, Message, SamplingParams, ToolCall
from kimi_swarm.backend.chat.chat_format import (
    ARGUMENT_BEGIN,
    CALL_BEGIN,
    SECTION_BEGIN,
    ToolSchemas,
    parse_assistant,
    render_turns,
    tool_call_id,
)
from kimi_swarm.backend.chat.prefix_cache import CacheFullError, PromptTooLongError
from kimi_swarm.backend.chat.stream_parser import ContentDelta, ReplyStreamParser, StreamEvent

from .errors import APIError, bad_request, overloaded, too_large
from .generator import GenerationStream, Generator
from .schema import ChatCompletionRequest, NamedToolChoice

DEFAULT_MAX_TOKENS = 4096
"""Completion tokens when a request sets no limit (OpenAI's is the rest of the context; reserving that much cache
for every request would refuse concurrent ones)."""
DEFAULT_TEMPERATURE = 1.0
"""OpenAI's default; clients that want greedy output send temperature 0."""


@dataclass
class Prepared:
    """A validated request, ready for the generator."""

    segments: list[list[int]]
    params: SamplingParams
    tools: ToolSchemas
    forced: str = ""
    stream: bool = False
    include_usage: bool = False
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))


def prepare(request: ChatCompletionRequest, generator: Generator) -> Prepared:
    """Check what the schema cannot (n, tool_choice against tools, context room) and render the prompt."""
    if request.n not in (None, 1):
        raise bad_request("only n=1 is supported", "n")
    messages = request.chat_messages()
    tools = request.tool_specs()
    choice = request.tool_choice
    if choice not in (None, "none", "auto") and not tools:
        raise bad_request("a tool must be chosen but no tools are declared", "tool_choice")
    if isinstance(choice, NamedToolChoice) and choice.function.name not in {tool.name for tool in tools}:
        raise bad_request(f"{choice.function.name!r} is not one of the declared tools", "tool_choice.function.name")
    declared = [] if choice == "none" else tools
    try:
        turns = render_turns(messages, declared or None)
    except ValueError as error:
        raise bad_request(str(error), "messages") from None
    forced = _forced_start(choice, messages)
    if forced:
        turns.append(forced)
    segments = [generator.tokenizer.encode(turn) for turn in turns]
    params = SamplingParams(
        max_tokens=_completion_tokens(request, sum(map(len, segments)), generator.context_tokens),
        temperature=DEFAULT_TEMPERATURE if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p, seed=request.seed, stop=request.stop_strings(),
        stop_token_ids=[] if request.ignore_eos else None)
    return Prepared(segments=segments, params=params, tools={tool.name: tool.parameters for tool in declared},
                    forced=forced, stream=bool(request.stream),
                    include_usage=bool(request.stream_options and request.stream_options.include_usage))


def _completion_tokens(request: ChatCompletionRequest, prompt_tokens: int, context_tokens: int) -> int:
    room = context_tokens - prompt_tokens
    if room < 1:
        raise too_large(f"the prompt is {prompt_tokens} tokens; this server's context holds {context_tokens}")
    limit = request.completion_limit()
    if limit is None:
        return min(DEFAULT_MAX_TOKENS, room)
    if limit > room:
        raise too_large(f"the prompt's {prompt_tokens} tokens plus max_tokens {limit} exceed this server's context "
                        f"of {context_tokens} tokens")
    return limit


def _forced_start(choice: object, messages: list[Message]) -> str:
    """The text a reply must start with for `tool_choice`: a section for 'required', the named call's id (numbered
    as Kimi numbers a conversation's calls) for a function."""
    if choice == "required":
        return SECTION_BEGIN
    if isinstance(choice, NamedToolChoice):
        index = sum(len(message.tool_calls) for message in messages)
        return SECTION_BEGIN + CALL_BEGIN + tool_call_id(choice.function.name, index) + ARGUMENT_BEGIN
    return ""


async def start(prepared: Prepared, generator: Generator) -> GenerationStream:
    """Admit the request: 413 if it can never fit the engine's memory, 503 if it cannot now."""
    try:
        return await generator.start(prepared.segments, prepared.params)
    except PromptTooLongError as error:
        raise too_large(str(error)) from None
    except CacheFullError as error:
        raise overloaded(str(error)) from None


async def complete(prepared: Prepared, stream: GenerationStream, model: str) -> dict[str, Any]:
    """The whole chat.completion object."""
    try:
        text = "".join([delta async for delta in stream])
    except CacheCapacityError as error:
        raise overloaded(str(error)) from None
    finally:
        stream.close()
    reply = parse_assistant(prepared.forced + text, prepared.tools)
    message: dict[str, Any] = {"role": "assistant", "content": reply.content or None}
    if reply.tool_calls:
        message["tool_calls"] = [_tool_call_json(call) for call in reply.tool_calls]
    else:
        message["content"] = reply.content
    return {
        "id": prepared.id, "object": "chat.completion", "created": prepared.created, "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": "tool_calls" if reply.tool_calls else stream.finish_reason}],
        "usage": _usage(stream),
    }


async def stream_chunks(prepared: Prepared, stream: GenerationStream, model: str) -> AsyncIterator[bytes]:
    """Server-sent events: a role chunk, content and tool-call deltas, the finish reason, usage if asked, [DONE].
    An error once the stream has begun is sent in-band, as OpenAI-compatible servers do, without [DONE]."""
    head = {"id": prepared.id, "object": "chat.completion.chunk", "created": prepared.created, "model": model}

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return _event({**head, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                            "finish_reason": finish_reason}]})

    parser = ReplyStreamParser(prepared.tools)
    events = parser.feed(prepared.forced)
    started = False
    try:
        async for text in stream:
            if not started:  # with the first token, so a client's time to first chunk is its time to first token
                started = True
                yield chunk({"role": "assistant", "content": ""})
            for event in [*events, *parser.feed(text)]:
                yield chunk(_delta(event))
            events = []
        rest, reply = parser.finish()
        if not started:
            yield chunk({"role": "assistant", "content": ""})
        for event in [*events, *rest]:
            yield chunk(_delta(event))
    except Exception as error:  # headers are sent: the client learns of it in-band
        failure = overloaded(str(error)) if isinstance(error, CacheCapacityError) else APIError(
            500, f"the generation failed: {type(error).__name__}: {error}", type="server_error")
        yield _event(failure.body())
        return
    finally:
        stream.close()
    yield chunk({}, "tool_calls" if reply.tool_calls else stream.finish_reason)
    if prepared.include_usage:
        yield _event({**head, "choices": [], "usage": _usage(stream)})
    yield b"data: [DONE]\n\n"


def _delta(event: StreamEvent) -> dict[str, Any]:
    if isinstance(event, ContentDelta):
        return {"content": event.text}
    return {"tool_calls": [{"index": event.index, **_tool_call_json(event.call)}]}


def _tool_call_json(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def _usage(stream: GenerationStream) -> dict[str, Any]:
    return {"prompt_tokens": stream.prompt_tokens, "completion_tokens": stream.completion_tokens,
            "total_tokens": stream.prompt_tokens + stream.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": stream.cached_tokens}}


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
