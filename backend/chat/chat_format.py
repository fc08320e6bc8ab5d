"""The Kimi K2 / Kimi Linear chat format: render a conversation to prompt text, parse the model's reply.

Rendering follows the K2 chat template (see the spec, section 6). The rendered text is encoded by a
tokenizer that turns special-token strings into special ids, so every piece of free text (message
content, tool results from fetched web pages, names, ids, arguments) is neutralised first: a page that
contains "<|im_end|><|im_system|>..." must not be able to forge a turn.

Parsing never raises: a malformed tool call (bad JSON, unknown tool, bad id, cut-off section) becomes an
entry in `ParsedReply.malformed`, worded so the agent can be told what to fix, and the valid calls of the
same section are still returned.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from typing import Any

from pydantic import BaseModel, Field

from .messages import Message, ToolCall, ToolSpec

IM_SYSTEM = "<|im_system|>"
IM_USER = "<|im_user|>"
IM_ASSISTANT = "<|im_assistant|>"
IM_MIDDLE = "<|im_middle|>"
IM_END = "<|im_end|>"
SECTION_BEGIN = "<|tool_calls_section_begin|>"
SECTION_END = "<|tool_calls_section_end|>"
CALL_BEGIN = "<|tool_call_begin|>"
ARGUMENT_BEGIN = "<|tool_call_argument_begin|>"
CALL_END = "<|tool_call_end|>"

MARKERS: tuple[str, ...] = (
    IM_SYSTEM, IM_USER, IM_ASSISTANT, IM_MIDDLE, IM_END,
    SECTION_BEGIN, SECTION_END, CALL_BEGIN, ARGUMENT_BEGIN, CALL_END,
)
"""Every special-token string the chat format writes or reads."""

GENERATION_PROMPT = IM_ASSISTANT + "assistant" + IM_MIDDLE
END_OF_TURN = IM_END
DEFAULT_SYSTEM_PROMPT = "You are Kimi, an AI assistant created by Moonshot AI."

_SPECIAL_TEXT = re.compile(r"<\|[^|<>\s]{1,80}\|>|\[(?:BOS|EOS|EOT|UNK|PAD)\]|</?think>")
_ZERO_WIDTH_SPACE = "\u200b"
_TOOL_MARKER = re.compile("(" + "|".join(re.escape(m) for m in (SECTION_BEGIN, SECTION_END, CALL_BEGIN,
                                                                  ARGUMENT_BEGIN, CALL_END)) + ")")
_CALL_ID = re.compile(r"(?:functions\.)?(?P<name>[^\s:<>]+):(?P<index>\d+)|(?P<counter>\d+)")
"""The ids Kimi models emit: functions.NAME:INDEX as taught, NAME:INDEX, or a bare counter that names no tool."""

ToolSchemas = Mapping[str, Mapping[str, Any]]
"""Declared tools by name, each with its JSON schema of parameters (what `ToolSpec.parameters` holds)."""


class ParsedReply(BaseModel):
    """An assistant turn read back from model output; `malformed` holds problems to tell the agent."""

    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    malformed: list[str] = Field(default_factory=list)


def tool_call_id(name: str, index: int) -> str:
    """The id Kimi gives its `index`-th tool call of a conversation: functions.NAME:INDEX."""
    return f"functions.{name}:{index}"


def neutralize_specials(text: str) -> str:
    """`text` with every special-token look-alike broken by a zero-width space, so it encodes as plain text."""
    return _SPECIAL_TEXT.sub(lambda match: match[0][0] + _ZERO_WIDTH_SPACE + match[0][1:], text)


def _deep_sorted(value: object) -> object:
    if isinstance(value, dict):
        return {key: _deep_sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_deep_sorted(item) for item in value]
    return value


def tools_json(tools: list[ToolSpec]) -> str:
    """The tool_declare payload: OpenAI tool schemas, keys deep-sorted, compact separators."""
    schemas = _deep_sorted([tool.openai_schema() for tool in tools])
    return json.dumps(schemas, ensure_ascii=False, separators=(",", ":"))


def _turn(marker: str, role_name: str, body: str) -> str:
    return marker + neutralize_specials(role_name) + IM_MIDDLE + body + IM_END


def _render_tool_calls(calls: list[ToolCall]) -> str:
    return SECTION_BEGIN + "".join(
        CALL_BEGIN + neutralize_specials(call.id) + ARGUMENT_BEGIN + neutralize_specials(call.arguments) + CALL_END
        for call in calls
    ) + SECTION_END


def _render_message(message: Message, position: int) -> str:
    if message.tool_calls and message.role != "assistant":
        raise ValueError(f"message {position} ({message.role}) has tool_calls; only assistant messages can")
    marker = {"user": IM_USER, "assistant": IM_ASSISTANT}.get(message.role, IM_SYSTEM)
    body = neutralize_specials(message.content)
    if message.role == "tool":
        if not message.tool_call_id:
            raise ValueError(f"message {position} is a tool result without tool_call_id; set it to the call's id")
        body = f"## Return of {neutralize_specials(message.tool_call_id)}\n{body}"
    elif message.tool_calls:
        body += _render_tool_calls(message.tool_calls)
    return _turn(marker, message.name or message.role, body)


def render_turns(
    messages: list[Message],
    tools: list[ToolSpec] | None = None,
    *,
    add_generation_prompt: bool = True,
    default_system: bool = True,
) -> list[str]:
    """`render`'s text cut into its turns (tool declaration, default system turn, one per message, generation
    prompt). Every turn starts with a special token, so encoding the turns one by one gives the ids of the whole:
    a prefix cache can key its snapshots by message boundaries."""
    parts = []
    if tools:
        parts.append(_turn(IM_SYSTEM, "tool_declare", neutralize_specials(tools_json(tools))))
    if default_system and messages and messages[0].role != "system":
        parts.append(_turn(IM_SYSTEM, "system", DEFAULT_SYSTEM_PROMPT))
    parts.extend(_render_message(message, position) for position, message in enumerate(messages))
    if add_generation_prompt:
        parts.append(GENERATION_PROMPT)
    return parts


def render(
    messages: list[Message],
    tools: list[ToolSpec] | None = None,
    *,
    add_generation_prompt: bool = True,
    default_system: bool = True,
) -> str:
    """Prompt text for `messages` in the K2 template.

    With `default_system` the template's default system turn is inserted when the first message is not
    a system message; turn it off (and pass no tools) to render only the given messages, e.g. tool
    results appended to a live session.
    """
    return "".join(render_turns(messages, tools, add_generation_prompt=add_generation_prompt,
                                default_system=default_system))


def _preview(text: str, limit: int = 80) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _fits(arguments: Mapping[str, Any], schema: Mapping[str, Any]) -> bool:
    """Whether `arguments` could be a call of a tool with this parameter schema: every key is one of its
    properties and every required property is there."""
    properties = schema.get("properties") or {}
    return set(arguments) <= set(properties) and set(schema.get("required") or ()) <= set(arguments)


def _tool_of_counter(arguments: str, tools: Collection[str] | ToolSchemas) -> tuple[str | None, str | None]:
    """(tool name, None) for a call whose id is a bare counter, when only one declared tool can be meant: the only
    tool, or the only one whose schema the arguments fit; else (None, the problem, naming the tools that fit)."""
    names = sorted(tools)
    if len(names) == 1:
        return names[0], None
    advice = "write its id as functions.NAME:INDEX"
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        return None, f"its id names no tool and its arguments are not valid JSON; {advice}"
    if not isinstance(tools, Mapping) or not isinstance(value, dict):
        return None, f"its id names no tool; {advice} (tools: {', '.join(names) or 'none'})"
    fitting = [name for name in names if _fits(value, tools[name])]
    if len(fitting) == 1:
        return fitting[0], None
    if fitting:
        return None, f"its id names no tool and its arguments fit several tools ({', '.join(fitting)}); {advice}"
    return None, f"its id names no tool and its arguments fit none of the tools ({', '.join(names)}); {advice}"


class SectionReader:
    """Reads the inside of one tool-call section marker by marker, keeping good calls and noting bad ones.

    It takes the section whole (`read`) or as it streams (`text` and `marker` in order, then `end`): a call is
    judged, and appended to `calls`, at the marker that ends it."""

    def __init__(self, tool_names: Collection[str] | ToolSchemas | None) -> None:
        self.tool_names = tool_names
        self.calls: list[ToolCall] = []
        self.problems: list[str] = []
        self.number = 0
        self.state = "between"
        self.call_id = ""
        self.arguments = ""
        self.between = ""
        self.broken: str | None = None

    def read(self, section: str) -> None:
        for position, piece in enumerate(_TOOL_MARKER.split(section)):
            if position % 2:
                self.marker(piece)
            else:
                self.text(piece)
        self.end()

    def text(self, piece: str) -> None:
        if self.state == "id":
            self.call_id += piece
        elif self.state == "arguments":
            self.arguments += piece
        else:
            self.between += piece

    def end(self) -> None:
        """The section is over (closed, or the reply ended): a call still open was cut off."""
        self._drop_between()
        if self.state != "between":
            self._finish(f"cut off before {CALL_END}")

    def _drop_between(self) -> None:
        if self.between.strip():
            self.problems.append(f"text between tool calls was ignored: {_preview(self.between)}")
        self.between = ""

    def marker(self, marker: str) -> None:
        self._drop_between()
        if marker == CALL_BEGIN:
            if self.state != "between":
                self._finish(f"not closed with {CALL_END} before the next {CALL_BEGIN}")
            self.number += 1
            self.state, self.call_id, self.arguments, self.broken = "id", "", "", None
        elif self.state == "between":
            self.problems.append(f"unexpected {marker} between tool calls was ignored")
        elif marker == CALL_END:
            self._finish(None if self.state == "arguments" else f"{ARGUMENT_BEGIN} is missing after the id")
        elif marker == ARGUMENT_BEGIN and self.state == "id":
            self.state = "arguments"
        else:
            self.broken = self.broken or f"unexpected {marker} inside the call"

    def _finish(self, problem: str | None) -> None:
        call_id, arguments = self.call_id.strip(), self.arguments.strip()
        self.state = "between"
        name, found = None, self.broken or problem
        if found is None:
            name, found = self._check(call_id, arguments)
        if found or name is None:
            label = f"tool call {self.number}" + (f" ({call_id})" if call_id else "")
            self.problems.append(f"{label}: {found}; it was not run")
            return
        self.calls.append(ToolCall(id=call_id, name=name, arguments=arguments))

    def _check(self, call_id: str, arguments: str) -> tuple[str | None, str | None]:
        """(the tool's name, None) for a call that can run, else (None, what is wrong with it)."""
        match = _CALL_ID.fullmatch(call_id)
        if match is None:
            return None, f"id {call_id!r} is not of the form functions.NAME:INDEX"
        name = match["name"]
        if name is None:
            if self.tool_names is None:
                return None, "its id names no tool; write its id as functions.NAME:INDEX"
            name, problem = _tool_of_counter(arguments, self.tool_names)
            if problem:
                return None, problem
        elif self.tool_names is not None and name not in self.tool_names:
            return None, f"unknown tool {name!r}; available tools: {', '.join(sorted(self.tool_names)) or 'none'}"
        if any(call.id == call_id for call in self.calls):
            return None, "its id repeats an earlier call of this reply; give every call its own index"
        try:
            value = json.loads(arguments)
        except json.JSONDecodeError as error:
            return None, f"arguments are not valid JSON: {error}"
        if not isinstance(value, dict):
            return None, f"arguments must be a JSON object, got {type(value).__name__}"
        return name, None


def parse_assistant(text: str, tool_names: Collection[str] | ToolSchemas | None = None) -> ParsedReply:
    """Content and tool calls of model output that followed the generation prompt (<|im_end|> optional).

    Call ids are read as Kimi models write them (functions.NAME:INDEX, NAME:INDEX or a bare counter). A bare
    counter runs only when one declared tool can be meant: the only tool, or, given the tools' schemas
    (`tool_names` as a mapping of name to parameters), the only tool whose schema its arguments fit."""
    body, _, after_turn = text.partition(IM_END)
    content, has_section, section = body.partition(SECTION_BEGIN)
    if not has_section:
        return assemble_reply(content, None, False, "", after_turn)
    inner, closed, after_section = section.partition(SECTION_END)
    reader = SectionReader(tool_names)
    reader.read(inner)
    return assemble_reply(content, reader, bool(closed), after_section, after_turn)


def assemble_reply(content: str, section: SectionReader | None, closed: bool, after_section: str,
                   after_turn: str) -> ParsedReply:
    """The reply of a read-through: the content before any section, the section's calls (None: no section), and
    every problem, in the order they occur."""
    problems: list[str] = []
    if _TOOL_MARKER.search(content):
        problems.append(
            f"tool call markers outside a tool call section were not run; put calls between {SECTION_BEGIN} "
            f"and {SECTION_END}"
        )
    calls: list[ToolCall] = []
    if section is not None:
        calls = section.calls
        problems.extend(section.problems)
        if not closed:
            problems.append(f"the tool call section was cut off (no {SECTION_END}); finished calls were kept")
        elif after_section.strip():
            problems.append(f"text after the tool call section was ignored: {_preview(after_section)}")
    if after_turn.strip():
        problems.append(f"text after {IM_END} was ignored: {_preview(after_turn)}")
    return ParsedReply(content=content, tool_calls=calls, malformed=problems)
