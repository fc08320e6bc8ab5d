"""Resuming crashed runs: `swarm run --trace` SIGKILLed at chosen points and continued with `swarm run --resume`,
on the loopback fake model; the embedded default model on the README's task, killed and resumed; a trace of
another run refused, naming what differs."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fake_openai import FakeOpenAI, FakeReply, spawn_results, subagent_task, tool_results_since_task
from typer.testing import CliRunner

from kimi_swarm import ResumeError, Swarm, as_tool, read_trace, tool
from kimi_swarm.backend import EngineBackend, OpenAIBackend, default_model_path
from kimi_swarm.cli import app
from kimi_swarm.launch import offline_web_tools
from kimi_swarm.offline_web import OfflineWeb
from kimi_swarm.tools import rank

REPO = Path(__file__).resolve().parent.parent
HELPERS = os.pathsep.join(str(REPO / folder) for folder in ("tests", "training"))
"""Where a child process finds the test helpers (fake_openai imports the training teacher), as pytest does."""
SWARM = str(Path(sys.executable).parent / "swarm")
TOOL_LOG = "RESUME_TOOL_LOG"
"""The file every execution of `note` appends its query to, in whichever process it runs."""
TASK = "Find the facts."
WAVE = ["alpha", "beta", "gamma"]
LOOKUPS = 3
runner = CliRunner(env={"COLUMNS": "200"})


@tool
def note(query: str) -> str:
    """Looks a query up and returns what was found.

    Args:
        query: What to look up.
    """
    with open(os.environ[TOOL_LOG], "a", encoding="utf-8") as log:
        log.write(query + "\n")
    return f"Fact about {query}. Source: http://facts.test/{query.replace(' ', '-')}"


@tool(name="note")
def note_with_limit(query: str, limit: int = 3) -> str:
    """Looks a query up and returns what was found.

    Args:
        query: What to look up.
        limit: How many facts to return.
    """
    return f"Fact about {query}."


TOOLS = [note]
"""For `swarm run --tools-from test_resume:TOOLS`."""
CHANGED_TOOLS = [note_with_limit]
"""A tool of the same name with another schema."""


class Model:
    """The fake model: the orchestrator spawns WAVE, then answers with the whole spawn result; each sub-agent looks
    up LOOKUPS queries, one a turn, then answers with its facts. When the request `crash_on` picks arrives, the
    `swarm run` process asking is SIGKILLed (once), before it gets its reply."""

    def __init__(self) -> None:
        self.crash_on: Callable[[dict[str, Any]], bool] | None = None
        self.victim: subprocess.Popen | None = None

    def __call__(self, request: dict[str, Any]) -> FakeReply:
        if self.crash_on is not None and self.victim is not None and self.crash_on(request):
            self.crash_on = None
            os.kill(self.victim.pid, signal.SIGKILL)
        task = subagent_task(request)
        if task is None:
            spawned = spawn_results(request)
            if not spawned:
                return FakeReply(tool_calls=[("spawn_agents", {"tasks": WAVE})])
            return FakeReply(content=f"Summary of {len(WAVE)} agents:\n{spawned[0]}")
        results = tool_results_since_task(request)
        if len(results) < LOOKUPS:
            return FakeReply(tool_calls=[("note", {"query": f"{task} {len(results) + 1}"})])
        return FakeReply(content=f"{task}: " + " ".join(result.split(" Source")[0] for result in results))


def subagent_turn(task: str, done: int) -> Callable[[dict[str, Any]], bool]:
    """The request of `task`'s sub-agent after `done` of its tool calls."""
    return lambda request: subagent_task(request) == task and len(tool_results_since_task(request)) == done


def orchestrators_last_turn(request: dict[str, Any]) -> bool:
    return subagent_task(request) is None and bool(spawn_results(request))


class Runs:
    """`swarm run` processes against one fake model server, all logging their tool executions to one file."""

    def __init__(self, server: FakeOpenAI, model: Model, tmp_path: Path) -> None:
        self.server, self.model = server, model
        self.log = tmp_path / "executed.txt"
        self.trace = tmp_path / "trace.jsonl"

    def swarm(self, *args: str, crash_on: Callable[[dict[str, Any]], bool] | None = None) -> tuple[int, str, str]:
        """Run `swarm run ARGS` with the fake model and the `note` tool; with `crash_on`, SIGKILL it there."""
        self.model.crash_on = crash_on
        self.model.victim = process = subprocess.Popen(
            [SWARM, "run", *args, "--base-url", self.server.base_url, "--model", "fake", "--web", "none",
             "--tools-from", "test_resume:TOOLS", "--json"],
            cwd=REPO, env={**os.environ, "PYTHONPATH": HELPERS, TOOL_LOG: str(self.log)}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        stdout, stderr = process.communicate(timeout=120)
        assert crash_on is None or process.returncode == -signal.SIGKILL, (process.returncode, stderr)
        return process.returncode, stdout, stderr

    def crash(self, crash_on: Callable[[dict[str, Any]], bool], *limits: str) -> None:
        self.swarm(TASK, "--trace", str(self.trace), "--concurrency", "1", *limits, crash_on=crash_on)

    def resume(self, crash_on: Callable[[dict[str, Any]], bool] | None = None) -> tuple[int, dict[str, Any]]:
        """`swarm run --resume TRACE` with only the model and tools: task, limits and options are the trace's."""
        code, stdout, stderr = self.swarm("--resume", str(self.trace), crash_on=crash_on)
        assert crash_on is not None or code in (0, 3), stderr
        return code, (json.loads(stdout) if crash_on is None else {})

    def executed(self) -> collections.Counter[str]:
        return collections.Counter(self.log.read_text().split("\n")[:-1]) if self.log.exists() else collections.Counter()

    def finished_agents(self) -> dict[int, str]:
        events = read_trace(str(self.trace))
        assert not any(e.type == "run_finished" for e in events), "the crash came after the run finished"
        return {e.agent_id: e.status for e in events if e.type == "agent_finished"}


@pytest.fixture
def runs(tmp_path):
    model = Model()
    with FakeOpenAI(model) as server:
        yield Runs(server, model, tmp_path)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, tuple[dict[str, Any], collections.Counter[str]]]:
    """The same run with no crash, with the budget it wants and with 7 of its 9 tool calls: (result, executions)."""
    model = Model()
    outcomes = {}
    with FakeOpenAI(model) as server:
        for budget in ("1500", "7"):
            runs = Runs(server, model, tmp_path_factory.mktemp(f"budget{budget}"))
            code, stdout, stderr = runs.swarm(TASK, "--concurrency", "1", "--max-tool-calls", budget)
            assert code == (0 if budget == "1500" else 3), stderr
            outcomes[budget] = json.loads(stdout), runs.executed()
    return outcomes


@pytest.mark.parametrize("crash_on, finished", [
    (subagent_turn("gamma", 0), {1: "done", 2: "done"}),
    (subagent_turn("beta", 2), {1: "done"}),
    (orchestrators_last_turn, {1: "done", 2: "done", 3: "done"}),
], ids=["after-two-sub-agents-finished", "mid-way-through-a-sub-agent", "during-the-orchestrators-last-turn"])
def test_a_killed_run_resumes_to_the_uninterrupted_answer_running_each_tool_call_once(runs, uninterrupted, crash_on,
                                                                                    finished):
    expected, expected_calls = uninterrupted["1500"]
    runs.crash(crash_on)
    assert runs.finished_agents() == finished
    before = runs.executed()

    code, result = runs.resume()

    assert code == 0
    assert result["answer"] == expected["answer"] and result["partial"] is False
    assert [(a["status"], a["result"]) for a in result["agents"]] == [
        (a["status"], a["result"]) for a in expected["agents"]]
    assert runs.executed() == expected_calls and set(expected_calls.values()) == {1}
    finished_calls = {f"{WAVE[agent - 1]} {n}" for agent in finished for n in range(1, LOOKUPS + 1)}
    assert finished_calls <= set(before), "the crash came before those sub-agents ran their calls"
    usage = {key: value for key, value in result["usage"].items() if key != "wall_seconds"}
    assert usage == {key: value for key, value in expected["usage"].items() if key != "wall_seconds"}
    events = read_trace(str(runs.trace))
    assert [e.type for e in events].count("run_started") == 1 and events[-1].type == "run_finished"
    assert sum(e.type == "run_resumed" for e in events) == 1
    assert len([e for e in events if e.type == "tokens"]) == usage["model_calls"], "a replayed turn written twice"


def test_a_run_killed_twice_within_its_budget_resumes_again_and_never_overspends(runs, uninterrupted):
    """9 calls wanted, 7 allowed: crash mid-way through beta, crash the resumed run after gamma's one granted call,
    resume again: 7 calls ran in all, each once, and the answer is the uninterrupted run's."""
    expected, expected_calls = uninterrupted["7"]
    assert sum(expected_calls.values()) == 7 and expected["usage"]["tool_calls"] == 7
    runs.crash(subagent_turn("beta", 1), "--max-tool-calls", "7")
    assert runs.finished_agents() == {1: "done"} and sum(runs.executed().values()) == 4

    runs.resume(crash_on=subagent_turn("gamma", 1))
    assert runs.finished_agents() == {1: "done", 2: "done"} and runs.executed() == expected_calls

    code, result = runs.resume()

    assert code == 3 and result["partial"] is True and result["stop_reason"] == "budget"
    assert result["answer"] == expected["answer"]
    assert runs.executed() == expected_calls and result["usage"]["tool_calls"] == 7
    events = read_trace(str(runs.trace))
    assert [e.lost_tool_calls for e in events if e.type == "run_resumed"] == [0, 0]
    assert sum(e.type == "tool_call_started" for e in events) == 7


def test_a_line_the_crash_cut_off_is_dropped_and_the_run_goes_on_from_before_it(runs, uninterrupted):
    expected, expected_calls = uninterrupted["1500"]
    runs.crash(subagent_turn("beta", 1))
    whole = runs.trace.read_text()
    last = whole.splitlines(keepends=True)[-1]
    runs.trace.write_text(whole + last[:len(last) // 2])

    code, result = runs.resume()

    assert code == 0 and result["answer"] == expected["answer"] and runs.executed() == expected_calls
    assert [e.type for e in read_trace(str(runs.trace))].count("run_finished") == 1


def test_b_a_trace_of_another_task_tool_set_model_or_limits_is_refused_naming_the_difference(runs):
    runs.crash(subagent_turn("beta", 0))
    recorded = runs.trace.read_bytes()
    served = ["--base-url", "http://127.0.0.1:9/v1", "--web", "none"]

    def resume(*args: str, model: str = "fake", tools: str = "test_resume:TOOLS"):
        return runner.invoke(app, ["run", *args, "--resume", str(runs.trace), *served, "--model", model,
                                   "--tools-from", tools], env={TOOL_LOG: str(runs.log)})

    cases = {
        "a different task: 'Find the facts.' (this run: 'Find other facts.')": resume("Find other facts."),
        "different tools: rank, note (this run: rank, lookup)": resume(tools="fake_openai:CLI_TOOLS"),
        "different tools: the same names, but their descriptions or parameter schemas differ": resume(
            tools="test_resume:CHANGED_TOOLS"),
        "a different model: openai fake (this run: openai other)": resume(model="other"),
        "different limits: max_tool_calls 1500 (this run: 3)": resume("--max-tool-calls", "3"),
    }
    for message, refused in cases.items():
        assert refused.exit_code == 1, (message, refused.output)
        assert message in refused.stderr and "cannot resume" in refused.stderr, refused.stderr
    assert runs.trace.read_bytes() == recorded, "a refused resume changed the trace"

    with pytest.raises(ResumeError, match=r"a different task: 'Find the facts.' \(this run: 'Other.'\)"):
        asyncio.run(Swarm(OpenAIBackend("http://127.0.0.1:9/v1", "fake"), TOOLS).resume(runs.trace, task="Other."))

    lines = recorded.decode().splitlines(keepends=True)
    runs.trace.write_text(lines[0] + "{not json\n" + "".join(lines[1:]))
    damaged = resume()
    assert damaged.exit_code == 1 and f"{runs.trace}:2: not a swarm event" in damaged.stderr

    runs.trace.write_bytes(recorded)
    usage_errors = {"--resume": runner.invoke(app, ["run", "--help"]),
                    "give the research task, or --resume TRACE": runner.invoke(app, ["run", *served, "--model", "m"]),
                    "does not go with --record or --replay": runner.invoke(app, [
                        "run", "--resume", str(runs.trace), "--replay", str(runs.trace), "--web", "none"])}
    for message, answered in usage_errors.items():
        assert message in answered.output and answered.exit_code == (0 if message == "--resume" else 2), message
    assert runs.resume()[0] == 0
    finished = resume()
    assert finished.exit_code == 1 and "the run finished (done); only a run that crashed" in finished.stderr


TWO_HOP_TASK = "In which year was the mayor of Quun born?"
"""A task of the default model's over the embedded offline web whose second sub-agent starts after the first
finishes: a crash at the second one's first tool outcome leaves a sub-agent done and one mid-way."""


@tool
async def word_count(text: str) -> int:
    """Count the words of a text."""
    return len(text.split())


def readme_tools(web: Any, log: Path) -> list:
    """The README example's tools over the offline web, each execution logged to `log` as (tool, arguments)."""
    tools = [as_tool(t) for t in (web.search, web.fetch, web.browse, rank, word_count)]
    for each in tools:
        each.invoke = _logged(each.name, each.invoke, log)
    return tools


def _logged(name: str, invoke: Callable, log: Path) -> Callable:
    async def logged(arguments: dict[str, Any]) -> Any:
        with log.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps([name, arguments], sort_keys=True) + "\n")
        return await invoke(arguments)

    return logged


def crashing_two_hop_run() -> None:
    """In a child process: TWO_HOP_TASK with the README's tools on the default model, over the offline web at argv's
    address, killed (SIGKILL, by itself) at the first tool outcome after a sub-agent finished done."""
    trace, log, site_dir, base_url, host_port = sys.argv[1:6]
    site = SimpleNamespace(site_dir=Path(site_dir), base_url=base_url, host_port=host_port)

    def crash_there(event: Any) -> None:
        if event.type == "agent_finished" and event.agent_id and event.status == "done":
            crash_there.armed = True
        elif event.type == "tool_call_outcome" and getattr(crash_there, "armed", False):
            os.kill(os.getpid(), signal.SIGKILL)

    async def main() -> None:
        backend = EngineBackend.from_pretrained(default_model_path())
        async with offline_web_tools(site) as web:
            swarm = Swarm(backend, readme_tools(web, Path(log)), max_agents=100, max_tool_calls=1500,
                          deadline=600, trace_path=trace)
            swarm.add_listener(crash_there)
            await swarm.run(TWO_HOP_TASK)

    asyncio.run(main())


@pytest.mark.slow
async def test_c_the_default_model_resumed_after_a_crash_answers_as_an_uninterrupted_run(tmp_path):
    backend = EngineBackend.from_pretrained(default_model_path())
    trace, crashed_log, resumed_log, reference_log = (tmp_path / name for name in (
        "trace.jsonl", "crashed.txt", "resumed.txt", "reference.txt"))
    try:
        with OfflineWeb.start() as site:
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-c", "import test_resume; test_resume.crashing_two_hop_run()", str(trace),
                str(crashed_log), str(site.site_dir), site.base_url, site.host_port, cwd=REPO,
                env={**os.environ, "PYTHONPATH": HELPERS}, stderr=subprocess.PIPE)
            _, stderr = await asyncio.wait_for(child.communicate(), timeout=280)
            assert child.returncode == -signal.SIGKILL, stderr.decode()[-3000:]
            events = read_trace(str(trace))
            finished = {e.agent_id for e in events if e.type == "agent_finished"}
            started = {e.agent_id for e in events if e.type == "agent_started"}
            assert finished and 0 not in finished and started - finished - {0}, "no sub-agent was mid-way"
            assert not any(e.type == "run_finished" for e in events)

            async with offline_web_tools(site) as web:
                limits = dict(max_agents=100, max_tool_calls=1500, deadline=600)
                tools = {t.name: t for t in readme_tools(web, resumed_log)}
                resumed = await Swarm(backend, list(tools.values()), **limits).resume(trace)
                reference = await Swarm(backend, readme_tools(web, reference_log), **limits).run(TWO_HOP_TASK)
    finally:
        await backend.aclose()

    assert resumed.answer == reference.answer and resumed.answer.strip()
    assert resumed.citations == reference.citations
    assert [(a.status, a.result) for a in resumed.agents] == [(a.status, a.result) for a in reference.agents]
    crashed_calls, resumed_calls = crashed_log.read_text().splitlines(), resumed_log.read_text().splitlines()
    assert collections.Counter(crashed_calls + resumed_calls) == collections.Counter(
        reference_log.read_text().splitlines()), "a tool call ran again, or one is missing"
    whole = read_trace(str(trace))
    after_crash = [e.outcome for e in whole[len(events):] if e.type == "tool_call_outcome"]
    assert len(resumed_calls) == sum(o.executed for o in after_crash) > 0
    assert not {o.agent_id for o in after_crash} & finished, "a finished sub-agent ran a tool call again"
    before_crash = collections.Counter(json.dumps([o.tool, tools[o.tool].validate(o.arguments)], sort_keys=True)
                                       for e in events if e.type == "tool_call_outcome" and (o := e.outcome).executed)
    assert before_crash and not before_crash - collections.Counter(crashed_calls)
    assert resumed.usage.model_dump(exclude={"wall_seconds"}) == reference.usage.model_dump(exclude={"wall_seconds"})
    assert resumed.usage.wall_seconds > events[-1].t
