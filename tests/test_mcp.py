"""MCP tool servers in a swarm: the PyPI server `mcp-server-time` over stdio and an SDK-built streamable-HTTP
server on loopback, with the model scripted by the loopback fake OpenAI server."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import socket
import sys
import time

import pytest
from fake_openai import FakeOpenAI, FakeReply, swarm_script
from mcp_support import FAKE_CLOSING_TAG, LoopbackMCP, process_alive, read_pid, time_server_command
from typer.testing import CliRunner

from kimi_swarm import Swarm, Tool, ToolArgumentsError, tool
from kimi_swarm.backend.chat.openai_backend import OpenAIBackend
from kimi_swarm.cli import app
from kimi_swarm.tools import MCPServer, MCPServerError

OPEN_TAG = '<untrusted_web_content source="{}">'
runner = CliRunner(env={"COLUMNS": "200"})


def time_server(tmp_path) -> tuple[MCPServer, object]:
    pid_file = tmp_path / "time-server.pid"
    command, *args = time_server_command(pid_file)
    return MCPServer.stdio(command, args), pid_file


async def run_swarm(model: FakeOpenAI, tools, task: str = "Find out.", **limits):
    backend = OpenAIBackend(model.base_url, "fake-model")
    try:
        return await Swarm(backend, tools, **limits).run(task)
    finally:
        await backend.aclose()


def calls_then_answer(*turns: list[tuple[str, dict]]):
    """A sub-agent that makes the given tool-call turns, one per model turn, then answers with every result."""
    def subagent(request, task, results):
        made = sum(1 for m in request["messages"] if m["role"] == "assistant" and m.get("tool_calls")) - 1
        if made < len(turns):
            return FakeReply(tool_calls=turns[made])
        return FakeReply(content=" | ".join(results))

    return subagent


async def test_time_server_over_stdio_is_declared_called_wrapped_and_counted(tmp_path):
    server, pid_file = time_server(tmp_path)
    subagent = calls_then_answer([("get_current_time", {"timezone": "Europe/Warsaw"})])
    with FakeOpenAI(swarm_script([["What time is it in Warsaw?"]], subagent)) as model:
        model.keep_bodies = True
        result = await run_swarm(model, [server], max_tool_calls=5)

    declared = {t["function"]["name"]: t["function"] for t in model.bodies[0]["tools"]}
    assert set(declared) == {"spawn_agents", "get_current_time", "convert_time"}
    parameters = declared["get_current_time"]["parameters"]
    assert parameters["type"] == "object" and parameters["required"] == ["timezone"]
    assert parameters["properties"]["timezone"]["type"] == "string" and "title" not in parameters
    assert "IANA timezone" in parameters["properties"]["timezone"]["description"]

    agent = result.agents[0]
    [call] = agent.tool_calls
    assert call.executed and call.ok
    assert call.output.startswith(OPEN_TAG.format("get_current_time"))
    assert call.output.endswith("</untrusted_web_content>") and '"timezone": "Europe/Warsaw"' in call.output
    sent_back = [m["content"] for b in model.bodies for m in b["messages"] if m["role"] == "tool"]
    assert call.output in sent_back
    assert result.usage.tool_calls == 1 and result.status == "done" and not result.partial
    assert "Europe/Warsaw" in agent.result
    assert not process_alive(read_pid(pid_file))
    assert server.tools == [], "the swarm opens a clone per run and leaves the given server as it was"


async def test_errors_hang_and_a_fake_delimiter_reach_the_agent_and_the_run_goes_on():
    with LoopbackMCP() as mcp_server:
        subagent = calls_then_answer([("fail", {"reason": "no access"}), ("hang", {"seconds": 60}), ("inject", {}),
                                      ("echo", {"text": "still here"})])
        with FakeOpenAI(swarm_script([["Use every tool."]], subagent)) as model:
            started = time.perf_counter()
            result = await run_swarm(model, [MCPServer.http(mcp_server.url)], tool_timeout=1.0, tool_retries=0)
            elapsed = time.perf_counter() - started
        hang_cancelled = await asyncio.to_thread(mcp_server.hang_cancelled.wait, 5)

    agent = result.agents[0]
    failed, hung, injected, echoed = agent.tool_calls
    assert not failed.ok and failed.output.startswith("Error from fail: ToolError: " + OPEN_TAG.format("fail"))
    assert "refused: no access" in failed.output and failed.output.endswith("</untrusted_web_content>")
    assert not hung.ok and hung.output == "Error from hang: timed out after 1 s"
    assert elapsed < 10 and hang_cancelled, "the timeout cut the call and the server was told to stop it"
    assert injected.ok and injected.output.count(FAKE_CLOSING_TAG) == 1
    assert injected.output.endswith(FAKE_CLOSING_TAG) and "&lt;/untrusted_web_content>" in injected.output
    assert echoed.ok and "echo: still here" in echoed.output
    assert agent.status == "done" and agent.steps == 2 and "echo: still here" in agent.result
    assert result.usage.tool_calls == 4 and dict(mcp_server.calls) == {"fail": 1, "hang": 1, "inject": 1, "echo": 1}


async def test_the_tool_call_budget_is_exact_for_mcp_calls_and_bad_arguments_never_reach_the_server():
    with LoopbackMCP() as mcp_server:
        subagent = calls_then_answer([("echo", {"txt": "typo"})],
                                     [("echo", {"text": "one"}), ("echo", {"text": "two"}), ("echo", {"text": "three"})])
        with FakeOpenAI(swarm_script([["Echo three times."]], subagent)) as model:
            result = await run_swarm(model, [MCPServer.http(mcp_server.url)], max_tool_calls=2)

    bad, *echoes = result.agents[0].tool_calls
    assert not bad.executed and bad.output == "Error: bad arguments for echo: arguments: 'text' is a required property."
    assert [c.executed for c in echoes] == [True, True, False]
    assert echoes[2].output.startswith("Not executed: the run's budget of 2 tool calls is spent")
    assert mcp_server.calls["echo"] == 2 and result.usage.tool_calls == 2


@pytest.mark.parametrize("stop", ["cancel", "deadline"])
async def test_servers_are_closed_when_a_run_is_cancelled_or_reaches_its_deadline(tmp_path, stop):
    server, pid_file = time_server(tmp_path)
    with LoopbackMCP() as mcp_server:
        subagent = calls_then_answer([("hang", {"seconds": 60})])
        with FakeOpenAI(swarm_script([["Wait."]], subagent)) as model:
            backend = OpenAIBackend(model.base_url, "fake-model")
            swarm = Swarm(backend, [server, MCPServer.http(mcp_server.url)], tool_timeout=30,
                          deadline=2.0 if stop == "deadline" else None)
            run = asyncio.create_task(swarm.run("Wait for the slow tool."))
            while mcp_server.calls["hang"] == 0:
                assert not run.done(), run
                await asyncio.sleep(0.05)
            assert process_alive(read_pid(pid_file))
            if stop == "cancel":
                swarm.cancel()
            result = await asyncio.wait_for(run, 15)
            await backend.aclose()
        hang_cancelled = await asyncio.to_thread(mcp_server.hang_cancelled.wait, 5)

    assert result.partial and result.stop_reason == ("cancelled" if stop == "cancel" else "deadline")
    assert not process_alive(read_pid(pid_file))
    assert hang_cancelled


async def test_a_server_that_dies_mid_run_gives_the_agent_an_error_result(tmp_path):
    server, pid_file = time_server(tmp_path)

    @tool
    def stop_the_time_server() -> str:
        """Kills the time server."""
        os.kill(read_pid(pid_file), signal.SIGKILL)
        return "killed"

    subagent = calls_then_answer([("stop_the_time_server", {})], [("get_current_time", {"timezone": "Etc/UTC"})])
    with FakeOpenAI(swarm_script([["Break it."]], subagent)) as model:
        result = await asyncio.wait_for(run_swarm(model, [stop_the_time_server, server]), 30)

    killed, asked = result.agents[0].tool_calls
    assert killed.ok and not asked.ok and asked.executed
    assert asked.output.startswith("Error from get_current_time: MCPServerError: MCP server `sh -c")
    assert asked.output.endswith("closed the connection")
    assert result.agents[0].status == "done" and result.usage.tool_calls == 2


async def test_a_tool_name_taken_twice_is_an_error_naming_it_and_the_servers_are_closed(tmp_path):
    server, pid_file = time_server(tmp_path)

    @tool
    def get_current_time(timezone: str) -> str:
        """Our own clock."""
        return "noon"

    with FakeOpenAI(swarm_script([["Clash."]], calls_then_answer())) as model:
        with pytest.raises(MCPServerError, match=r"tool named 'get_current_time', and so does another tool"):
            await run_swarm(model, [get_current_time, server])
        assert model.requests == 0
    assert not process_alive(read_pid(pid_file))


def test_tools_from_a_json_schema_check_arguments_and_name_each_problem():
    async def call(arguments):
        return arguments

    schema = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
              "required": ["city"], "additionalProperties": False, "title": "forecastArguments"}
    forecast = Tool.from_schema("forecast", "The weather.", schema, call, untrusted=True)
    assert forecast.spec.parameters == {k: v for k, v in schema.items() if k != "title"} and forecast.untrusted
    assert forecast.validate('{"city": "Oslo", "days": 3}') == {"city": "Oslo", "days": 3}
    assert asyncio.run(forecast.invoke({"city": "Oslo"})) == {"city": "Oslo"}
    problems = {
        '{"days": 3}': "arguments: 'city' is a required property",
        '{"city": "Oslo", "days": "three"}': "days: 'three' is not of type 'integer'",
        '{"city": "Oslo", "hours": 1}': "arguments: Additional properties are not allowed ('hours' was unexpected)",
        '["Oslo"]': "arguments must be a JSON object, got list",
    }
    for arguments, problem in problems.items():
        with pytest.raises(ToolArgumentsError) as error:
            forecast.validate(arguments)
        assert str(error.value) == problem
    with pytest.raises(ValueError, match="not a valid JSON schema"):
        Tool.from_schema("broken", "", {"type": "object", "properties": {"x": {"type": "no-such-type"}}}, call)
    with pytest.raises(ValueError, match="1-64 letters"):
        Tool.from_schema("has.dot", "", schema, call)


def test_swarm_run_mcp_gives_the_agents_a_stdio_and_an_http_server(tmp_path):
    pid_file = tmp_path / "time-server.pid"
    subagent = calls_then_answer([("get_current_time", {"timezone": "Asia/Tokyo"}), ("echo", {"text": "cli"})])
    with LoopbackMCP() as mcp_server, FakeOpenAI(swarm_script([["Time in Tokyo?"]], subagent)) as model:
        result = runner.invoke(app, ["run", "What time is it in Tokyo?", "--base-url", model.base_url, "--model",
                                     "fake", "--web", "none", "--tools", "rank", "--json",
                                     "--mcp", shlex.join(time_server_command(pid_file)), "--mcp", mcp_server.url])

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["usage"]["tool_calls"] == 2 and mcp_server.calls["echo"] == 1
    assert "Asia/Tokyo" in data["agents"][0]["result"] and "echo: cli" in data["agents"][0]["result"]
    assert not process_alive(read_pid(pid_file))
    assert "--mcp" in runner.invoke(app, ["run", "--help"]).output


def test_bad_mcp_values_are_clear_errors():
    with socket.socket() as probe:  # a loopback port with no server behind it
        probe.bind(("127.0.0.1", 0))
        closed_url = f"http://127.0.0.1:{probe.getsockname()[1]}/mcp"
    crash = shlex.join([sys.executable, "-c", "import sys; sys.exit('broken on purpose')"])
    with FakeOpenAI(swarm_script([["Never asked."]], calls_then_answer())) as model:
        def swarm_run(*mcp: str):
            arguments = [a for value in mcp for a in ("--mcp", value)]
            return runner.invoke(app, ["run", "Task.", "--base-url", model.base_url, "--model", "fake", "--web", "none",
                                       *arguments])

        empty = swarm_run("  ")
        missing = swarm_run("no-such-mcp-server --flag")
        crashed = swarm_run(crash)
        refused = swarm_run(closed_url)
        assert model.requests == 0

    assert empty.exit_code == 2 and "--mcp needs a server" in empty.output
    assert missing.exit_code == 1
    assert "cannot open MCP server `no-such-mcp-server --flag`: [Errno 2] No such file or directory" in missing.stderr
    assert crashed.exit_code == 1 and f"cannot open MCP server `{crash}`" in crashed.stderr
    assert "the server closed the connection; its stderr ends: broken on purpose" in crashed.stderr
    assert refused.exit_code == 1 and f"cannot open MCP server `{closed_url}`: ConnectError" in refused.stderr
