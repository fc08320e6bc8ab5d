"""Tool calls as Kimi models emit them, read as vLLM's kimi_k2 tool parser reads them.

The cases are the reference parser's published test cases (vLLM, tests/tool_parsers/test_kimi_k2_tool_parser.py):
the same model outputs and the same expected calls. Where the reference drops a call silently (an ambiguous bare
counter, a malformed id), we keep the good calls and tell the agent what to fix instead.
"""

from __future__ import annotations

import json

import pytest

from kimi_swarm.backend.chat.chat_format import parse_assistant

SECTION_BEGIN, SECTION_END = "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"
TOOL_BEGIN, TOOL_END, ARG_BEGIN = "<|tool_call_begin|>", "<|tool_call_end|>", "<|tool_call_argument_begin|>"

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}}}
READ_FILE = {"type": "object", "properties": {"path": {"type": "string"}}}
BOOK_FLIGHT = {"type": "object", "properties": {"city": {"type": "string"}}}


def call(tool_id: str, arguments: str) -> str:
    return f"{TOOL_BEGIN}{tool_id} {ARG_BEGIN}{arguments}{TOOL_END}"


def wrap(*calls: str) -> str:
    return SECTION_BEGIN + "".join(calls) + SECTION_END


@pytest.mark.parametrize(("output", "names", "arguments", "content"), [
    pytest.param("I'll check. " + wrap(call("functions.get_weather:0", '{"city": "Beijing"}')),
                 ["get_weather"], [{"city": "Beijing"}], "I'll check. ", id="single_tool_call"),
    pytest.param("Compare weather. " + wrap(call("functions.get_weather:0", '{"city": "Beijing"}'),
                                            call("functions.get_weather:1", '{"city": "Shanghai"}')),
                 ["get_weather", "get_weather"], [{"city": "Beijing"}, {"city": "Shanghai"}], "Compare weather. ",
                 id="parallel_tool_calls"),
    pytest.param("Multiple tasks. " + wrap(
        call("functions.get_weather:0", '{"city": "New York"}'), call("functions.get_news:1", '{"topic": "technology"}'),
        call("functions.send_email:2", '{"to": "user@example.com", "subject": "Daily Update"}')),
        ["get_weather", "get_news", "send_email"],
        [{"city": "New York"}, {"topic": "technology"}, {"to": "user@example.com", "subject": "Daily Update"}],
        "Multiple tasks. ", id="three_tool_calls"),
    pytest.param("Process HTML. " + wrap(call("functions.process_html:0", '{"html": "<div>content</div>"}')),
                 ["process_html"], [{"html": "<div>content</div>"}], "Process HTML. ", id="angle_brackets_in_json"),
    pytest.param("Formatted. " + wrap(call("functions.process_data:0", '{\n  "name": "test",\n  "value": 123\n}')),
                 ["process_data"], [{"name": "test", "value": 123}], "Formatted. ", id="multiline_json"),
    pytest.param("No prefix. " + wrap(call("get_weather:0", '{"city": "Tokyo"}')),
                 ["get_weather"], [{"city": "Tokyo"}], "No prefix. ", id="no_functions_prefix"),
    pytest.param("Empty args. " + wrap(call("functions.test:0", "{}")), ["test"], [{}], "Empty args. ",
                 id="empty_arguments"),
])
def test_reference_cases_give_the_same_calls(output, names, arguments, content):
    parsed = parse_assistant(output)
    assert parsed.content == content and parsed.malformed == []
    assert [c.name for c in parsed.tool_calls] == names
    assert [json.loads(c.arguments) for c in parsed.tool_calls] == arguments
    assert all(c.id.split(":")[-1].isdigit() for c in parsed.tool_calls)


def test_the_id_is_kept_as_the_model_wrote_it():
    parsed = parse_assistant("Checking weather. " + wrap(call("functions.get_weather:0", '{"city": "Tokyo"}')))
    assert [(c.id, c.name) for c in parsed.tool_calls] == [("functions.get_weather:0", "get_weather")]


def test_a_malformed_id_beside_a_valid_call_is_reported_and_the_valid_call_kept():
    parsed = parse_assistant("Help. " + wrap(call("functions.invalid.0", '{"city": "Beijing"}'),
                                             call("functions.valid:1", '{"city": "Shanghai"}')))
    assert [c.name for c in parsed.tool_calls] == ["valid"]
    assert len(parsed.malformed) == 1 and "functions.invalid.0" in parsed.malformed[0]


def test_a_bare_counter_runs_the_only_declared_tool():
    arguments = {"city": "Tokyo", "unit": "celsius"}
    parsed = parse_assistant("Let me check. " + wrap(call("0", json.dumps(arguments))), {"get_weather": WEATHER})
    assert parsed.content == "Let me check. " and parsed.malformed == []
    assert [(c.id, c.name, json.loads(c.arguments)) for c in parsed.tool_calls] == [("0", "get_weather", arguments)]


def test_a_bare_counter_with_one_tool_declared_by_name_alone_runs_it():
    parsed = parse_assistant(wrap(call("0", '{"city": "Tokyo"}')), {"get_weather"})
    assert [c.name for c in parsed.tool_calls] == ["get_weather"]


def test_a_bare_counter_is_resolved_by_the_one_schema_its_arguments_fit():
    arguments = {"city": "Tokyo", "unit": "celsius"}
    parsed = parse_assistant(wrap(call("0", json.dumps(arguments))), {"read_file": READ_FILE, "get_weather": WEATHER})
    assert [(c.id, c.name) for c in parsed.tool_calls] == [("0", "get_weather")] and parsed.malformed == []


@pytest.mark.parametrize(("arguments", "problem"), [
    pytest.param('{"city": "Tokyo"}', "its arguments fit several tools (book_flight, get_weather)", id="ambiguous"),
    pytest.param('{"city": "Tokyo"', "its arguments are not valid JSON", id="malformed_json"),
    pytest.param('{"path": "/x"}', "fit none of the tools (book_flight, get_weather)", id="fits_none"),
])
def test_a_bare_counter_that_could_mean_several_tools_is_not_run_and_the_correction_names_them(arguments, problem):
    parsed = parse_assistant(wrap(call("0", arguments)), {"get_weather": WEATHER, "book_flight": BOOK_FLIGHT})
    assert parsed.tool_calls == []
    assert len(parsed.malformed) == 1 and problem in parsed.malformed[0]
    assert "functions.NAME:INDEX" in parsed.malformed[0]


def test_required_properties_decide_between_tools():
    with_required = {"type": "object", "properties": {"city": {}, "date": {}}, "required": ["date"]}
    parsed = parse_assistant(wrap(call("3", '{"city": "Oslo"}')), {"book": with_required, "weather": BOOK_FLIGHT})
    assert [(c.id, c.name) for c in parsed.tool_calls] == [("3", "weather")]
