"""The exact texts the orchestrator and sub-agents see.

The embedded default model is trained on trajectories rendered from these same functions, so
they are the contract between the swarm and that model: change them and retrain.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

from backend.messages import Message, ToolSpec

SPAWN_TOOL_NAME = "spawn_agents"

SPAWN_TOOL = ToolSpec(
    name=SPAWN_TOOL_NAME,
    description="Start one sub-agent per task; they run in parallel and their results come back together.",
    parameters={
        "type": "object",
        "properties": {"tasks": {"type": "array", "items": {"type": "string"},
                                 "description": "One self-contained task per sub-agent."}},
        "required": ["tasks"],
    },
)

ORCHESTRATOR_SYSTEM = (
    "You are the orchestrator of a research swarm. Split the user's task into independent sub-tasks and "
    "call spawn_agents with one task per sub-agent. When their results arrive, answer the user in plain "
    "text. Cite every fact with its source URL in square brackets, e.g. [http://example.org/page]."
)

SUBAGENT_INSTRUCTIONS = (
    "You are sub-agent {index} of {total}. Do only this task, using the tools: {task}\n"
    "Answer in one or two sentences with the fact and its source URL in square brackets."
)


class SubagentOutcome(BaseModel):
    """What the orchestrator learns about one sub-agent."""

    task: str
    status: str
    result: str


def orchestrator_messages(task: str, context: Sequence[str] | None = None) -> list[Message]:
    """System prompt, optional shared context documents, then the user's task."""
    messages = [Message(role="system", content=ORCHESTRATOR_SYSTEM)]
    for number, document in enumerate(context or [], start=1):
        messages.append(Message(role="user", content=f"Context document {number}:\n{document}"))
    messages.append(Message(role="user", content=task))
    return messages


def subagent_task_message(spawn_call_id: str, index: int, total: int, task: str) -> Message:
    """The tool turn a forked sub-agent sees in answer to the spawn call: its own task."""
    text = SUBAGENT_INSTRUCTIONS.format(index=index, total=total, task=task)
    return Message(role="tool", tool_call_id=spawn_call_id, content=text)


def spawn_result_message(spawn_call_id: str, outcomes: Sequence[SubagentOutcome]) -> Message:
    """The tool turn the orchestrator sees once all sub-agents of a wave are done."""
    lines = [f"Agent {i} ({o.status}) task: {o.task}\nResult: {o.result}" for i, o in enumerate(outcomes, start=1)]
    return Message(role="tool", tool_call_id=spawn_call_id, content="\n\n".join(lines))


def tool_result_message(call_id: str, text: str) -> Message:
    return Message(role="tool", tool_call_id=call_id, content=text)


def budget_spent_text(limit: int) -> str:
    return (f"Not executed: the run's budget of {limit} tool calls is spent. "
            "Answer now with what you have.")
