"""kimi-swarm: agent swarms on one long shared context.

An orchestrator fans a task out to up to 100 sub-agents within hard limits, over any chat backend: the
in-process Kimi Linear engine (`kimi_swarm.backend`), which forks one long session into every sub-agent, or an
OpenAI-compatible server. `kimi_swarm.tools` has the web tools, `rank` and `MCPServer` (an MCP server's tools);
`kimi_swarm.kernels` the Triton kernels beside their PyTorch references.

    from kimi_swarm import Swarm
    from kimi_swarm.backend import EngineBackend
    from kimi_swarm.tools import MCPServer, Web, rank
"""

from .budget import Limits
from .events import (
    AgentFinished,
    AgentStarted,
    BudgetLeft,
    Event,
    ModelCallStarted,
    RunFinished,
    RunStarted,
    Tokens,
    ToolCallFinished,
    ToolCallStarted,
    read_trace,
)
from .launch import LaunchError
from .orchestrator import RunStream, Swarm
from .result import AgentRecord, AgentStatus, Citation, RunResult, ToolCallRecord, Usage
from .tape import ToolTape, ToolTapeMismatch
from .tool import Tool, ToolArgumentsError, TransientToolError, as_tool, tool

__all__ = [
    "AgentFinished",
    "AgentRecord",
    "AgentStarted",
    "AgentStatus",
    "BudgetLeft",
    "Citation",
    "Event",
    "LaunchError",
    "Limits",
    "ModelCallStarted",
    "RunFinished",
    "RunResult",
    "RunStarted",
    "RunStream",
    "Swarm",
    "Tokens",
    "Tool",
    "ToolArgumentsError",
    "ToolCallFinished",
    "ToolCallRecord",
    "ToolCallStarted",
    "ToolTape",
    "ToolTapeMismatch",
    "TransientToolError",
    "Usage",
    "as_tool",
    "read_trace",
    "tool",
]
