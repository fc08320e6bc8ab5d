"""The exact texts the orchestrator and sub-agents see.

The embedded default model is trained on trajectories rendered from these same functions, so
they are the contract between the swarm and that model: change them and retrain.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

from kimi_swarm.backend.chat.messages import Message, ToolSpec

SPAWN_TOOL_NAME = "spawn_agents"

SPAWN_TOOL = ToolSpec(
    name=SPAWN_TOOL_NAME,
    description="Start one sub-agent per task; they run in parallel and their results come back together.",
    parameters={
        "type": "object",
        "properties": {
            "tasks": {"type": "array", "items": {"type": "string"},
                      "description": "One self-contained task per sub-agent."},
            "columns": {"type": "array", "items": {"type": "string"},
                        "description": "Column titles: each sub-agent answers with one row of a Markdown table with "
                                       "these columns, and the results come back as that table."},
            "final": {"type": "boolean",
                      "description": "With columns: the table is the answer to the user, and the run ends with it."},
        },
        "required": ["tasks"],
    },
)

ORCHESTRATOR_SYSTEM = (
    "You are the orchestrator of a research swarm. Split the user's task into independent sub-tasks and "
    "call spawn_agents with one task per sub-agent. When their results arrive, answer the user in plain "
    "text. Cite every fact with its source URL in square brackets, e.g. [http://example.org/page]."
)

SUBAGENT_TASK = "You are sub-agent {index} of {total}. Do only this task, using the tools: {task}\n"
SUBAGENT_INSTRUCTIONS = (
    SUBAGENT_TASK + "Answer in one or two sentences with the fact and its source URL in square brackets."
)
SUBAGENT_ROW_INSTRUCTIONS = (
    SUBAGENT_TASK + "Answer with one Markdown table row with the columns {header}, every source URL in square brackets."
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


def subagent_task_message(spawn_call_id: str, index: int, total: int, task: str,
                          columns: Sequence[str] | None = None) -> Message:
    """The tool turn a forked sub-agent sees in answer to the spawn call: its own task, and with `columns`
    the table row its answer must be."""
    if columns:
        text = SUBAGENT_ROW_INSTRUCTIONS.format(index=index, total=total, task=task, header=table_row(columns))
    else:
        text = SUBAGENT_INSTRUCTIONS.format(index=index, total=total, task=task)
    return Message(role="tool", tool_call_id=spawn_call_id, content=text)


def spawn_result_text(outcomes: Sequence[SubagentOutcome], columns: Sequence[str] | None = None) -> str:
    """What the orchestrator learns of a wave: each agent's task and result, or with `columns` one table.

    A sub-agent whose answer is not one row of that many cells gets a row that keeps everything it said: its
    task, then its status and answer."""
    if not columns:
        return "\n\n".join(f"Agent {i} ({o.status}) task: {o.task}\nResult: {o.result}"
                             for i, o in enumerate(outcomes, start=1))
    rows = [table_row(columns), table_row(["---"] * len(columns))]
    for outcome in outcomes:
        cells = table_cells(outcome.result)
        if outcome.status != "done" or cells is None or len(cells) != len(columns):
            said = f"({outcome.status}) {outcome.result}"
            cells = [outcome.task, said, *[""] * (len(columns) - 2)] if len(columns) > 1 else [said]
        rows.append(table_row(cells))
    return "\n".join(rows)


def spawn_result_message(spawn_call_id: str, outcomes: Sequence[SubagentOutcome],
                         columns: Sequence[str] | None = None) -> Message:
    """The tool turn the orchestrator sees once all sub-agents of a wave are done."""
    return Message(role="tool", tool_call_id=spawn_call_id, content=spawn_result_text(outcomes, columns))


def table_row(cells: Sequence[str]) -> str:
    """One Markdown table row; a cell's own line breaks and pipes are flattened so the row stays one row."""
    flat = [" ".join(cell.split()).replace("|", "/") for cell in cells]
    return "| " + " | ".join(flat) + " |"


def table_cells(text: str) -> list[str] | None:
    """The cells of `text` when it is exactly one Markdown table row, else None."""
    line = text.strip()
    if "\n" in line or len(line) < 2 or not (line.startswith("|") and line.endswith("|")):
        return None
    return [cell.strip() for cell in line[1:-1].split("|")]


def tool_result_message(call_id: str, text: str) -> Message:
    return Message(role="tool", tool_call_id=call_id, content=text)


def budget_spent_text(limit: int) -> str:
    return (f"Not executed: the run's budget of {limit} tool calls is spent. "
            "Answer now with what you have.")
