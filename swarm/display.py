"""Progress of a run on the terminal: a live rich panel on a TTY, plain log lines otherwise (stderr)."""

from __future__ import annotations

import time

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .budget import Limits
from .events import (
    AgentFinished,
    AgentStarted,
    Event,
    RunFinished,
    RunStarted,
    Tokens,
    ToolCallFinished,
    ToolCallStarted,
)


class RunCounters:
    """What both displays show, folded from events."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.running = 0
        self.finished: dict[str, int] = {}
        self.tool_calls = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.started = time.perf_counter()

    def update(self, event: Event) -> None:
        if isinstance(event, AgentStarted) and event.agent_id:
            self.running += 1
        elif isinstance(event, AgentFinished) and event.agent_id:
            self.running -= 1
            self.finished[event.status] = self.finished.get(event.status, 0) + 1
        elif isinstance(event, ToolCallStarted):
            self.tool_calls += 1
        elif isinstance(event, Tokens):
            self.prompt_tokens += event.prompt_tokens
            self.completion_tokens += event.completion_tokens

    @property
    def tokens_per_second(self) -> float:
        elapsed = max(time.perf_counter() - self.started, 1e-6)
        return self.completion_tokens / elapsed


class LogLines:
    """One line per agent start/finish and tool call, for logs and pipes."""

    def __init__(self, console: Console, limits: Limits) -> None:
        self.console = console
        self.counters = RunCounters(limits)

    def __enter__(self) -> LogLines:
        return self

    def __exit__(self, *_: object) -> None:
        """Nothing to tear down."""

    def __call__(self, event: Event) -> None:
        self.counters.update(event)
        line = _log_line(event, self.counters)
        if line:
            self.console.print(f"[{event.t:8.2f}s] {line}", markup=False, highlight=False, soft_wrap=True)


def _log_line(event: Event, counters: RunCounters) -> str | None:
    budget = counters.limits.max_tool_calls
    if isinstance(event, RunStarted):
        return f"run started: {event.task}"
    if isinstance(event, AgentStarted):
        return f"agent {event.agent_id} started (wave {event.wave}): {event.task}"
    if isinstance(event, AgentFinished):
        return f"agent {event.agent_id} {event.status} after {event.steps} steps, {event.tool_calls} tool calls"
    if isinstance(event, ToolCallFinished):
        outcome = "ok" if event.ok else ("error" if event.executed else "not executed")
        return (f"agent {event.agent_id} {event.tool} {outcome} in {event.seconds:.2f}s "
                f"[{counters.tool_calls}/{budget} tool calls]")
    if isinstance(event, RunFinished):
        return f"run finished: {event.status}{' (partial)' if event.partial else ''}"
    return None


class LivePanel:
    """A live panel: agents running/done, tool calls used of the budget, tokens and tokens/s."""

    def __init__(self, console: Console, limits: Limits, task: str) -> None:
        self.counters = RunCounters(limits)
        self.task = task
        self.recent: list[str] = []
        self.live = Live(console=console, refresh_per_second=4, get_renderable=self._render)

    def __enter__(self) -> LivePanel:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(*exc)  # type: ignore[arg-type]

    def __call__(self, event: Event) -> None:
        self.counters.update(event)
        line = _log_line(event, self.counters)
        if line and not isinstance(event, ToolCallFinished):
            self.recent = (self.recent + [f"{event.t:7.1f}s {line}"])[-6:]

    def _render(self) -> Group:
        c = self.counters
        table = Table.grid(padding=(0, 2))
        table.add_row("task", Text(self.task, overflow="ellipsis", no_wrap=True))
        done = ", ".join(f"{n} {status}" for status, n in sorted(c.finished.items())) or "0"
        table.add_row("agents", f"{c.running} running, {done} (cap {c.limits.max_agents})")
        bar = ProgressBar(total=max(c.limits.max_tool_calls, 1), completed=c.tool_calls, width=30)
        table.add_row("tool calls", Text(f"{c.tool_calls} / {c.limits.max_tool_calls} used"))
        table.add_row("", bar)
        table.add_row("tokens", f"{c.prompt_tokens} in, {c.completion_tokens} out, {c.tokens_per_second:.1f} tok/s")
        return Group(table, Text("\n".join(self.recent), style="dim"))
