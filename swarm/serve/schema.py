"""The chat-completions request as OpenAI defines it, and its translation to the chat layer's messages and tools.

Fields OpenAI has and this server does not use (`user`, `metadata`, `logit_bias`, ...) are accepted and ignored,
as OpenAI ignores what a model does not support; a field of the wrong type is a 400 naming it (strict types: a
string is not a number here).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kimi_swarm.backend import Message, ToolCall, ToolSpec

from .errors import bad_request


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class TextPart(_Body):
    type: Literal["text"]
    text: str


class FunctionCall(_Body):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCallIn(_Body):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class FunctionDef(_Body):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolDef(_Body):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Body):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Body):
    include_usage: bool = False


class ChatCompletionRequest(_Body):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    """vLLM's extension: generate max_tokens whatever the model does (benchmarks use it for fixed lengths)."""

    def chat_messages(self) -> list[Message]:
        """The messages as the chat format renders them (text parts joined; 'developer' is a system turn)."""
        return [_chat_message(message) for message in self.messages]

    def tool_specs(self) -> list[ToolSpec]:
        names = [tool.function.name for tool in self.tools or []]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise bad_request(f"{', '.join(duplicated)} declared more than once", "tools")
        return [ToolSpec(name=t.function.name, description=t.function.description, parameters=t.function.parameters)
                for t in self.tools or []]

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if any(not stop for stop in stops):
            raise bad_request("stop strings must not be empty", "stop")
        return stops

    def completion_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def _chat_message(message: ChatMessage) -> Message:
    content = message.content
    text = "".join(part.text for part in content) if isinstance(content, list) else content or ""
    calls = [ToolCall(id=call.id, name=call.function.name, arguments=_arguments_text(call.function.arguments))
             for call in message.tool_calls or []]
    role = "system" if message.role == "developer" else message.role
    return Message(role=role, content=text, name=message.name, tool_calls=calls, tool_call_id=message.tool_call_id)


def _arguments_text(arguments: str | dict[str, Any]) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
