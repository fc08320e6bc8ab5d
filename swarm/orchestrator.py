"""The swarm: an orchestrator agent that fans a task out to sub-agents forked from its own conversation.

`spawn_agents(tasks)` forks the orchestrator's conversation right after the assistant turn that
called it — one child per accepted task, each answered with its own task — runs the children
concurrently (capped), and answers the orchestrator with their results. Waves repeat until the
orchestrator answers in plain text or a limit ends the run; either way a RunResult comes back.
MCP tool servers given as tools are opened at the start of each run and closed at its end, however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from kimi_swarm.backend.chat.conversation import ChatBackend, Conversation, ReplyOptions
from kimi_swarm.backend.chat.messages import ToolCall
from kimi_swarm.backend.engine.bridge import drain_while_running
from kimi_swarm.tools import MCPServer, MCPServerError

from . import prompts
from .agent import SpawnReply, run_agent
from .budget import Limits
from .citations import extract_citations, unsupported_urls
from .events import AgentFinished, AgentStarted, Event, RunFinished, RunResumed, RunStarted
from .function_tools import Tool, as_tool, mcp_tool
from .result import COMPLETE_STATUSES, AgentRecord, RunResult, Usage
from .resume import RunRecord, run_identity
from .state import RunState
from .tape import ToolTape


class Swarm:
    """A planner plus up to `max_agents` sub-agents over one backend, within hard limits.

    Every limit is checked before anything is spent: a tool call over `max_tool_calls` is answered
    "budget spent" instead of being executed, tasks over `max_agents` are refused in the spawn result,
    and the deadline or `cancel()` stops every agent and still returns the partial result.
    With `tool_tape=ToolTape.record(path)` every tool outcome is recorded; `ToolTape.replay(path)` plays
    them back (with kimi_swarm.backend.ReplayBackend for the model) to reproduce a run exactly, and a replay
    that departs from its recording stops and raises ToolTapeMismatch or ReplayMismatch.
    With `trace_path=` the trace holds enough to `resume` the run after a crash.

    An `MCPServer` among the tools is opened (a fresh connection) at the start of each run, inside its limits:
    its tools are declared after the others, marked untrusted, and every call of one goes through the same
    limits as any tool. A server that cannot start raises MCPServerError from `run`; the servers are closed
    when the run ends, cancelled, past its deadline or failed.
    """

    def __init__(
        self,
        backend: ChatBackend,
        tools: Sequence[Tool | Callable[..., Any] | MCPServer] = (),
        *,
        limits: Limits | None = None,
        reply_options: ReplyOptions | None = None,
        trace_path: str | Path | None = None,
        tool_tape: ToolTape | None = None,
        **limit_values: Any,
    ) -> None:
        """`limits`, or any of its fields as keywords (`max_tool_calls=1500, deadline=600`); the rest keep the
        defaults declared in `Limits`."""
        if limits is not None and limit_values:
            raise TypeError(f"pass limits=Limits(...) or limit keywords ({', '.join(limit_values)}), not both")
        self.backend = backend
        self.tools = _tools_by_name([item for item in tools if not isinstance(item, MCPServer)])
        self.servers = [item for item in tools if isinstance(item, MCPServer)]
        self.limits = limits if limits is not None else Limits(**limit_values)
        self.reply_options = reply_options or ReplyOptions()
        self.trace_path = Path(trace_path) if trace_path else None
        self.tool_tape = tool_tape
        self._cancel_events: set[asyncio.Event] = set()
        self._listeners: list[Callable[[Event], None]] = []

    def add_listener(self, callback: Callable[[Event], None]) -> None:
        """Call `callback(event)` for every event of later runs (a live display, a log)."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[Event], None]) -> None:
        self._listeners.remove(callback)

    def cancel(self) -> None:
        """Stop every running run promptly; each `run()` returns its partial result (e.g. on Ctrl-C)."""
        for event in self._cancel_events:
            event.set()

    def run_sync(self, task: str, context: Sequence[str] | None = None) -> RunResult:
        return asyncio.run(self.run(task, context))

    def stream(self, task: str, context: Sequence[str] | None = None) -> RunStream:
        """`async for event in swarm.stream(task)`; the RunResult is on `.result` once the stream ends."""
        return RunStream(self, task, context)

    async def run(self, task: str, context: Sequence[str] | None = None) -> RunResult:
        if not task.strip():
            raise ValueError("the task is empty")
        if isinstance(context, str):
            context = [context]
        identity = self._identity(context)
        if self.tool_tape is not None:
            self.tool_tape.begin_run()
        trace_file = self.trace_path.open("w", encoding="utf-8") if self.trace_path else None
        state = RunState(task, dict(self.tools), self.limits, self.reply_options, trace_file, list(self._listeners),
                         self.tool_tape)
        state.emit(RunStarted(t=0.0, task=task, **identity))
        return await self._drive(state, context)

    async def resume(self, trace_path: str | Path, *, task: str | None = None,
                     context: Sequence[str] | None = None) -> RunResult:
        """Continue the run recorded in `trace_path` (a `trace_path=` or `swarm run --trace` file) after a crash, and
        append to that trace, so it can be resumed again.

        Sub-agents that finished keep their results and are not rerun; the others and the orchestrator continue from
        their last completed turn, every recorded reply and tool outcome served from the trace instead of asked or
        run again. The budget spans the whole run. This swarm must be the recorded run's: the same tools, model,
        limits, reply options and `context` (and `task`, when given), or ResumeError says which differs. The result's
        `usage.wall_seconds` is the time the run ran, before the crash and after; the time it lay crashed is not in
        it, nor in the deadline."""
        if isinstance(context, str):
            context = [context]
        if self.tool_tape is not None:
            raise ValueError("a resumed run replays its tool outcomes from its trace; pass no tool_tape")
        if self.trace_path is not None and self.trace_path.resolve() != Path(trace_path).resolve():
            raise ValueError(f"a resumed run appends to the trace it resumes ({trace_path}), not to {self.trace_path}")
        record = RunRecord.read(trace_path)
        identity = self._identity(context)
        record.check(task, identity)
        state = RunState(record.task, dict(self.tools), self.limits, self.reply_options, record.open_for_append(),
                         list(self._listeners), record.tool_tape(), record=record)
        state.emit(RunResumed(t=state.now(), task=record.task, lost_tool_calls=record.lost_tool_calls, **identity))
        return await self._drive(state, context)

    def _identity(self, context: Sequence[str] | None) -> dict[str, Any]:
        return run_identity(self.backend, self.tools, self.servers, self.limits, self.reply_options, context)

    async def _drive(self, state: RunState, context: Sequence[str] | None) -> RunResult:
        """Run from `state` to the result, which the trace ends with however the run ends."""
        servers = [server.clone() for server in self.servers]
        self._cancel_events.add(state.cancel_requested)
        try:
            try:
                await self._run_until_stopped(state, context, servers)
            except asyncio.CancelledError:
                _finish(state)  # the caller cancelled us: the trace still ends with the partial result
                raise
            result = _finish(state)
            if state.replay_divergence is not None:
                raise state.replay_divergence
            return result
        finally:
            self._cancel_events.discard(state.cancel_requested)
            await asyncio.gather(*(server.aclose() for server in servers))
            state.close_trace()

    async def _run_until_stopped(self, state: RunState, context: Sequence[str] | None,
                                 servers: list[MCPServer]) -> None:
        """Run the orchestrator; on the deadline or a cancel request, cancel it (and with it every sub-agent)."""
        main = asyncio.create_task(self._orchestrate(state, context, servers))
        cancel_wait = asyncio.create_task(state.cancel_requested.wait())
        try:
            done, _ = await asyncio.wait({main, cancel_wait}, timeout=state.time_left(),
                                         return_when=asyncio.FIRST_COMPLETED)
            if main not in done:
                state.stop_reason = state.stop_reason or ("cancelled" if cancel_wait in done else "deadline")
                main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await main
        except asyncio.CancelledError:
            state.stop_reason = "cancelled"
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await main
            raise
        finally:
            cancel_wait.cancel()

    async def _orchestrate(self, state: RunState, context: Sequence[str] | None, servers: list[MCPServer]) -> None:
        await _open_servers(state, servers)
        specs = [prompts.SPAWN_TOOL] + [t.spec for t in state.tools.values()]
        conversation = await self.backend.open(prompts.orchestrator_messages(state.task, context), specs)
        record = state.orchestrator
        state.emit(AgentStarted(t=state.now(), agent_id=0, task=state.task, wave=0))

        async def spawn(parent: Conversation, call: ToolCall) -> SpawnReply:
            return await _spawn_wave(state, parent, call)

        try:
            await run_agent(state, record, conversation, max_steps=self.limits.max_orchestrator_steps, spawn=spawn)
        finally:
            record.transcript = list(conversation.messages)
            conversation.close()
            state.critical_steps += record.steps
            state.emit(AgentFinished(t=state.now(), agent_id=0, status=record.status, steps=record.steps,
                                     tool_calls=record.executed_tool_calls, result=record.result))


async def _spawn_wave(state: RunState, parent: Conversation, call: ToolCall) -> SpawnReply:
    try:
        request = SpawnRequest.parse(call.arguments)
    except ValueError as error:
        return SpawnReply(prompts.tool_result_message(call.id, f"Error: {error}."), str(error))
    tasks = request.tasks
    granted = state.budget.take_agents(len(tasks))
    state.waves += 1
    accepted = tasks[:granted]
    records = [state.new_agent(task, state.waves) for task in accepted]
    children = state.fork(parent, records)
    runs = [_run_subagent(state, record, child, call.id, index, len(accepted), request.columns)
            for index, (record, child) in enumerate(zip(records, children), start=1)]
    try:
        await asyncio.gather(*runs)
    finally:
        state.critical_steps += max((r.steps for r in records), default=0)
    refusal = f"Not started: the run's cap of {state.limits.max_agents} sub-agents is reached."
    outcomes = [prompts.SubagentOutcome(task=r.task, status=r.status, result=r.result) for r in records]
    outcomes += [prompts.SubagentOutcome(task=task, status="refused", result=refusal) for task in tasks[granted:]]
    state.emit_budget()
    message = prompts.spawn_result_message(call.id, outcomes, request.columns)
    return SpawnReply(message, answer=message.content if request.final else None)


async def _run_subagent(state: RunState, record: AgentRecord, conversation: Conversation, spawn_call_id: str,
                        index: int, total: int, columns: list[str] | None) -> None:
    try:
        async with state.agent_slots:
            state.emit(AgentStarted(t=state.now(), agent_id=record.id, task=record.task, wave=record.wave))
            task_message = prompts.subagent_task_message(spawn_call_id, index, total, record.task, columns)
            await conversation.add([task_message])
            await run_agent(state, record, conversation, max_steps=state.limits.max_agent_steps)
    except asyncio.CancelledError:
        if record.status == "pending":
            record.status = "deadline" if state.stop_reason == "deadline" else "cancelled"
            record.result = f"(not started: {record.status})"
        raise
    finally:
        record.transcript = list(conversation.messages)
        conversation.close()
        state.keep_recorded_finish(record)
        state.emit(AgentFinished(t=state.now(), agent_id=record.id, status=record.status, steps=record.steps,
                                 tool_calls=record.executed_tool_calls, result=record.result))


class SpawnRequest(BaseModel):
    """A spawn_agents call's arguments: the tasks, and optionally the table columns of their answers and
    whether that table ends the run as its answer."""

    tasks: list[str]
    columns: list[str] | None = None
    final: bool = False

    @classmethod
    def parse(cls, arguments: str) -> SpawnRequest:
        """The request, or ValueError with a message the model can act on."""
        try:
            parsed = json.loads(arguments or "{}")
        except json.JSONDecodeError as error:
            raise ValueError(f"spawn_agents arguments are not valid JSON ({error.msg})") from None
        tasks = parsed.get("tasks") if isinstance(parsed, dict) else None
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) and t.strip() for t in tasks):
            raise ValueError("spawn_agents needs {\"tasks\": [...]} with at least one non-empty task string")
        columns = parsed.get("columns")
        if columns is not None and (not isinstance(columns, list) or not columns
                                    or not all(isinstance(c, str) and c.strip() for c in columns)):
            raise ValueError("spawn_agents \"columns\" must be a list of non-empty column titles")
        final = parsed.get("final", False)
        if not isinstance(final, bool):
            raise ValueError("spawn_agents \"final\" must be true or false")
        if final and not columns:
            raise ValueError("spawn_agents \"final\": true needs \"columns\": the table it makes the answer")
        return cls(tasks=tasks, columns=columns, final=final)


async def _open_servers(state: RunState, servers: list[MCPServer]) -> None:
    """Open the servers side by side and add their tools to the run's; this runs inside the run's deadline
    and cancellation, like the agents."""
    outcomes = await asyncio.gather(*(server.open() for server in servers), return_exceptions=True)
    failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    if failures:
        raise failures[0]
    for server in servers:
        for spec in server.tools:
            if spec.name in state.tools or spec.name == prompts.SPAWN_TOOL_NAME:
                raise MCPServerError(f"MCP server `{server.label}` has a tool named {spec.name!r}, and so does "
                                     "another tool of the run: tool names must be unique")
            state.tools[spec.name] = mcp_tool(server, spec)
            state.tool_slots[spec.name] = asyncio.Semaphore(state.limits.max_tool_concurrency)


def _tools_by_name(tools: Sequence[Tool | Callable[..., Any]]) -> dict[str, Tool]:
    by_name: dict[str, Tool] = {}
    for item in tools:
        converted = as_tool(item)
        if converted.name == prompts.SPAWN_TOOL_NAME:
            raise ValueError(f"{prompts.SPAWN_TOOL_NAME!r} is reserved for the orchestrator")
        if converted.name in by_name:
            raise ValueError(f"two tools are named {converted.name!r}; give one another name with @tool(name=...)")
        by_name[converted.name] = converted
    return by_name


def _finish(state: RunState) -> RunResult:
    result = _result(state)
    state.emit(RunFinished(t=state.now(), status=result.status, partial=result.partial, stop_reason=result.stop_reason,
                           answer=result.answer, usage=result.usage.model_dump()))
    result.trace = list(state.events)
    return result


def _result(state: RunState) -> RunResult:
    orchestrator = state.orchestrator
    incomplete = [a for a in state.agents if a.status not in COMPLETE_STATUSES]
    if orchestrator.status in ("done", "budget"):
        answer = orchestrator.result
    else:
        answer = _partial_answer(state)
    usage = Usage(
        tool_calls=state.budget.tool_calls, agents=len(state.agents), prompt_tokens=state.prompt_tokens,
        completion_tokens=state.completion_tokens, model_calls=state.model_calls, waves=state.waves,
        critical_steps=state.critical_steps, wall_seconds=state.now(),
    )
    stop_reason = state.stop_reason or (orchestrator.status if orchestrator.status != "done" else None)
    if stop_reason is None and incomplete:
        stop_reason = incomplete[0].status
    return RunResult(
        task=state.task, answer=answer, status=orchestrator.status,
        partial=orchestrator.status != "done" or bool(incomplete), stop_reason=stop_reason,
        citations=extract_citations(answer, state.evidence),
        unsupported_citations=unsupported_urls(answer, state.evidence), orchestrator=orchestrator,
        agents=list(state.agents), usage=usage,
    )


def _partial_answer(state: RunState) -> str:
    """When the orchestrator could not answer: say why, then every sub-agent finding so far."""
    reason = state.stop_reason or state.orchestrator.status
    lines = [f"Partial result ({reason}): the orchestrator did not finish. {state.orchestrator.result}".strip()]
    for agent in state.agents:
        if agent.result and agent.status != "refused":
            lines.append(f"- Agent {agent.id} ({agent.status}) — {agent.task}: {agent.result}")
    return "\n".join(lines)


class RunStream:
    """Async iterator over a run's events; `.result` holds the RunResult when iteration ends.

    Leaving the loop early cancels the run.
    """

    def __init__(self, swarm: Swarm, task: str, context: Sequence[str] | None) -> None:
        self._swarm = swarm
        self._task = task
        self._context = context
        self.result: RunResult | None = None

    async def __aiter__(self) -> AsyncIterator[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._swarm.add_listener(queue.put_nowait)
        run = asyncio.create_task(self._swarm.run(self._task, self._context))
        try:
            async for event in drain_while_running(queue, run):
                yield event
            self.result = run.result()
        finally:
            self._swarm.remove_listener(queue.put_nowait)
            if not run.done():
                run.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await run
