"""One agent's loop: ask the model, run the tool calls it makes (within the limits), until it answers.

The orchestrator and every sub-agent run this same loop; the orchestrator passes a `spawn` handler
for its `spawn_agents` calls. A call the limits do not allow is answered, not executed, so the
conversation stays well-formed and the model can answer with what it has.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import httpx

from kimi_swarm.backend.chat.conversation import Conversation
from kimi_swarm.backend.chat.messages import Message, ToolCall
from kimi_swarm.backend.chat.replay import ReplayMismatch
from kimi_swarm.tools import ToolError, wrap_untrusted

from . import prompts
from .events import ToolCallFinished, ToolCallStarted
from .function_tools import Tool, ToolArgumentsError, TransientToolError, render_output
from .result import AgentRecord, ToolCallRecord
from .state import RunState
from .tape import ToolOutcome, ToolTapeMismatch


class SpawnReply(NamedTuple):
    """How one spawn_agents call went: the tool result for the orchestrator, the malformed-call problem (or
    None), and the run's answer when the call asked for its table to be final (or None)."""

    message: Message
    problem: str | None = None
    answer: str | None = None


SpawnHandler = Callable[[Conversation, ToolCall], Awaitable[SpawnReply]]

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TransientToolError, TimeoutError, ConnectionError, httpx.TimeoutException, httpx.NetworkError,
)
REPLAY_DIVERGENCE = (ReplayMismatch, ToolTapeMismatch)
"""A replay asked for something its recording does not have: the whole run stops and raises it."""
RETRY_BASE_SECONDS = 0.2
PROMPT_CHARS_PER_TOKEN = 3


class AgentStopped(Exception):
    """The agent ends early; `status` says which limit or failure ended it."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def correction_text(problems: list[str]) -> str:
    return ("Your last reply could not be used: " + "; ".join(problems)
            + ". Reply again with well-formed tool calls or a plain-text answer.")


def step_limit_text(limit: int) -> str:
    return f"(stopped: the step limit of {limit} model turns was reached before an answer)"


async def run_agent(state: RunState, record: AgentRecord, conversation: Conversation, *,
                    max_steps: int, spawn: SpawnHandler | None = None) -> None:
    """Drive `conversation` until the agent answers or a limit stops it; the outcome goes into `record`."""
    record.status = "running"
    corrections = 0
    refused_for_budget = False
    try:
        while True:
            if record.steps >= max_steps:
                raise AgentStopped("step_limit", step_limit_text(max_steps))
            cap = _token_reservation(state, conversation)
            if not state.budget.try_reserve_tokens(cap):
                raise AgentStopped("token_limit", "(stopped: the run's token budget is spent)")
            used = 0
            try:
                reply = await state.reply(record.id, record.steps + 1, conversation)
                used = reply.prompt_tokens + reply.completion_tokens
            finally:
                state.budget.settle_tokens(cap, used)
            record.steps += 1
            state.book_reply(record.id, reply)
            if reply.malformed:
                corrections = _count_correction(state, corrections, reply.malformed)
                await conversation.add([Message(role="user", content=correction_text(reply.malformed))])
                continue
            if not reply.tool_calls:
                record.result = reply.content
                record.status = "budget" if refused_for_budget else "done"
                return
            if refused_for_budget:
                raise AgentStopped("budget", reply.content or "(stopped: the tool-call budget is spent)")
            results, problems, refused, answer = await _run_calls(state, record, conversation, reply.tool_calls,
                                                                  spawn)
            refused_for_budget |= refused
            if problems:
                corrections = _count_correction(state, corrections, problems)
            await conversation.add(results)
            if answer is not None:
                record.result = answer
                record.status = "budget" if refused_for_budget else "done"
                return
    except AgentStopped as stop:
        record.status = stop.status  # type: ignore[assignment]
        record.result = record.result or str(stop)
    except asyncio.CancelledError:
        record.status = "deadline" if state.stop_reason == "deadline" else "cancelled"  # type: ignore[assignment]
        record.result = record.result or f"(stopped: {record.status})"
        raise
    except Exception as error:  # a failing agent must not fail the run
        record.status = "failed"
        record.error = f"{type(error).__name__}: {error}"
        record.result = record.result or f"(failed: {record.error})"
        if isinstance(error, REPLAY_DIVERGENCE):
            state.abort_replay(error)


def _token_reservation(state: RunState, conversation: Conversation) -> int:
    """What a model turn may cost, reserved before it runs: the prompt estimated generously at one token
    per three characters, plus the completion cap."""
    if state.limits.token_budget is None:
        return state.options.max_tokens
    characters = sum(len(m.content) + sum(len(c.arguments) + len(c.name) for c in m.tool_calls)
                     for m in conversation.messages)
    return characters // PROMPT_CHARS_PER_TOKEN + state.options.max_tokens


def _count_correction(state: RunState, corrections: int, problems: list[str]) -> int:
    corrections += 1
    if corrections > state.limits.max_corrections:
        raise AgentStopped("failed", f"(failed: more than {state.limits.max_corrections} malformed replies; "
                                     f"last: {'; '.join(problems)})")
    return corrections


async def _run_calls(state: RunState, record: AgentRecord, conversation: Conversation, calls: list[ToolCall],
                     spawn: SpawnHandler | None) -> tuple[list[Message], list[str], bool, str | None]:
    """Answer every call of one assistant turn, in order (the agent's record lists them in call order,
    however they finish): (results, problems, refused for budget, the run's answer if a spawn made it).
    Spawn calls go last: the fork happens after the other calls are answered, so each child's transcript
    is complete."""
    spawn_calls = [c for c in calls if c.name == prompts.SPAWN_TOOL_NAME]
    other_calls = [c for c in calls if c.name != prompts.SPAWN_TOOL_NAME]
    first_record = len(record.tool_calls)
    outcomes = await asyncio.gather(*(_run_call(state, record, call, position)
                                      for position, call in enumerate(other_calls)))
    order = {call.id: position for position, call in enumerate(other_calls)}
    record.tool_calls[first_record:] = sorted(record.tool_calls[first_record:], key=lambda r: order[r.call_id])
    answers = {call.id: message for call, (message, _, _) in zip(other_calls, outcomes)}
    problems = [problem for _, problem, _ in outcomes if problem]
    refused = any(refused for _, _, refused in outcomes)
    if spawn_calls and spawn is None:  # a tool this agent does not have: a correction, like an unknown tool
        for call in spawn_calls:
            text = "Not executed: only the orchestrator can start sub-agents. Do your task with your tools."
            answers[call.id] = prompts.tool_result_message(call.id, text)
        problems.append(f"{prompts.SPAWN_TOOL_NAME} is the orchestrator's tool, not a sub-agent's")
    elif spawn_calls:
        primary, extra = spawn_calls[0], spawn_calls[1:]
        for call in extra:
            text = "Not executed: call spawn_agents once per turn, with all tasks in one list."
            answers[call.id] = prompts.tool_result_message(call.id, text)
        before = [answers[c.id] for c in calls if c.id in answers]
        if before:
            await conversation.add(before)
        spawned = await spawn(conversation, primary)
        return [spawned.message], problems + ([spawned.problem] if spawned.problem else []), refused, spawned.answer
    return [answers[c.id] for c in calls], problems, refused, None


async def _run_call(state: RunState, record: AgentRecord, call: ToolCall,
                    position: int) -> tuple[Message, str | None, bool]:
    """(tool result message, malformed-call problem or None, refused for budget)."""
    tool = state.tools.get(call.name)
    if tool is None:
        known = ", ".join(sorted(state.tools)) or "none"
        problem = f"unknown tool {call.name!r} (tools: {known})"
        return _not_executed(state, record, call, f"Error: {problem}."), problem, False
    try:
        arguments = tool.validate(call.arguments)
    except ToolArgumentsError as error:
        problem = f"bad arguments for {call.name}: {error}"
        return _not_executed(state, record, call, f"Error: {problem}."), problem, False
    outcome = await _execute(state, record, call, tool, arguments, position)
    if not outcome.executed:
        return _not_executed(state, record, call, outcome.output, refused=True), None, True
    if outcome.evidence is not None:
        state.evidence.add(outcome.evidence, source_url=outcome.source_url)
    return prompts.tool_result_message(call.id, outcome.output), None, False


async def _execute(state: RunState, record: AgentRecord, call: ToolCall, tool: Tool, arguments: dict,
                   position: int) -> ToolOutcome:
    """Take the budget and run the call (its record and events included); a refused call comes back not
    executed. Replaying a tool tape, the budget decision and the outcome both come from the recording (a resumed
    run's tape has none for a call past its record: that call runs live)."""
    tape = state.tool_tape
    place = dict(agent_id=record.id, step=record.steps, position=position, tool=tool.name, arguments=call.arguments)
    replayed = tape.take(**place) if tape is not None and tape.replaying else None
    if replayed is not None:
        allowed = replayed.executed
        state.budget.book_tool_call(allowed)
    else:
        allowed = state.budget.try_tool_call()
    if not allowed:
        outcome = replayed or ToolOutcome(**place, executed=False, ok=False,
                                          output=prompts.budget_spent_text(state.limits.max_tool_calls))
    else:
        state.emit(ToolCallStarted(t=state.now(), agent_id=record.id, call_id=call.id, tool=call.name,
                                   arguments=call.arguments))
        state.emit_budget()
        started = time.perf_counter()
        if replayed is not None:
            outcome = replayed
        else:
            async with state.tool_slots[tool.name]:
                outcome = await _invoke_with_retries(state, tool, arguments, place)
        seconds = time.perf_counter() - started
        record.tool_calls.append(ToolCallRecord(call_id=call.id, tool=call.name, arguments=call.arguments,
                                                executed=True, ok=outcome.ok, output=outcome.output,
                                                attempts=outcome.attempts, seconds=seconds))
        state.emit(ToolCallFinished(t=state.now(), agent_id=record.id, call_id=call.id, tool=call.name,
                                    ok=outcome.ok, executed=True, attempts=outcome.attempts, seconds=seconds,
                                    error=None if outcome.ok else outcome.output))
    state.record_outcome(call.id, outcome)
    return outcome


def _not_executed(state: RunState, record: AgentRecord, call: ToolCall, text: str, refused: bool = False) -> Message:
    record.tool_calls.append(ToolCallRecord(call_id=call.id, tool=call.name, arguments=call.arguments,
                                            executed=False, ok=False, output=text))
    state.emit(ToolCallFinished(t=state.now(), agent_id=record.id, call_id=call.id, tool=call.name, ok=False,
                                executed=False, attempts=0, seconds=0.0, error=text, refused=refused))
    return prompts.tool_result_message(call.id, text)


async def _invoke_with_retries(state: RunState, tool: Tool, arguments: dict, place: dict) -> ToolOutcome:
    """Run the tool; transient failures are retried with exponential backoff. Errors become outcomes.
    `place` says where in the run the call is (the tool tape's key)."""
    timeout = tool.timeout or state.limits.tool_timeout
    retries = state.limits.tool_retries if tool.retries is None else tool.retries
    attempt = 0
    while True:
        attempt += 1
        try:
            value = await asyncio.wait_for(tool.invoke(arguments), timeout)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            transient = isinstance(error, TRANSIENT_ERRORS) and not isinstance(error, ToolError)
            if transient and attempt <= retries:
                await asyncio.sleep(RETRY_BASE_SECONDS * 2 ** (attempt - 1))
                continue
            reason = f"timed out after {timeout:g} s" if isinstance(error, TimeoutError) and not str(error) else (
                f"{type(error).__name__}: {error}")
            tried = f" (after {attempt} attempts)" if attempt > 1 else ""
            output = bounded_output(f"Error from {tool.name}{tried}: {reason}", state.limits.max_tool_output_chars)
            return ToolOutcome(**place, executed=True, ok=False, output=output, attempts=attempt)
        text = bounded_output(render_output(value), state.limits.max_tool_output_chars)
        source_url = _source_url(value)
        output = wrap_untrusted(text, source_url or tool.name) if tool.untrusted else text
        return ToolOutcome(**place, executed=True, ok=True, output=output, attempts=attempt, evidence=text,
                           source_url=source_url)


def bounded_output(text: str, limit: int) -> str:
    """At most `limit` characters of a tool's output, then a marker saying how much was cut: the result goes
    into the agent's context, every later request, the records and the trace, so one huge result must not."""
    if len(text) <= limit:
        return text
    return (f"{text[:limit]}\n[truncated: the tool returned {len(text):,} characters; the last "
            f"{len(text) - limit:,} were cut (limit: {limit:,})]")


def _source_url(value: object) -> str | None:
    url = getattr(value, "url", None)
    return url if isinstance(url, str) else None


