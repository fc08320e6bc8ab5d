"""A run as one self-contained HTML page: a timeline of every agent, the answer with its cited sources,
budget and token use, and each agent's transcript behind a click.

The event trace has every timing; the RunResult, when there is one, adds what the trace leaves out (the
citations, transcripts and tool outputs), so a page made from a trace file alone shows what the trace has
and says what it lacks. Everything taken from the run goes through Jinja's autoescaping (tool outputs are
untrusted web content), and the page's Content-Security-Policy allows no script and no outside resource.
"""

from __future__ import annotations

import functools
import importlib.resources
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol
from urllib.parse import urlsplit

import jinja2

from kimi_swarm.backend.chat.messages import Message

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
)
from .records import FAILED_STATUSES, AgentRecord, Citation, Usage

TEMPLATE = "report_page.html.j2"
MESSAGE_CHARS = 20_000
"""Longer messages are cut on the page (the RunResult keeps them whole): a hundred agents' web pages would
make a page too big to open."""
LIMIT_STATUSES = frozenset({"budget", "step_limit", "token_limit"})
URL_END = r"(?=/?[.,;:!?)'\"]*(?:[\s\[\]()<>]|$))"
"""What may follow a cited URL where the answer writes it: a slash and punctuation, then the URL's end (the
citation's URL is the answer's with those stripped)."""

WIDTH, LABEL_WIDTH, ROW_HEIGHT, AXIS_HEIGHT = 1100.0, 200.0, 22.0, 24.0
PLOT_WIDTH = WIDTH - LABEL_WIDTH - 16
MIN_MARK_WIDTH = 3.0


MarkKind = Literal["model", "tool", "failed", "refused"]


class RunOutcome(Protocol):
    """What the page reads of a RunResult (result.py imports this module, so it cannot name RunResult)."""

    task: str
    answer: str
    partial: bool
    stop_reason: str | None
    citations: list[Citation]
    orchestrator: AgentRecord
    agents: list[AgentRecord]
    usage: Usage


@dataclass
class Mark:
    """A model turn or a tool call on an agent's row."""

    kind: MarkKind
    start: float
    end: float
    title: str
    x: float = 0.0
    width: float = 0.0


@dataclass
class Call:
    call_id: str
    tool: str
    arguments: str
    outcome: str
    seconds: float
    error: str | None


@dataclass
class Row:
    """One agent as the page shows it."""

    agent_id: int
    task: str
    wave: int
    status: str = "running"
    start: float | None = None
    end: float | None = None
    steps: int = 0
    executed_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    result: str = ""
    marks: list[Mark] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    critical: bool = False
    y: float = 0.0
    x: float = 0.0
    width: float = 0.0

    @property
    def name(self) -> str:
        return "orchestrator" if self.agent_id == 0 else f"agent {self.agent_id}"

    @property
    def tone(self) -> str:
        return "bad" if self.status in FAILED_STATUSES else "limit" if self.status in LIMIT_STATUSES else "ok"

    def count(self, outcome: str) -> int:
        return sum(call.outcome == outcome for call in self.calls)


@dataclass
class Segment:
    """A piece of the answer: plain text, or a cited URL with its citation's number."""

    text: str
    href: str | None = None
    number: int | None = None


def render_report(trace: Sequence[Event], result: RunOutcome | None = None) -> str:
    """The page for a run: from its events, plus its RunResult when there is one."""
    started = next((e for e in trace if isinstance(e, RunStarted)), None)
    finished = next((e for e in reversed(trace) if isinstance(e, RunFinished)), None)
    budgets = [e for e in trace if isinstance(e, BudgetLeft)]
    rows = _rows(trace, result)
    span = max([e.t for e in trace] + [0.0]) or 1.0
    _mark_critical_path(rows)
    ticks = _layout(rows, span)
    limits = started.limits if started else {}
    task = result.task if result else started.task if started else "(unknown task)"
    answer = result.answer if result else finished.answer if finished else ""
    citations = result.citations if result else []
    return _template().render(
        task=task, model=started.model if started else None, status=_status(result, finished),
        answer=_segments(answer, [c.url for c in citations]), citations=[(c, _href(c.url)) for c in citations],
        totals=_usage(rows, result, finished, span), limits=limits, budget=budgets[-1] if budgets else None,
        refused_calls=sum(r.count("refused") for r in rows), failed_calls=sum(r.count("failed") for r in rows),
        rows=rows, ticks=ticks, waves=_wave_lines(rows, span), critical_path=_critical_path(rows),
        transcripts=_transcripts(result), from_trace=result is None, has_trace=bool(trace),
        width=WIDTH, row_height=ROW_HEIGHT, axis_height=AXIS_HEIGHT,
        height=AXIS_HEIGHT + ROW_HEIGHT * len(rows) + 8,
    )


@functools.cache
def _template() -> jinja2.Template:
    source = importlib.resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8")
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                                     lstrip_blocks=True)
    environment.filters["clip"] = _clip
    return environment.from_string(source)


def _rows(trace: Sequence[Event], result: RunOutcome | None) -> list[Row]:
    """Every agent's row, in id order (the orchestrator first, then the sub-agents wave by wave)."""
    rows: dict[int, Row] = {}
    turns: dict[int, ModelCallStarted] = {}
    calls: dict[tuple[int, str], ToolCallStarted] = {}

    def row(agent_id: int) -> Row:
        return rows.setdefault(agent_id, Row(agent_id=agent_id, task="", wave=0))

    for event in trace:
        match event:
            case AgentStarted():
                current = row(event.agent_id)
                current.task, current.wave, current.start = event.task, event.wave, event.t
            case ModelCallStarted():
                turns[event.agent_id] = event
            case Tokens():
                turn = turns.pop(event.agent_id, None)  # None in traces written before turns had a start event
                current = row(event.agent_id)
                current.prompt_tokens += event.prompt_tokens
                current.completion_tokens += event.completion_tokens
                reason = f", {event.finish_reason}" if event.finish_reason else ""
                title = f"model turn: {event.prompt_tokens} tokens in, {event.completion_tokens} out{reason}"
                current.marks.append(Mark("model", turn.t if turn else event.t, event.t, title))
            case ToolCallStarted():
                calls[event.agent_id, event.call_id] = event
            case ToolCallFinished():
                _add_call(row(event.agent_id), calls.pop((event.agent_id, event.call_id), None), event)
            case AgentFinished():
                current = row(event.agent_id)
                current.status, current.end, current.steps = event.status, event.t, event.steps
                current.executed_calls, current.result = event.tool_calls, event.result
                _cut_off(current, turns.pop(event.agent_id, None),
                         [calls.pop(key) for key in list(calls) if key[0] == event.agent_id], event.t)
    if result is not None:
        for record in [result.orchestrator, *result.agents]:
            _merge_record(row(record.id), record)
    return [rows[agent_id] for agent_id in sorted(rows)]


def _add_call(row: Row, started: ToolCallStarted | None, event: ToolCallFinished) -> None:
    if event.ok:
        outcome = "ok"
    else:
        outcome = "failed" if event.executed else "refused" if event.refused else "not executed"
    arguments = started.arguments if started else ""
    row.calls.append(Call(event.call_id, event.tool, arguments, outcome, event.seconds, event.error))
    kind: MarkKind = "tool" if outcome == "ok" else "refused" if outcome == "refused" else "failed"
    title = f"{event.tool} ({outcome}, {event.seconds:.2f} s)" + (f": {event.error}" if event.error else "")
    row.marks.append(Mark(kind, started.t if started else event.t, event.t, title))


def _cut_off(row: Row, turn: ModelCallStarted | None, calls: list[ToolCallStarted], t: float) -> None:
    """A turn or call still open when its agent finished was cut off (deadline, cancel or failure)."""
    if turn is not None:
        row.marks.append(Mark("failed", turn.t, t, f"model turn {turn.step}: cut off ({row.status})"))
    for call in calls:
        row.calls.append(Call(call.call_id, call.tool, call.arguments, "cut off", t - call.t, row.status))
        row.marks.append(Mark("failed", call.t, t, f"{call.tool}: cut off ({row.status})"))


def _merge_record(row: Row, record: AgentRecord) -> None:
    """What the RunResult knows for certain wins over what the events said (an agent that never started
    has a record and no events)."""
    row.task, row.wave, row.status, row.steps = record.task, record.wave, record.status, record.steps
    row.executed_calls, row.result = record.executed_tool_calls, record.result
    arguments = {call.call_id: call.arguments for call in record.tool_calls}
    for call in row.calls:  # calls refused before they started have no arguments in the events
        call.arguments = call.arguments or arguments.get(call.call_id, "")


def _mark_critical_path(rows: list[Row]) -> None:
    """The orchestrator and, in each wave, the sub-agent it waited for: the one that finished last."""
    last: dict[int, Row] = {}
    for row in rows:
        if row.agent_id == 0:
            row.critical = True
        elif row.end is not None and (row.wave not in last or row.end > (last[row.wave].end or 0.0)):
            last[row.wave] = row
    for row in last.values():
        row.critical = True


def _layout(rows: list[Row], span: float) -> list[tuple[float, str]]:
    """Place rows and marks on the SVG; the axis ticks as (x, label)."""
    for index, row in enumerate(rows):
        row.y = AXIS_HEIGHT + index * ROW_HEIGHT
        if row.start is not None:
            row.x = _x(row.start, span)
            row.width = max(_x(row.end if row.end is not None else span, span) - row.x, MIN_MARK_WIDTH)
        row.marks.sort(key=lambda mark: (mark.kind != "model", mark.start))  # tool calls drawn over turns
        for mark in row.marks:
            mark.x = _x(mark.start, span)
            mark.width = max(_x(mark.end, span) - mark.x, MIN_MARK_WIDTH)
    step = _tick_step(span)
    return [(_x(n * step, span), f"{n * step:g} s") for n in range(int(span / step) + 1)]


def _x(t: float, span: float) -> float:
    return LABEL_WIDTH + t / span * PLOT_WIDTH


def _tick_step(span: float) -> float:
    """1, 2 or 5 times a power of ten: about eight ticks over the run."""
    rough = span / 8
    power = 10 ** math.floor(math.log10(rough))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= rough)


def _wave_lines(rows: list[Row], span: float) -> list[tuple[float, int]]:
    """(x, wave) where each wave's first sub-agent started."""
    starts: dict[int, float] = {}
    for row in rows:
        if row.agent_id and row.start is not None:
            starts[row.wave] = min(starts.get(row.wave, row.start), row.start)
    return [(_x(t, span), wave) for wave, t in sorted(starts.items())]


def _critical_path(rows: list[Row]) -> str:
    """An SVG path down from the orchestrator to each wave's last sub-agent, along it, and back."""
    orchestrator = next((r for r in rows if r.agent_id == 0), None)
    if orchestrator is None:
        return ""
    top = orchestrator.y + ROW_HEIGHT / 2
    pieces = []
    for row in rows:
        if row.agent_id and row.critical and row.start is not None:
            middle = row.y + ROW_HEIGHT / 2
            end = row.x + row.width
            pieces.append(f"M{row.x:.1f},{top:.1f} V{middle:.1f} H{end:.1f} V{top:.1f}")
    return " ".join(pieces)


def _usage(rows: list[Row], result: RunOutcome | None, finished: RunFinished | None, span: float) -> Usage:
    """The run's usage as it reported it; summed from the events when the trace ends before the run did."""
    if result is not None:
        return result.usage
    if finished is not None:
        return Usage.model_validate(finished.usage)
    longest: dict[int, int] = {}
    for row in rows:
        longest[row.wave] = max(longest.get(row.wave, 0), row.steps)
    sub_agents = [r for r in rows if r.agent_id]
    return Usage(agents=len(sub_agents), waves=len({r.wave for r in sub_agents}),
                 tool_calls=sum(r.executed_calls for r in rows),
                 model_calls=sum(m.kind == "model" for r in rows for m in r.marks),
                 prompt_tokens=sum(r.prompt_tokens for r in rows),
                 completion_tokens=sum(r.completion_tokens for r in rows), critical_steps=sum(longest.values()),
                 wall_seconds=span)


def _status(result: RunOutcome | None, finished: RunFinished | None) -> str:
    if result is not None:
        return f"partial ({result.stop_reason})" if result.partial else "complete"
    if finished is not None:
        return f"partial ({finished.stop_reason or finished.status})" if finished.partial else "complete"
    return "unfinished (the trace ends before the run did)"


def _segments(answer: str, cited: list[str]) -> list[Segment]:
    """The answer split around the URLs it cites, each linked and numbered as in the sources."""
    if not cited:
        return [Segment(answer)]
    numbers = {url: number for number, url in enumerate(cited, start=1)}
    longest_first = sorted(cited, key=len, reverse=True)
    pattern = re.compile("(?:" + "|".join(re.escape(url) for url in longest_first) + ")" + URL_END)
    segments: list[Segment] = []
    position = 0
    for match in pattern.finditer(answer):
        url = match.group(0)
        segments += [Segment(answer[position:match.start()]), Segment(url, _href(url), numbers[url])]
        position = match.end()
    segments.append(Segment(answer[position:]))
    return segments


def _href(url: str) -> str | None:
    """Only web links become links: a `javascript:` URL in a model's answer stays text."""
    return url if urlsplit(url).scheme in ("http", "https") else None


def _transcripts(result: RunOutcome | None) -> dict[int, tuple[int, list[Message]]]:
    """Per agent: (messages shared with the orchestrator, left out; the agent's own messages). A sub-agent's
    conversation is forked from the orchestrator's, whose transcript the page already shows."""
    if result is None:
        return {}
    shared = result.orchestrator.transcript
    transcripts = {0: (0, shared)}
    for record in result.agents:
        common = 0
        for mine, theirs in zip(record.transcript, shared):
            if mine != theirs:
                break
            common += 1
        transcripts[record.id] = (common, record.transcript[common:])
    return transcripts


def _clip(text: str, limit: int = MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}\n… ({len(text) - limit:,} more characters)"
