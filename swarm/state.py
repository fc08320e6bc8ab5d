"""Everything one run shares: limits and budget, tools and their concurrency caps, records, events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import IO

from kimi_swarm.backend.chat.conversation import ChatBackend, Reply, ReplyOptions

from .budget import Budget, Limits
from .citations import EvidenceStore
from .events import BudgetLeft, Event, ModelCallStarted, Tokens, _Event
from .function_tools import Tool
from .result import AgentRecord
from .tape import ToolTape


class RunState:
    def __init__(self, task: str, tools: dict[str, Tool], limits: Limits, options: ReplyOptions,
                 trace_file: IO[str] | None, listeners: list[Callable[[Event], None]],
                 tool_tape: ToolTape | None = None) -> None:
        self.task = task
        self.tools = tools
        self.tool_tape = tool_tape
        self.limits = limits
        self.options = options
        self.budget = Budget(limits)
        self.evidence = EvidenceStore()
        self.started = time.perf_counter()
        self.agent_slots = asyncio.Semaphore(limits.max_concurrency)
        self.tool_slots = {name: asyncio.Semaphore(t.max_concurrency or limits.max_tool_concurrency)
                           for name, t in tools.items()}
        self.orchestrator = AgentRecord(id=0, task=task, wave=0)
        self.agents: list[AgentRecord] = []
        self.events: list[Event] = []
        self.stop_reason: str | None = None
        self.cancel_requested = asyncio.Event()
        self.replay_divergence: LookupError | None = None
        self.waves = 0
        self.critical_steps = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.model_calls = 0
        self._trace_file = trace_file
        self._listeners = listeners

    def abort_replay(self, error: LookupError) -> None:
        """A replay departed from its recording, so the rest of it would be made up: stop every agent;
        `Swarm.run` raises `error` once they have stopped."""
        if self.replay_divergence is None:
            self.replay_divergence = error
            self.stop_reason = "replay_mismatch"
        self.cancel_requested.set()

    def now(self) -> float:
        return time.perf_counter() - self.started

    def emit(self, event: _Event) -> None:
        self.events.append(event)  # type: ignore[arg-type]
        if self._trace_file is not None:
            self._trace_file.write(event.model_dump_json() + "\n")
        for listener in self._listeners:
            listener(event)  # type: ignore[arg-type]

    def begin_model_call(self, agent_id: int, step: int) -> None:
        self.emit(ModelCallStarted(t=self.now(), agent_id=agent_id, step=step))

    def book_reply(self, agent_id: int, reply: Reply) -> None:
        self.model_calls += 1
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens
        self.emit(Tokens(t=self.now(), agent_id=agent_id, prompt_tokens=reply.prompt_tokens,
                         completion_tokens=reply.completion_tokens, finish_reason=reply.finish_reason))

    def emit_budget(self) -> None:
        self.emit(BudgetLeft(t=self.now(), tool_calls=self.budget.tool_calls_left, agents=self.budget.agents_left,
                             tokens=self.budget.tokens_left))

    def new_agent(self, task: str, wave: int) -> AgentRecord:
        record = AgentRecord(id=len(self.agents) + 1, task=task, wave=wave)
        self.agents.append(record)
        return record


def served_model(backend: ChatBackend) -> str | None:
    """The model name a backend asks its server for (through a recording wrapper), for the run's telemetry;
    None where the backend has no such name (the in-process engine, a replay)."""
    model = getattr(backend, "model", None)
    if isinstance(model, str):
        return model
    inner = getattr(backend, "inner", None)
    return served_model(inner) if isinstance(inner, ChatBackend) else None
