"""What a run returns: the answer, its citations, every agent's record, usage and the event trace."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from .events import Event
from .records import COMPLETE_STATUSES, FAILED_STATUSES, AgentRecord, AgentStatus, Citation, ToolCallRecord, Usage
from .report_html import render_report

__all__ = ["COMPLETE_STATUSES", "FAILED_STATUSES", "AgentRecord", "AgentStatus", "Citation", "RunResult",
           "ToolCallRecord", "Usage"]


class RunResult(BaseModel):
    task: str
    answer: str
    status: AgentStatus
    partial: bool
    stop_reason: str | None = None
    citations: list[Citation] = Field(default_factory=list)
    unsupported_citations: list[str] = Field(
        default_factory=list, description="URLs the answer cites in square brackets that no tool result of the run "
                                          "came from: sources the model never read")
    orchestrator: AgentRecord
    agents: list[AgentRecord] = Field(default_factory=list)
    usage: Usage
    trace: list[Event] = Field(default_factory=list, exclude=True)

    def summary_json(self, indent: int | None = 2) -> str:
        """The result as JSON without transcripts, tool outputs and trace: what `swarm run --json` prints."""
        agent_detail = {"transcript": True, "tool_calls": {"__all__": {"output"}}}
        return self.model_dump_json(indent=indent, exclude={
            "orchestrator": agent_detail, "agents": {"__all__": agent_detail},
        })

    def report_html(self, path: str | Path | None = None) -> str:
        """The run as one self-contained HTML page (timeline, answer and sources, budget and tokens, every
        agent's transcript), also written to `path` when one is given."""
        page = render_report(self.trace, self)
        if path is not None:
            Path(path).write_text(page, encoding="utf-8")
        return page
