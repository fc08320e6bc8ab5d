"""Agent swarms: an orchestrator fans a task out to up to 100 sub-agents within hard limits."""

from swarm.budget import Limits
from swarm.events import Event, read_trace
from swarm.orchestrator import RunStream, Swarm
from swarm.result import AgentRecord, Citation, RunResult, ToolCallRecord, Usage
from swarm.tape import ToolTape
from swarm.tool import Tool, TransientToolError, as_tool, tool

__all__ = [
    "AgentRecord", "Citation", "Event", "Limits", "RunResult", "RunStream", "Swarm", "Tool", "ToolCallRecord",
    "ToolTape", "TransientToolError", "Usage", "as_tool", "read_trace", "tool",
]
