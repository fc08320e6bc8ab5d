"""Chat messages and tool calls shared by every backend, the chat format and the swarm.

The shapes follow OpenAI's chat-completions API so that HTTP backends pass them through
unchanged and the in-process engine renders them with the Kimi chat format.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Role = Literal["system", "user", "assistant", "tool"]


class ToolCall(BaseModel):
    """One call the model asked for; `arguments` stays the raw JSON text the model wrote."""

    id: str
    name: str
    arguments: str = "{}"


class Message(BaseModel):
    role: Role
    content: str = ""
    name: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None


class ToolSpec(BaseModel):
    """A tool as the model sees it: name, description and a JSON schema of its parameters."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})

    def openai_schema(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }
