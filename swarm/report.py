"""A RunResult as a Markdown report: the answer, its sources with evidence, the agents, the usage."""

from __future__ import annotations

from .result import RunResult


def _cell(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


UNSUPPORTED_TITLE = "Cited but never read by this run (not a source)"
"""The heading over the URLs an answer cites that no tool result of the run came from."""


def markdown_report(result: RunResult) -> str:
    lines = [f"# {_cell(result.task, 200)}", ""]
    if result.partial:
        lines += [f"> **Partial result** ({result.stop_reason}): some agents did not finish.", ""]
    lines += [result.answer, "", "## Sources", ""]
    if result.citations:
        for number, citation in enumerate(result.citations, start=1):
            lines.append(f"{number}. <{citation.url}> — {citation.claim}")
            lines.append(f"   > {' '.join(citation.evidence.split())}")
    else:
        lines.append("No cited URL was seen in a tool result of this run.")
    if result.unsupported_citations:
        lines += ["", f"## {UNSUPPORTED_TITLE}", ""] + [f"- <{url}>" for url in result.unsupported_citations]
    lines += ["", "## Agents", "", "| # | wave | task | status | steps | tool calls |", "|---|---|---|---|---|---|"]
    for agent in result.agents:
        lines.append(f"| {agent.id} | {agent.wave} | {_cell(agent.task)} | {agent.status} | {agent.steps} "
                     f"| {agent.executed_tool_calls} |")
    usage = result.usage
    lines += [
        "", "## Usage", "",
        f"- tool calls: {usage.tool_calls}", f"- sub-agents: {usage.agents} in {usage.waves} wave(s)",
        f"- model calls: {usage.model_calls}",
        f"- tokens: {usage.prompt_tokens} in, {usage.completion_tokens} out",
        f"- critical steps: {usage.critical_steps}", f"- wall time: {usage.wall_seconds:.1f} s", "",
    ]
    return "\n".join(lines)
