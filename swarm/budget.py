"""Run-wide limits, checked and reserved before anything is spent.

The swarm is one asyncio loop, so a check-and-take with no await between them is atomic: the
1,500th tool call is granted to exactly one agent and every later request is refused.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveInt


class Limits(BaseModel):
    """Every limit of a run and its default, declared once: `Swarm`, `swarm run` and the examples read them here."""

    model_config = ConfigDict(extra="forbid")

    max_agents: PositiveInt = Field(100, description="sub-agents over the whole run; tasks beyond are refused")
    max_tool_calls: int = Field(1500, ge=0, description="executed tool calls of all agents (spawn_agents not counted)")
    max_agent_steps: PositiveInt = Field(100, description="model turns per sub-agent")
    max_orchestrator_steps: PositiveInt = Field(15, description="model turns of the orchestrator")
    max_concurrency: PositiveInt = Field(100, description="sub-agents running at once")
    max_tool_concurrency: PositiveInt = Field(32, description="calls of one tool running at once (per-tool override)")
    token_budget: PositiveInt | None = Field(None, description="prompt + completion tokens of all model turns; each "
                                             "turn reserves its estimated cost before it runs")
    deadline: float | None = Field(None, gt=0, description="wall-clock seconds for the whole run")
    tool_timeout: float = Field(60.0, gt=0, description="seconds per tool attempt (per-tool override)")
    tool_retries: int = Field(2, ge=0, description="retries of a transient tool failure (per-tool override)")
    max_tool_output_chars: PositiveInt = Field(100_000, description="characters of one tool result the agent "
                                               "gets; the rest is cut, and a marker says how much")
    max_corrections: int = Field(3, ge=0, description="correction turns for malformed calls per agent")


class Budget:
    """Counters behind the limits. `try_*` methods take budget only if it is there."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.tool_calls = 0
        self.agents = 0
        self.tokens = 0
        self._tokens_reserved = 0

    @property
    def tool_calls_left(self) -> int:
        return self.limits.max_tool_calls - self.tool_calls

    @property
    def agents_left(self) -> int:
        return self.limits.max_agents - self.agents

    @property
    def tokens_left(self) -> int | None:
        if self.limits.token_budget is None:
            return None
        return self.limits.token_budget - self.tokens - self._tokens_reserved

    def try_tool_call(self) -> bool:
        if self.tool_calls >= self.limits.max_tool_calls:
            return False
        self.tool_calls += 1
        return True

    def book_tool_call(self, executed: bool) -> None:
        """Replay: take exactly the decision the recorded run took."""
        self.tool_calls += executed

    def take_agents(self, wanted: int) -> int:
        """How many of `wanted` new sub-agents may start (the rest are refused)."""
        granted = max(0, min(wanted, self.agents_left))
        self.agents += granted
        return granted

    def try_reserve_tokens(self, reservation: int) -> bool:
        """Before a model turn: take `reservation` (its estimated cost) if that much is left."""
        left = self.tokens_left
        if left is None:
            return True
        if left < reservation:
            return False
        self._tokens_reserved += reservation
        return True

    def settle_tokens(self, reservation: int, used: int) -> None:
        """After a model turn: release the reservation, book what was used."""
        if self.limits.token_budget is not None:
            self._tokens_reserved -= reservation
        self.tokens += used
