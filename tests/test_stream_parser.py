"""The streaming reply parser against parse_assistant, on every split of vLLM's kimi_k2 tool-parser cases.

The cases are those of tests/test_tool_call_ids.py (vLLM, tests/tool_parsers/test_kimi_k2_tool_parser.py) plus
malformed replies; each is fed cut in two at every position and one character at a time. Whatever the cut, the
streamed content and calls, and the finished reply, must be exactly what parse_assistant reads from the whole text.
"""

from __future__ import annotations

import json
import random

import pytest
from test_tool_call_ids import BOOK_FLIGHT, READ_FILE, WEATHER, call, wrap

from kimi_swarm.backend.chat.chat_format import IM_END, MARKERS, parse_assistant
from kimi_swarm.backend.chat.stream_parser import ContentDelta, ReplyStreamParser, ToolCallDelta

CASES = {
    "single_tool_call": ("I'll check. " + wrap(call("functions.get_weather:0", '{"city": "Beijing"}')), None),
    "parallel_tool_calls": ("Compare weather. " + wrap(call("functions.get_weather:0", '{"city": "Beijing"}'),
                                                       call("functions.get_weather:1", '{"city": "Shanghai"}')), None),
    "three_tool_calls": ("Multiple tasks. " + wrap(
        call("functions.get_weather:0", '{"city": "New York"}'), call("functions.get_news:1", '{"topic": "tech"}'),
        call("functions.send_email:2", '{"to": "user@example.com", "subject": "Daily Update"}')), None),
    "angle_brackets_in_json": ("Process HTML. " + wrap(call("functions.process_html:0",
                                                            '{"html": "<div>content</div><|x"}')), None),
    "multiline_json": ("Formatted. " + wrap(call("functions.process_data:0", '{\n  "name": "test",\n  "value": 1\n}')),
                       None),
    "no_functions_prefix": ("No prefix. " + wrap(call("get_weather:0", '{"city": "Tokyo"}')), None),
    "empty_arguments": ("Empty args. " + wrap(call("functions.test:0", "{}")), None),
    "bare_counter_only_tool": ("Let me check. " + wrap(call("0", '{"city": "Tokyo", "unit": "celsius"}')),
                               {"get_weather": WEATHER}),
    "bare_counter_by_schema": (wrap(call("0", '{"city": "Tokyo", "unit": "celsius"}')),
                               {"read_file": READ_FILE, "get_weather": WEATHER}),
    "bare_counter_ambiguous": (wrap(call("0", '{"city": "Tokyo"}')), {"get_weather": WEATHER, "book_flight": BOOK_FLIGHT}),
    "malformed_id_beside_valid": ("Help. " + wrap(call("functions.invalid.0", '{"city": "Beijing"}'),
                                                  call("functions.valid:1", '{"city": "Shanghai"}')), None),
    "cut_off_section": ("Partial. " + "<|tool_calls_section_begin|>" + call("functions.a:0", "{}")
                        + "<|tool_call_begin|>functions.b:1<|tool_call_argument_begin|>{\"q\"", None),
    "text_between_and_after": (wrap(call("functions.a:0", "{}"), " stray ", call("functions.a:1", "[1]"))
                               + " after" + IM_END + " tail", {"a"}),
    "unknown_tool_and_repeat": (wrap(call("functions.nope:0", "{}"), call("functions.a:1", "{}"),
                                     call("functions.a:1", "{}")), {"a"}),
    "plain_answer": ("Riton was founded in 1901 [http://x.test/riton].", None),
    "plain_answer_with_end": ("Done." + IM_END, None),
    "marker_outside_section": ("Oops <|tool_call_begin|> here", None),
    "almost_a_marker": ("a <|tool_calls_section and <|im_en", None),
}


def streamed(text: str, pieces: list[str], tools) -> tuple[str, list, object]:
    parser = ReplyStreamParser(tools)
    events = [event for piece in pieces for event in parser.feed(piece)]
    rest, reply = parser.finish()
    events += rest
    assert "".join(pieces) == text
    content = "".join(e.text for e in events if isinstance(e, ContentDelta))
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    assert [e.index for e in calls] == list(range(len(calls)))
    return content, [e.call for e in calls], reply


@pytest.mark.parametrize("name", list(CASES))
def test_every_split_streams_what_parse_assistant_reads_from_the_whole(name):
    text, tools = CASES[name]
    whole = parse_assistant(text, tools)
    splits = [[text[:cut], text[cut:]] for cut in range(len(text) + 1)] + [list(text)]
    rng = random.Random(name)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(2, 8))))
        splits.append([text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])])
    for pieces in splits:
        content, calls, reply = streamed(text, pieces, tools)
        assert reply == whole, pieces
        assert content == whole.content and calls == whole.tool_calls, pieces


def test_content_streams_before_the_section_and_no_marker_text_leaks():
    text, tools = CASES["parallel_tool_calls"]
    parser = ReplyStreamParser(tools)
    seen = []
    for char in text:
        seen.append((char, parser.feed(char)))
    content_events = [e for _, events in seen for e in events if isinstance(e, ContentDelta)]
    assert "".join(e.text for e in content_events) == "Compare weather. "
    assert not any(marker in e.text or "<|" in e.text for e in content_events for marker in MARKERS)
    first_call_at = next(i for i, (_, events) in enumerate(seen) if any(isinstance(e, ToolCallDelta) for e in events))
    assert text[:first_call_at + 1].endswith("<|tool_call_end|>"), "a call is sent as soon as it closes"
    _, reply = parser.finish()
    assert [json.loads(c.arguments) for c in reply.tool_calls] == [{"city": "Beijing"}, {"city": "Shanghai"}]


def test_a_bare_counter_streams_resolved_to_the_tool_it_can_only_mean():
    text, tools = CASES["bare_counter_by_schema"]
    _, calls, reply = streamed(text, list(text), tools)
    assert [(c.id, c.name) for c in calls] == [("0", "get_weather")] and reply.malformed == []
    text, tools = CASES["bare_counter_ambiguous"]
    _, calls, reply = streamed(text, list(text), tools)
    assert calls == [] and "functions.NAME:INDEX" in reply.malformed[0]
