"""A reply read as it streams: content deltas before the tool-call section, each tool call once it is complete.

A streaming server cannot wait for the whole reply, and cannot pass text through either: a marker such as
<|tool_calls_section_begin|> may arrive split over deltas, and must reach the client as tool calls, never as text.
The parser holds back only what could still be the start of a marker. A tool call is sent when its
<|tool_call_end|> arrives: only then is it known to be valid (its id names one tool, its arguments parse), so
what was streamed never has to be taken back, and the finished result is exactly `parse_assistant` of the whole
text (the same `SectionReader` judges the calls).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from .chat_format import (
    ARGUMENT_BEGIN,
    CALL_BEGIN,
    CALL_END,
    IM_END,
    SECTION_BEGIN,
    SECTION_END,
    ParsedReply,
    SectionReader,
    ToolSchemas,
    assemble_reply,
)
from .messages import ToolCall

_CONTENT_ENDS = (SECTION_BEGIN, IM_END)
_SECTION_MARKERS = (SECTION_END, IM_END, SECTION_BEGIN, CALL_BEGIN, ARGUMENT_BEGIN, CALL_END)
_AFTER_SECTION_ENDS = (IM_END,)


@dataclass(frozen=True)
class ContentDelta:
    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A complete, valid tool call; `index` counts the reply's calls from 0, as OpenAI's deltas do."""

    index: int
    call: ToolCall


StreamEvent = ContentDelta | ToolCallDelta


def _first_marker(text: str, markers: tuple[str, ...]) -> tuple[int, str] | None:
    found = [(index, marker) for marker in markers if (index := text.find(marker)) != -1]
    return min(found) if found else None


def _held_back(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that could be the start of one of `markers`."""
    for length in range(min(len(text), max(map(len, markers)) - 1), 0, -1):
        tail = text[-length:]
        if any(marker.startswith(tail) for marker in markers):
            return length
    return 0


class ReplyStreamParser:
    """Feed text deltas in order with `feed`; `finish` flushes and returns the whole reply's `ParsedReply`."""

    def __init__(self, tool_names: Collection[str] | ToolSchemas | None = None) -> None:
        self._reader = SectionReader(tool_names)
        self._phase = "content"
        self._pending = ""
        self._content: list[str] = []
        self._after_section = ""
        self._after_turn = ""
        self._has_section = False
        self._closed = False
        self._sent_calls = 0

    def feed(self, text: str) -> list[StreamEvent]:
        """What the reply so far adds: content that can no longer be a marker, and calls that just completed."""
        self._pending += text
        events: list[StreamEvent] = []
        while self._pending and self._step(events):
            pass
        return events

    def finish(self) -> tuple[list[StreamEvent], ParsedReply]:
        """The events held back until the end, and the parsed reply (equal to `parse_assistant` of all the text)."""
        events: list[StreamEvent] = []
        rest, self._pending = self._pending, ""
        if self._phase == "content":
            self._emit_content(rest, events)
        elif self._phase == "section":
            self._reader.text(rest)
            self._reader.end()
        elif self._phase == "after_section":
            self._after_section += rest
        else:
            self._after_turn += rest
        self._emit_calls(events)
        reply = assemble_reply("".join(self._content), self._reader if self._has_section else None, self._closed,
                               self._after_section, self._after_turn)
        return events, reply

    def _step(self, events: list[StreamEvent]) -> bool:
        """Consume what can be consumed of the pending text in the current phase; False when it must wait."""
        if self._phase == "after_turn":
            self._after_turn += self._pending
            self._pending = ""
            return False
        markers = {"content": _CONTENT_ENDS, "section": _SECTION_MARKERS,
                   "after_section": _AFTER_SECTION_ENDS}[self._phase]
        found = _first_marker(self._pending, markers)
        if found is None:
            keep = _held_back(self._pending, markers)
            cut = len(self._pending) - keep
            self._take_text(self._pending[:cut], events)
            self._pending = self._pending[cut:]
            return False
        index, marker = found
        self._take_text(self._pending[:index], events)
        self._pending = self._pending[index + len(marker):]
        self._take_marker(marker, events)
        return True

    def _take_text(self, text: str, events: list[StreamEvent]) -> None:
        if self._phase == "content":
            self._emit_content(text, events)
        elif self._phase == "section":
            self._reader.text(text)
        else:
            self._after_section += text

    def _take_marker(self, marker: str, events: list[StreamEvent]) -> None:
        if self._phase == "content":
            self._has_section = marker == SECTION_BEGIN
            self._phase = "section" if self._has_section else "after_turn"
        elif self._phase == "after_section":
            self._phase = "after_turn"
        elif marker in (SECTION_END, IM_END):
            self._reader.end()
            self._closed = marker == SECTION_END
            self._phase = "after_section" if self._closed else "after_turn"
        else:
            self._reader.marker(marker)
        self._emit_calls(events)

    def _emit_content(self, text: str, events: list[StreamEvent]) -> None:
        if text:
            self._content.append(text)
            events.append(ContentDelta(text))

    def _emit_calls(self, events: list[StreamEvent]) -> None:
        calls = self._reader.calls
        events.extend(ToolCallDelta(index, calls[index]) for index in range(self._sent_calls, len(calls)))
        self._sent_calls = len(calls)
