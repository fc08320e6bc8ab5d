"""Resuming a crashed run from its trace (`Swarm.resume`, `swarm run --resume TRACE`).

The resumed run is the same run played again: each agent is served its recorded model replies in order, keyed
by (agent id, model turn), and its recorded tool outcomes through a resuming `ToolTape`, until its record ends;
from there, per agent, the live model and the live tools take over. Agents are numbered in the order the
orchestrator spawned them, so the keys match. Every served reply is checked against the digest of the transcript
it answered, so a run that asks something else stops with ReplayMismatch instead of being served a wrong reply.

Sub-agents that finished before the crash replay on a conversation of their own, with no model behind it, and
keep their recorded status and result whatever happens; the others go live where their record ends.
The tool-call budget is booked up front with every recorded call (and every call in flight at the crash: it may
have run), so a live call is granted only if it fits beside all of them, whatever order the replay takes.
The resumed run appends to the trace it resumes, after a `run_resumed` event, without writing the replayed steps
again, so the trace holds the whole run once and can be resumed again.
"""

from __future__ import annotations

import collections
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel

from kimi_swarm.backend.chat.conversation import ChatBackend, Conversation, Reply, ReplyOptions
from kimi_swarm.backend.chat.messages import Message
from kimi_swarm.backend.chat.replay import ReplayMismatch
from kimi_swarm.tools import MCPServer

from .budget import Budget, Limits
from .events import (
    EVENT_ADAPTER,
    AgentFinished,
    AgentStarted,
    Event,
    ModelCallStarted,
    RunFinished,
    RunStarted,
    Tokens,
    ToolCallFinished,
    ToolCallOutcome,
    ToolCallStarted,
)
from .function_tools import Tool
from .records import AgentRecord
from .tape import ToolTape


class ResumeError(ValueError):
    """This trace cannot be resumed here; the message says why: which part of the run differs, a damaged line,
    or a run that already finished."""


class RecordEnded(RuntimeError):
    """A sub-agent that finished before the crash asked for a turn its record does not have (a limit that depends
    on timing ended it differently); it keeps its recorded result."""


def run_identity(backend: ChatBackend, tools: dict[str, Tool], servers: Sequence[MCPServer], limits: Limits,
                 options: ReplyOptions, context: Sequence[str] | None) -> dict[str, Any]:
    """What a run's first event records so that a resume can tell it is the same run (all but the task)."""
    declared = [tool.spec.model_dump(mode="json") for tool in tools.values()]
    labels = [f"mcp:{server.label}" for server in servers]
    return {
        "model": served_model(backend), "backend": backend_identity(backend), "tools": [*tools, *labels],
        "tools_digest": _digest(json.dumps([declared, labels], sort_keys=True)),
        "limits": limits.model_dump(), "reply_options": options.model_dump(),
        "context_digest": _digest(json.dumps(list(context))) if context else None,
    }


def backend_identity(backend: ChatBackend) -> str:
    """Which model answers: the backend (through recording wrappers) and its model name, or for the in-process
    engine the digest of its model's config."""
    inner = backend
    while isinstance(getattr(inner, "inner", None), ChatBackend):
        inner = inner.inner  # type: ignore[attr-defined]
    model = served_model(inner)
    if model is not None:
        return f"{inner.name} {model}"
    config = getattr(getattr(inner, "engine", None), "config", None)
    if isinstance(config, BaseModel):
        return f"{inner.name} (model config {_digest(config.model_dump_json())[:16]})"
    return inner.name


def served_model(backend: ChatBackend) -> str | None:
    """The model name a backend asks its server for (through a recording wrapper), for the run's identity;
    None where the backend has no such name (the in-process engine, a replay)."""
    model = getattr(backend, "model", None)
    if isinstance(model, str):
        return model
    inner = getattr(backend, "inner", None)
    return served_model(inner) if isinstance(inner, ChatBackend) else None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class RunRecord:
    """A crashed run's trace, read back: its identity, the replies and tool outcomes to serve, the agents that
    finished, and the events a resumed run must not write again."""

    def __init__(self, path: Path, events: list[Event], keep_bytes: int) -> None:
        self.path = path
        self.events = events
        self._keep_bytes = keep_bytes
        first = _identity_of(path, events[0])
        finished = next((e for e in events if isinstance(e, RunFinished)), None)
        if finished is not None:
            raise ResumeError(f"{path}: the run finished ({finished.status}); only a run that crashed can be resumed")
        self.identity: RunStarted = first
        self.elapsed = max(event.t for event in events)
        self._replies = {(e.agent_id, e.step): e for e in events if isinstance(e, Tokens) and e.step is not None
                         and e.content is not None}
        self.outcomes = [e.outcome for e in events if isinstance(e, ToolCallOutcome)]
        self._finished = {e.agent_id: e for e in events if isinstance(e, AgentFinished) and e.agent_id != 0}
        started = collections.Counter((e.agent_id, e.call_id) for e in events if isinstance(e, ToolCallStarted))
        ran = collections.Counter((e.outcome.agent_id, e.call_id) for e in events
                                  if isinstance(e, ToolCallOutcome) and e.outcome.executed)
        self.lost_tool_calls = sum((started - ran).values())
        self.spent_tool_calls = sum(ran.values()) + self.lost_tool_calls
        self._replayed = collections.Counter(key for e in events for key in _replayed_keys(e))

    @classmethod
    def read(cls, path: str | Path) -> RunRecord:
        """The record in `path`. Its last line may be cut off (the crash came mid-write): it is dropped, and the
        resumed run writes from there. Any other line that is not an event is an error naming the line."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ResumeError(f"cannot read the trace {path}: {error}") from None
        *lines, tail = data.split(b"\n")
        events: list[Event] = []
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    events.append(EVENT_ADAPTER.validate_json(line))
                except ValueError as error:
                    raise ResumeError(f"{path}:{number}: not a swarm event ({error})") from None
        keep = len(data)
        if tail.strip():
            try:
                events.append(EVENT_ADAPTER.validate_json(tail))
            except ValueError:
                keep -= len(tail)
        if not events:
            raise ResumeError(f"{path} holds no events; it cannot be resumed")
        return cls(path, events, keep)

    @property
    def task(self) -> str:
        return self.identity.task

    def check(self, task: str | None, identity: dict[str, Any]) -> None:
        """Refuse to resume with another task, model, tool set, limits, reply options or context: the message names
        each that differs."""
        recorded = self.identity
        differences = []
        if task is not None and task.strip() != recorded.task:
            differences.append(f"a different task: {recorded.task!r} (this run: {task.strip()!r})")
        if recorded.backend != identity["backend"]:
            differences.append(f"a different model: {recorded.backend} (this run: {identity['backend']})")
        if recorded.tools != identity["tools"]:
            differences.append(f"different tools: {', '.join(recorded.tools or []) or 'none'} (this run: "
                               f"{', '.join(identity['tools']) or 'none'})")
        elif recorded.tools_digest != identity["tools_digest"]:
            differences.append("different tools: the same names, but their descriptions or parameter schemas differ")
        for field in ("limits", "reply_options"):
            theirs, ours = getattr(recorded, field) or {}, identity[field]
            changed = [f"{name} {theirs.get(name)!r} (this run: {ours.get(name)!r})"
                       for name in sorted(set(theirs) | set(ours)) if theirs.get(name) != ours.get(name)]
            if changed:
                differences.append(f"different {field.replace('_', ' ')}: {', '.join(changed)}")
        if recorded.context_digest != identity["context_digest"]:
            differences.append("different context documents")
        if differences:
            raise ResumeError(f"cannot resume {self.path}: it is a run with " + "; ".join(differences))

    def open_for_append(self) -> IO[str]:
        """The trace, opened to go on: a line cut off by the crash is dropped first."""
        with self.path.open("r+b") as handle:
            handle.truncate(self._keep_bytes)
            if self._keep_bytes:
                handle.seek(self._keep_bytes - 1)
                if handle.read(1) != b"\n":
                    handle.write(b"\n")
        return self.path.open("a", encoding="utf-8")

    def tool_tape(self) -> ToolTape:
        return ToolTape.resume(self.path, self.outcomes)

    def budget(self, limits: Limits) -> Budget:
        return _ResumedBudget(limits, self.spent_tool_calls)

    def reply(self, agent_id: int, step: int, request: str) -> Reply | None:
        """The recorded reply of this turn, or None where the agent's record ends and the model takes over."""
        turn = self._replies.pop((agent_id, step), None)
        if turn is None:
            if agent_id in self._finished:
                raise RecordEnded(f"agent {agent_id} finished before the crash, and its record has no turn {step}")
            return None
        if turn.request is not None and turn.request != request:
            raise ReplayMismatch(f"{self.path}: agent {agent_id}'s turn {step} asks the model something else than the "
                                 "recorded run did (a prompt, a tool result or a sub-agent's result differs)")
        return Reply(content=turn.content or "", tool_calls=turn.tool_calls or [],
                     finish_reason=turn.finish_reason or "stop",  # type: ignore[arg-type]
                     prompt_tokens=turn.prompt_tokens, completion_tokens=turn.completion_tokens,
                     malformed=turn.malformed or [])

    def fork(self, parent: Conversation, agent_ids: list[int]) -> list[Conversation]:
        """The sub-agents' conversations: a finished one replays without the model, on a copy of the parent's
        messages (no fork: it would hold engine state for nothing), the others get live forks of `parent`."""
        going_on = [agent_id for agent_id in agent_ids if agent_id not in self._finished]
        forks = iter(parent.fork(len(going_on)) if going_on else [])
        return [next(forks) if agent_id in going_on else _RecordedConversation(parent.messages)
                for agent_id in agent_ids]

    def keep_finish(self, agent: AgentRecord) -> None:
        """A sub-agent that finished before the crash ends as it did then."""
        finished = self._finished.get(agent.id)
        if finished is not None and (agent.status, agent.result) != (finished.status, finished.result):
            agent.status, agent.result, agent.steps = finished.status, finished.result, finished.steps  # type: ignore
            agent.error = finished.result if finished.status == "failed" else None

    def replayed(self, event: Event) -> bool:
        """Whether `event` repeats one the trace holds (a replayed step), so it is not written again."""
        key = _key(event)
        if key is None or not self._replayed[key]:
            return False
        self._replayed[key] -= 1
        return True


def read_identity(path: str | Path) -> RunStarted:
    """What a trace's first event says identifies its run (`swarm run --resume` takes its limits from it)."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            first = handle.readline()
    except OSError as error:
        raise ResumeError(f"cannot read the trace {path}: {error}") from None
    try:
        event = EVENT_ADAPTER.validate_json(first)
    except ValueError:
        raise ResumeError(f"{path}:1: not a swarm event; is it a trace written by --trace?") from None
    return _identity_of(path, event)


def _identity_of(path: Path, first: Event) -> RunStarted:
    if type(first) is not RunStarted or first.tools_digest is None:
        raise ResumeError(f"{path} does not start with a run's identity (a trace written before runs could be "
                          "resumed, or not a swarm trace); it cannot be resumed")
    return first


def _key(event: Event) -> tuple | None:
    """What makes an event the same as a recorded one; None for events never replayed."""
    match event:
        case AgentStarted():
            return ("agent_started", event.agent_id)
        case AgentFinished():
            return ("agent_finished", event.agent_id, event.status, event.result)
        case ModelCallStarted() | Tokens():
            return (event.type, event.agent_id, event.step)
        case ToolCallStarted() | ToolCallFinished():
            return (event.type, event.agent_id, event.call_id)
        case ToolCallOutcome():
            return (event.type, event.outcome.agent_id, event.outcome.step, event.outcome.position)
    return None


def _replayed_keys(event: Event) -> list[tuple]:
    """The keys of the events a resumed run repeats because of this recorded one: a model call that ended (its
    reply is served) and a tool call with its outcome. A turn or a call the crash cut off runs again, written anew."""
    match event:
        case Tokens() if event.content is not None:
            return [("model_call_started", event.agent_id, event.step), ("tokens", event.agent_id, event.step)]
        case ToolCallOutcome() if event.outcome.executed:
            return [("tool_call_started", event.outcome.agent_id, event.call_id), ("tool_call_outcome",
                    event.outcome.agent_id, event.outcome.step, event.outcome.position)]
        case ModelCallStarted() | Tokens() | ToolCallStarted():
            return []
    key = _key(event)
    return [key] if key is not None else []


class _ResumedBudget(Budget):
    """Every recorded tool call is booked from the start; replaying one books nothing more."""

    def __init__(self, limits: Limits, spent_tool_calls: int) -> None:
        super().__init__(limits)
        self.tool_calls = spent_tool_calls

    def book_tool_call(self, executed: bool) -> None:
        """Booked up front."""


class _RecordedConversation(Conversation):
    """A finished sub-agent's transcript, rebuilt from its record; no model is asked."""

    def __init__(self, messages: list[Message]) -> None:
        self._messages = messages

    async def add(self, messages: list[Message]) -> None:
        self._messages.extend(messages)

    async def reply(self, options: ReplyOptions) -> Reply:
        raise RecordEnded("a finished sub-agent's replay asked the model for a turn")

    def fork(self, n: int) -> list[Conversation]:
        raise RecordEnded("a finished sub-agent's replay cannot fork")

    def close(self) -> None:
        """Nothing to release."""

    @property
    def messages(self) -> list[Message]:
        return list(self._messages)
