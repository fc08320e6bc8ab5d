"""Typed events of a run: what `Swarm.stream()` yields and what the JSONL trace file holds, line for line."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter


class _Event(BaseModel):
    t: float = Field(description="seconds since the run started")


class RunStarted(_Event):
    type: Literal["run_started"] = "run_started"
    task: str
    limits: dict[str, Any]
    model: str | None = Field(None, description="the model name the backend asks for, where it has one")


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
    """One model turn's token counts."""

    type: Literal["tokens"] = "tokens"
    agent_id: int
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None


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
    | ModelCallStarted,
    Field(discriminator="type"),
]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def read_trace(path: str) -> list[Event]:
    """Load a JSONL trace file back into typed events."""
    with open(path, encoding="utf-8") as handle:
        return [EVENT_ADAPTER.validate_json(line) for line in handle if line.strip()]
