"""Typed events of a run: what `Swarm.stream()` yields and what the JSONL trace file holds, line for line.

A trace holds enough to resume its run after a crash (`Swarm.resume`): the first event says what identifies the
run, every model turn carries its reply and every tool call its outcome.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter

from kimi_swarm.backend.chat.messages import ToolCall

from .tape import ToolOutcome


class _Event(BaseModel):
    t: float = Field(description="seconds since the run started")


class RunStarted(_Event):
    type: Literal["run_started"] = "run_started"
    task: str
    limits: dict[str, Any]
    model: str | None = Field(None, description="the model name the backend asks for, where it has one")
    backend: str | None = Field(None, description="which model answers: the backend and its model name or config")
    tools: list[str] | None = Field(None, description="the tools declared to the agents, in order (MCP servers as "
                                    "mcp:COMMAND-OR-URL)")
    tools_digest: str | None = Field(None, description="SHA-256 of the tools' names, descriptions and schemas")
    reply_options: dict[str, Any] | None = None
    context_digest: str | None = Field(None, description="SHA-256 of the shared context documents; None without")


class RunResumed(RunStarted):
    """A crashed run goes on (`Swarm.resume`): its identity again, checked against the trace's first event.

    A subclass of RunStarted, so a listener sees the resumed run start here. The steps it replays from the
    trace are not written again; what follows in the trace is new.
    """

    type: Literal["run_resumed"] = "run_resumed"  # type: ignore[assignment]
    lost_tool_calls: int = Field(0, description="tool calls in flight at a crash so far (started, no outcome "
                                 "recorded): each counts as spent, since it may have run, and runs again")


class AgentStarted(_Event):
    type: Literal["agent_started"] = "agent_started"
    agent_id: int
    task: str
    wave: int


class AgentFinished(_Event):
    type: Literal["agent_finished"] = "agent_finished"
    agent_id: int
    status: str
    steps: int
    tool_calls: int
    result: str


class ToolCallStarted(_Event):
    type: Literal["tool_call_started"] = "tool_call_started"
    agent_id: int
    call_id: str
    tool: str
    arguments: str


class ToolCallFinished(_Event):
    type: Literal["tool_call_finished"] = "tool_call_finished"
    agent_id: int
    call_id: str
    tool: str
    ok: bool
    executed: bool
    attempts: int
    seconds: float
    error: str | None = None
    refused: bool = Field(False, description="not executed because the run's tool-call budget is spent")


class Tokens(_Event):
    """One model turn's token counts, and the reply itself, which a resumed run serves instead of asking again."""

    type: Literal["tokens"] = "tokens"
    agent_id: int
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None
    step: int | None = Field(None, description="the agent's model turn, counting from 1")
    request: str | None = Field(None, description="SHA-256 of the transcript the turn answered")
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    malformed: list[str] | None = None


class ToolCallOutcome(_Event):
    """What a tool call came to (its budget decision and output), which a resumed run serves instead of calling
    the tool again."""

    type: Literal["tool_call_outcome"] = "tool_call_outcome"
    call_id: str
    outcome: ToolOutcome


class BudgetLeft(_Event):
    type: Literal["budget_left"] = "budget_left"
    tool_calls: int
    agents: int
    tokens: int | None


class ModelCallStarted(_Event):
    """A model turn began; the agent's next Tokens event ends it (an agent has one turn in flight at a time)."""

    type: Literal["model_call_started"] = "model_call_started"
    agent_id: int
    step: int = Field(description="the agent's model turn, counting from 1")


class RunFinished(_Event):
    type: Literal["run_finished"] = "run_finished"
    status: str
    partial: bool
    answer: str
    usage: dict[str, Any]
    stop_reason: str | None = None


Event = Annotated[
    RunStarted | AgentStarted | AgentFinished | ToolCallStarted | ToolCallFinished | Tokens | BudgetLeft | RunFinished
    | ModelCallStarted | RunResumed | ToolCallOutcome,
    Field(discriminator="type"),
]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def read_trace(path: str) -> list[Event]:
    """Load a JSONL trace file back into typed events."""
    with open(path, encoding="utf-8") as handle:
        return [EVENT_ADAPTER.validate_json(line) for line in handle if line.strip()]
