"""kimi-swarm: agent swarms on one long shared context.

An orchestrator fans a task out to up to 100 sub-agents within hard limits, over any chat backend: the
in-process Kimi Linear engine (`kimi_swarm.backend`), which forks one long session into every sub-agent, or an
OpenAI-compatible server. `kimi_swarm.tools` has the web tools, `rank` and `MCPServer` (an MCP server's tools);
`kimi_swarm.kernels` the Triton kernels beside their PyTorch references.

    from kimi_swarm import Swarm
    from kimi_swarm.backend import EngineBackend
    from kimi_swarm.tools import MCPServer, Web, rank
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, tuple[str, ...]] = {
    ".budget": ("Limits",),
    ".events": (
        "AgentFinished",
        "AgentStarted",
        "BudgetLeft",
        "Event",
        "ModelCallStarted",
        "RunFinished",
        "RunResumed",
        "RunStarted",
        "Tokens",
        "ToolCallFinished",
        "ToolCallOutcome",
        "ToolCallStarted",
        "read_trace",
    ),
    ".launch": ("LaunchError",),
    ".orchestrator": ("RunStream", "Swarm"),
    ".result": ("AgentRecord", "AgentStatus", "Citation", "RunResult", "ToolCallRecord", "Usage"),
    ".resume": ("ResumeError",),
    ".tape": ("ToolTape", "ToolTapeMismatch"),
    ".function_tools": ("Tool", "ToolArgumentsError", "TransientToolError", "as_tool", "tool"),
}
"""Each public name by the module that defines it. They load on first use, so importing a part such as
`kimi_swarm.kernels` or `kimi_swarm.tools` does not import the orchestration, the engine or torch."""

_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
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
    "ResumeError",
    "RunFinished",
    "RunResult",
    "RunResumed",
    "RunStarted",
    "RunStream",
    "Swarm",
    "Tokens",
    "Tool",
    "ToolArgumentsError",
    "ToolCallFinished",
    "ToolCallOutcome",
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


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'kimi_swarm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:
    from .budget import Limits
    from .events import (
        AgentFinished,
        AgentStarted,
        BudgetLeft,
        Event,
        ModelCallStarted,
        RunFinished,
        RunResumed,
        RunStarted,
        Tokens,
        ToolCallFinished,
        ToolCallOutcome,
        ToolCallStarted,
        read_trace,
    )
    from .function_tools import Tool, ToolArgumentsError, TransientToolError, as_tool, tool
    from .launch import LaunchError
    from .orchestrator import RunStream, Swarm
    from .result import AgentRecord, AgentStatus, Citation, RunResult, ToolCallRecord, Usage
    from .resume import ResumeError
    from .tape import ToolTape, ToolTapeMismatch
