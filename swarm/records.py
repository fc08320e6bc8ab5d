"""What a run records: every agent's status, steps, tool calls and transcript, the citations and the usage.

result.py gathers them into the RunResult; the HTML report reads them without importing the result.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from kimi_swarm.backend.chat.messages import Message

AgentStatus = Literal[
    "pending", "running", "done", "budget", "step_limit", "token_limit", "deadline", "cancelled", "failed", "refused",
]
"""`done`: answered within every limit. `budget`/`step_limit`/`token_limit`/`deadline`/`cancelled`: cut
short by that limit (its result is what it had). `failed`: an error ended it. `refused`: over the agent cap."""

COMPLETE_STATUSES = frozenset({"done", "refused"})
FAILED_STATUSES = frozenset({"failed", "deadline", "cancelled"})
"""An error ended the agent, or something outside it stopped it before it could answer: reports and traces show
these as failures; the run's own limits (`budget`, `step_limit`, `token_limit`) end it with what it had."""


class ToolCallRecord(BaseModel):
    call_id: str
    tool: str
    arguments: str
    executed: bool
    ok: bool
    output: str
    attempts: int = 0
    seconds: float = 0.0


class AgentRecord(BaseModel):
    id: int
    task: str
    wave: int
    status: AgentStatus = "pending"
    result: str = ""
    steps: int = 0
    tool_calls: list[ToolCallRecord] = Field(default_factory=list)
    transcript: list[Message] = Field(default_factory=list)
    error: str | None = None

    @property
    def executed_tool_calls(self) -> int:
        return sum(call.executed for call in self.tool_calls)


class Citation(BaseModel):
    url: str
    claim: str = Field(description="the answer's sentence that cites the URL")
    evidence: str = Field(description="the text of a tool result from that URL that best supports the claim")


class Usage(BaseModel):
    tool_calls: int = 0
    agents: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_calls: int = 0
    waves: int = 0
    critical_steps: int = Field(0, description="orchestrator steps + sum over waves of the longest sub-agent's steps")
    wall_seconds: float = 0.0
