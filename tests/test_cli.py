"""`swarm run` against the loopback fake server with test-local tools; Ctrl-C in a real process."""

from __future__ import annotations

import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from fake_openai import CLI_COUNTER, FakeOpenAI, FakeReply, swarm_script, teacher_script
from rich.console import Console
from typer.testing import CliRunner

from kimi_swarm.budget import Limits
from kimi_swarm.cli import app
from kimi_swarm.display import LivePanel
from kimi_swarm.events import AgentFinished, AgentStarted, Tokens, ToolCallStarted, read_trace
from kimi_swarm.offline_web import ensure_site
from kimi_swarm.offline_web.tasks import sample_task

REPO = Path(__file__).resolve().parent.parent
HELPERS = os.pathsep.join(str(REPO / folder) for folder in ("tests", "training"))
"""Where a child process finds the test helpers (fake_openai imports the training teacher), as pytest does."""
SWARM = str(Path(sys.executable).parent / "swarm")
"""The installed command, run from the checkout root as the README runs it (the root is not on its sys.path)."""
runner = CliRunner(env={"COLUMNS": "200"})  # so typer's error boxes do not wrap the messages the tests look for
ANSWER = "Alpha is first [http://facts.test/alpha]."


def answering_subagent(request, task, results):
    if not results:
        return FakeReply(tool_calls=[("lookup", {"query": task})])
    return FakeReply(content=f"{results[0]} [http://facts.test/{task}]")


def cli(server: FakeOpenAI, *args: str):
    return runner.invoke(app, ["run", "Find the facts.", "--base-url", server.base_url, "--model", "fake",
                               "--web", "none", "--tools-from", "fake_openai:CLI_TOOLS", *args])


def test_help_documents_every_option_and_the_exit_codes():
    result = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--base-url", "--model", "--api-key", "--stream", "--device", "--dtype", "--max-agents",
                   "--max-tool-calls", "--max-agent-steps", "--max-orchestrator-steps", "--concurrency", "--deadline",
                   "--token-budget", "--max-tokens", "--temperature", "--tools", "--web", "--search", "--tools-from",
                   "--context", "--out", "--json", "--trace", "--record", "--replay"):
        assert option in result.output
    for code in ("0 the run finished", "1 error", "2 usage error", "3 partial", "130 interrupted"):
        assert code in result.output
    assert "serve-web" in runner.invoke(app, ["--help"]).output
    assert "--port" in runner.invoke(app, ["serve-web", "--help"]).output


def test_run_prints_json_and_writes_trace_and_report(tmp_path):
    calls_before = CLI_COUNTER.calls
    with FakeOpenAI(swarm_script([["alpha", "beta"]], answering_subagent, answer=ANSWER)) as server:
        result = cli(server, "--json", "--trace", str(tmp_path / "trace.jsonl"), "--out", str(tmp_path / "r.md"))

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["answer"] == ANSWER and data["partial"] is False
    assert data["usage"]["tool_calls"] == 2 and data["usage"]["agents"] == 2
    assert data["citations"][0]["url"] == "http://facts.test/alpha"
    assert "Fact about alpha" in data["citations"][0]["evidence"]
    assert CLI_COUNTER.calls - calls_before == 2
    events = read_trace(str(tmp_path / "trace.jsonl"))
    assert events[0].type == "run_started" and events[-1].type == "run_finished"
    report = (tmp_path / "r.md").read_text()
    assert ANSWER in report and "## Sources" in report and "<http://facts.test/alpha>" in report
    assert "agent 1 started" in result.stderr and "2/1500 tool calls" in result.stderr


def test_plain_output_and_report_say_which_cited_urls_no_tool_read(tmp_path):
    answer = "Alpha holds [http://facts.test/alpha]. Gamma too [http://invented.test/gamma]."
    with FakeOpenAI(swarm_script([["alpha"]], answering_subagent, answer=answer)) as server:
        result = cli(server, "--out", str(tmp_path / "r.md"))
    assert result.exit_code == 0, result.output
    sources, unread = result.stdout.split("\nSources:\n")[1].split("\nCited but never read by this run (not a source):\n")
    assert sources.split() == ["[1]", "http://facts.test/alpha"] and unread.split() == ["http://invented.test/gamma"]
    report = (tmp_path / "r.md").read_text().split("## Cited but never read by this run (not a source)\n")
    assert "<http://facts.test/alpha>" in report[0] and report[1].split("\n## ")[0].split() == [
        "-", "<http://invented.test/gamma>"]


def test_a_cut_short_run_exits_3_and_bad_options_are_named():
    with FakeOpenAI(swarm_script([["a", "b", "c"]], answering_subagent, answer=ANSWER)) as server:
        partial = cli(server, "--max-tool-calls", "1", "--json")
    assert partial.exit_code == 3
    data = json.loads(partial.stdout)
    assert data["partial"] is True and data["usage"]["tool_calls"] == 1

    no_model = runner.invoke(app, ["run", "x", "--base-url", "http://127.0.0.1:9/v1"])
    assert no_model.exit_code == 2 and "--base-url needs --model" in no_model.output
    bad_tool = runner.invoke(app, ["run", "x", "--tools", "search,teleport", "--base-url", "http://h/v1",
                                   "--model", "m"])
    assert bad_tool.exit_code == 2 and "teleport" in bad_tool.output
    missing = runner.invoke(app, ["run", "x", "--model", "/nonexistent/checkpoint", "--web", "none"])
    assert missing.exit_code == 1 and "not a checkpoint directory" in missing.stderr
    bad_import = runner.invoke(app, ["run", "x", "--replay", __file__, "--tools-from", "nowhere"])
    assert bad_import.exit_code == 1 and "package.module:attribute" in bad_import.stderr
    bad_search = runner.invoke(app, ["run", "x", "--search", "bing", "--base-url", "http://h/v1", "--model", "m"])
    assert bad_search.exit_code == 2 and "unknown search provider 'bing'" in bad_search.output
    offline_search = runner.invoke(app, ["run", "x", "--search", "brave", "--web", "offline"])
    assert offline_search.exit_code == 2 and "--search is for the live web" in offline_search.output
    served_dtype = runner.invoke(app, ["run", "x", "--dtype", "bfloat16", "--base-url", "http://h/v1", "--model", "m",
                                       "--web", "none"])
    assert served_dtype.exit_code == 1 and "do not apply to --base-url" in served_dtype.stderr
    bad_device = runner.invoke(app, ["run", "x", "--device", "tpu", "--web", "none"])
    assert bad_device.exit_code == 1 and "unknown device 'tpu'" in bad_device.stderr
    bad_dtype = runner.invoke(app, ["run", "x", "--dtype", "float64", "--web", "none"])
    assert bad_dtype.exit_code == 2 and "float64" in bad_dtype.output


def test_record_then_replay_without_a_server_or_tools(tmp_path):
    tape = tmp_path / "tape.jsonl"
    with FakeOpenAI(swarm_script([["alpha"]], answering_subagent, answer=ANSWER)) as server:
        recorded = cli(server, "--json", "--record", str(tape))
    assert recorded.exit_code == 0, recorded.output
    assert len((tmp_path / "tape.jsonl.tools.jsonl").read_text().splitlines()) == 1

    calls_before = CLI_COUNTER.calls
    replay = ["--replay", str(tape), "--web", "none", "--tools-from", "fake_openai:CLI_TOOLS", "--json"]
    replayed = runner.invoke(app, ["run", "Find the facts.", *replay])
    assert replayed.exit_code == 0, replayed.output
    assert CLI_COUNTER.calls == calls_before
    assert json.loads(replayed.stdout)["answer"] == json.loads(recorded.stdout)["answer"] == ANSWER
    assert json.loads(replayed.stdout)["citations"] == json.loads(recorded.stdout)["citations"]

    departed = runner.invoke(app, ["run", "Find other facts.", *replay])
    assert departed.exit_code == 1 and "no recorded reply for this request" in departed.stderr
    assert departed.stdout == ""


def test_ctrl_c_stops_the_run_and_still_saves_the_partial_result(tmp_path):
    script = swarm_script([["slow a", "slow b"]], answering_subagent, answer=ANSWER)
    with FakeOpenAI(script) as server:
        process = subprocess.Popen(
            [SWARM, "run", "Wait for it.", "--base-url",
             server.base_url, "--model", "fake", "--web", "none", "--tools-from", "fake_openai:SLOW_TOOLS",
             "--json", "--out", str(tmp_path / "partial.md")],
            cwd=REPO, env={**os.environ, "PYTHONPATH": HELPERS}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        waited = 0.0
        while server.requests < 3 and waited < 60:
            time.sleep(0.1)
            waited += 0.1
        time.sleep(0.3)
        interrupted_at = time.perf_counter()
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
        stopped_in = time.perf_counter() - interrupted_at

    assert process.returncode == 130, stderr
    assert stopped_in < 5
    data = json.loads(stdout)
    assert data["partial"] is True and data["stop_reason"] == "cancelled"
    assert {agent["status"] for agent in data["agents"]} == {"cancelled"}
    assert "Partial result (cancelled)" in (tmp_path / "partial.md").read_text()


def test_live_panel_shows_agents_tool_budget_and_tokens():
    console = Console(file=io.StringIO(), force_terminal=True, color_system=None, width=120)
    panel = LivePanel(console, Limits(max_tool_calls=10, max_agents=4), "Find the facts.")
    with panel:
        panel(AgentStarted(t=0.1, agent_id=1, task="alpha", wave=1))
        panel(AgentStarted(t=0.1, agent_id=2, task="beta", wave=1))
        panel(ToolCallStarted(t=0.2, agent_id=1, call_id="c1", tool="lookup", arguments="{}"))
        panel(Tokens(t=0.3, agent_id=1, prompt_tokens=40, completion_tokens=12))
        panel(AgentFinished(t=0.4, agent_id=1, status="done", steps=2, tool_calls=1, result="ok"))
    screen = console.file.getvalue()
    assert "1 running, 1 done (cap 4)" in screen
    assert "1 / 10" in screen and "40 in, 12 out" in screen and "tok/s" in screen
    assert "agent 1 done after 2 steps" in screen


def test_serve_web_serves_the_offline_web_until_ctrl_c():
    process = subprocess.Popen([SWARM, "serve-web", "--port", "0"],
                               cwd=REPO, env={**os.environ, "PYTHONPATH": HELPERS}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        banner = process.stdout.readline()
        base_url = re.search(r"at (http://127\.0\.0\.1:\d+/)", banner).group(1)
        pages = int(re.search(r"(\d+) pages", banner).group(1))
        home = httpx.get(base_url, timeout=10)
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert pages >= 2000
    assert home.status_code == 200 and "<a href=" in home.text
    assert process.returncode == 0, stderr


def test_offline_web_run_records_and_replays_with_no_model_and_no_web(tmp_path):
    manifest = ensure_site()[1]
    task = sample_task(manifest, "compare", "heldout", random.Random(3), 3)
    tape = tmp_path / "run.jsonl"
    with FakeOpenAI(teacher_script(task, manifest)) as server:
        recorded = runner.invoke(app, ["run", task.prompt, "--base-url", server.base_url, "--model", "teacher",
                                       "--web", "offline", "--tools", "search,fetch,rank", "--json", "--record", str(tape)])
    assert recorded.exit_code == 0, recorded.output
    data = json.loads(recorded.stdout)
    assert re.search(rf"^Answer: {task.answer}\. The .* of {task.answer} is .* \[http://127\.0\.0\.1:\d+{task.answer_url_path}\]\.$",
                     data["answer"], re.MULTILINE)
    assert sorted(c["url"].split("/", 3)[3] for c in data["citations"]) == sorted(
        lookup.url_path.lstrip("/") for lookup in task.waves[0])
    assert data["usage"]["tool_calls"] == 7 and data["usage"]["agents"] == 3  # 3 searches, 3 fetches, 1 rank

    replayed = runner.invoke(app, ["run", task.prompt, "--replay", str(tape), "--tools", "search,fetch,rank", "--json"])
    assert replayed.exit_code == 0, replayed.output
    again = json.loads(replayed.stdout)
    assert (again["answer"], again["citations"]) == (data["answer"], data["citations"])
    assert again["usage"] | {"wall_seconds": 0} == data["usage"] | {"wall_seconds": 0}
