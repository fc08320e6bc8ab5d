"""Everything one run shares: limits and budget, tools and their concurrency caps, records, events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING

from kimi_swarm.backend.chat.conversation import Conversation, Reply, ReplyOptions
from kimi_swarm.backend.chat.messages import Message
from kimi_swarm.backend.chat.replay import RequestHash

from .budget import Budget, Limits
from .citations import EvidenceStore
from .events import BudgetLeft, Event, ModelCallStarted, Tokens, ToolCallOutcome, _Event
from .function_tools import Tool
from .result import AgentRecord
from .tape import ToolOutcome, ToolTape

if TYPE_CHECKING:
    from .resume import RunRecord


class RunState:
    """One run's shared state. With `record` (a crashed run's, read from its trace) it is that run resumed: the
    budget, the clock and the events go on from the record, and the record's replies are served first."""

    def __init__(self, task: str, tools: dict[str, Tool], limits: Limits, options: ReplyOptions,
                 trace_file: IO[str] | None, listeners: list[Callable[[Event], None]],
                 tool_tape: ToolTape | None = None, record: RunRecord | None = None) -> None:
        self.task = task
        self.tools = tools
        self.tool_tape = tool_tape
        self.limits = limits
        self.options = options
        self.record = record
        self.budget = record.budget(limits) if record is not None else Budget(limits)
        self.evidence = EvidenceStore()
        self.started = time.perf_counter() - (record.elapsed if record is not None else 0.0)
        self.agent_slots = asyncio.Semaphore(limits.max_concurrency)
        self.tool_slots = {name: asyncio.Semaphore(t.max_concurrency or limits.max_tool_concurrency)
                           for name, t in tools.items()}
        self.orchestrator = AgentRecord(id=0, task=task, wave=0)
        self.agents: list[AgentRecord] = []
        self.events: list[Event] = list(record.events) if record is not None else []
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
        self._requests: dict[int, tuple[RequestHash, int]] = {}
        self._turns: dict[int, tuple[int, str]] = {}
        self._last_replayed = False

    def abort_replay(self, error: LookupError) -> None:
        """A replay departed from its recording, so the rest of it would be made up: stop every agent;
        `Swarm.run` raises `error` once they have stopped."""
        if self.replay_divergence is None:
            self.replay_divergence = error
            self.stop_reason = "replay_mismatch"
        self.cancel_requested.set()

    def now(self) -> float:
        """Seconds the run has been running; a resumed run counts its time before the crash (up to the last
        recorded event), not the time it lay crashed."""
        return time.perf_counter() - self.started

    def time_left(self) -> float | None:
        """Seconds to the deadline, or None without one."""
        return None if self.limits.deadline is None else max(0.0, self.limits.deadline - self.now())

    def emit(self, event: _Event) -> None:
        """Record the event and tell the listeners. Each trace line is flushed as it is written, so a crash loses
        at most the step in flight. A resumed run does not repeat the events of the steps it replays (a budget
        event goes with the event before it)."""
        if self.record is not None:
            if not isinstance(event, BudgetLeft):
                self._last_replayed = self.record.replayed(event)  # type: ignore[arg-type]
            if self._last_replayed:
                return
        self.events.append(event)  # type: ignore[arg-type]
        if self._trace_file is not None:
            self._trace_file.write(event.model_dump_json() + "\n")
            self._trace_file.flush()
        for listener in self._listeners:
            listener(event)  # type: ignore[arg-type]

    def close_trace(self) -> None:
        if self._trace_file is not None:
            self._trace_file.close()

    async def reply(self, agent_id: int, step: int, conversation: Conversation) -> Reply:
        """The agent's next model turn. A resumed run serves the recorded one while the agent's record lasts (the
        conversation takes it as its own turn), then asks the model."""
        self.emit(ModelCallStarted(t=self.now(), agent_id=agent_id, step=step))
        request = self._request_digest(agent_id, conversation.messages)
        self._turns[agent_id] = (step, request)
        recorded = self.record.reply(agent_id, step, request) if self.record is not None else None
        if recorded is None:
            return await conversation.reply(self.options)
        await conversation.add([recorded.as_message()])
        return recorded

    def _request_digest(self, agent_id: int, messages: list[Message]) -> str:
        """The digest of the agent's transcript, hashing only the messages new since its last turn."""
        hashed, seen = self._requests.get(agent_id) or (RequestHash(), 0)
        hashed.add(messages[seen:])
        self._requests[agent_id] = (hashed, len(messages))
        return hashed.digest()

    def book_reply(self, agent_id: int, reply: Reply) -> None:
        """Count the turn and record it, reply included: a resumed run serves it instead of asking again."""
        self.model_calls += 1
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens
        step, request = self._turns.pop(agent_id, (None, None))
        self.emit(Tokens(t=self.now(), agent_id=agent_id, prompt_tokens=reply.prompt_tokens,
                         completion_tokens=reply.completion_tokens, finish_reason=reply.finish_reason, step=step,
                         request=request, content=reply.content, tool_calls=reply.tool_calls,
                         malformed=reply.malformed))

    def record_outcome(self, call_id: str, outcome: ToolOutcome) -> None:
        """Keep a tool call's outcome (its budget decision and output): in the events, from which a resumed run
        replays it, and on a recording tool tape."""
        if self.tool_tape is not None and not self.tool_tape.replaying:
            self.tool_tape.write(outcome)
        self.emit(ToolCallOutcome(t=self.now(), call_id=call_id, outcome=outcome))

    def fork(self, parent: Conversation, agents: list[AgentRecord]) -> list[Conversation]:
        """The new sub-agents' conversations, forked from `parent`; in a resumed run, one that finished before the
        crash gets a replay of its record instead, which asks no model."""
        if self.record is not None:
            return self.record.fork(parent, [agent.id for agent in agents])
        return parent.fork(len(agents)) if agents else []

    def keep_recorded_finish(self, agent: AgentRecord) -> None:
        """In a resumed run, a sub-agent that finished before the crash ends as it did then."""
        if self.record is not None:
            self.record.keep_finish(agent)

    def emit_budget(self) -> None:
        self.emit(BudgetLeft(t=self.now(), tool_calls=self.budget.tool_calls_left, agents=self.budget.agents_left,
                             tokens=self.budget.tokens_left))

    def new_agent(self, task: str, wave: int) -> AgentRecord:
        record = AgentRecord(id=len(self.agents) + 1, task=task, wave=wave)
        self.agents.append(record)
        return record
