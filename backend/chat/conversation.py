"""The one interface the swarm talks to: a chat backend that opens conversations which can fork.

A conversation is the unit an agent owns. Forking is the product's core move: on the
in-process engine a fork copies the fixed-size KDA state and shares the latent-cache pages;
on HTTP backends it copies the message list, so every child's request starts with the
identical prefix and the server's prefix cache hits.
"""

from __future__ import annotations

import abc
from typing import Literal

from pydantic import BaseModel, Field

from .messages import Message, ToolCall, ToolSpec

FinishReason = Literal["stop", "length", "tool_calls", "error"]


class ConversationClosedError(RuntimeError):
    """A turn asked of a conversation that has been closed."""


class ReplyOptions(BaseModel):
    max_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


class Reply(BaseModel):
    """One assistant turn. `malformed` carries parse problems the agent should be told about."""

    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    finish_reason: FinishReason = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    malformed: list[str] = Field(default_factory=list)

    def as_message(self) -> Message:
        return Message(role="assistant", content=self.content, tool_calls=self.tool_calls)


class Conversation(abc.ABC):
    """A growing chat transcript bound to a backend."""

    @abc.abstractmethod
    async def add(self, messages: list[Message]) -> None:
        """Append messages (user turns, tool results) without generating."""

    @abc.abstractmethod
    async def reply(self, options: ReplyOptions) -> Reply:
        """Generate the next assistant turn; it becomes part of the conversation."""

    @abc.abstractmethod
    def fork(self, n: int) -> list[Conversation]:
        """n independent conversations that continue from exactly this point."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release what the conversation holds (engine slots and pages)."""

    @property
    @abc.abstractmethod
    def messages(self) -> list[Message]:
        """The transcript so far."""


class ChatBackend(abc.ABC):
    """Opens conversations; `tools` are declared once, at the start, as the chat format wants."""

    name: str = "backend"

    @abc.abstractmethod
    async def open(self, messages: list[Message], tools: list[ToolSpec]) -> Conversation:
        """A conversation holding `messages`, with `tools` declared to the model."""

    async def aclose(self) -> None:  # noqa: B027  (most backends hold nothing to release)
        """Release connections or engine resources."""
