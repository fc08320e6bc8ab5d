"""Record a swarm run over HTTP, replay it with no server (and with a tool tape, no tools), and get exactly
the same run; a replay that departs from its recording raises."""

from __future__ import annotations

import itertools
import json
import re

import pytest
from fake_openai import FakeOpenAI, FakeReply, swarm_script
from tools_support import LoopbackSite, respond

from kimi_swarm import RunResult, Swarm, ToolTape, as_tool, tool
from kimi_swarm.backend.chat.conversation import ReplyOptions
from kimi_swarm.backend.chat.messages import Message
from kimi_swarm.backend.chat.openai_backend import OpenAIBackend
from kimi_swarm.backend.chat.replay import RecordingBackend, ReplayBackend, ReplayMismatch
from kimi_swarm.tape import ToolTapeMismatch
from kimi_swarm.tools import Web, WebConfig


@tool
def capital(country: str) -> str:
    """The capital of a country, with its source.

    Args:
        country: The country's English name.
    """
    capitals = {"France": "Paris", "Peru": "Lima", "Kenya": "Nairobi"}
    return f"The capital of {country} is {capitals[country]}. Source: http://atlas.test/{country}"


def subagent(request, task, results):
    if not results:
        return FakeReply(tool_calls=[("capital", {"country": task})], prompt_tokens=50 + len(task))
    return FakeReply(content=f"{results[0].split(' Source')[0]} [http://atlas.test/{task}]", completion_tokens=9)


ANSWER = "Paris, Lima and Nairobi [http://atlas.test/France] [http://atlas.test/Peru] [http://atlas.test/Kenya]."


async def test_replay_reproduces_a_recorded_run_exactly(tmp_path):
    tape = tmp_path / "run.jsonl"
    with FakeOpenAI(swarm_script([["France", "Peru", "Kenya"]], subagent, answer=ANSWER)) as server:
        recorder = RecordingBackend(OpenAIBackend(server.base_url, "m"), tape)
        recorded = await Swarm(recorder, [capital]).run("Three capitals, please.")
        await recorder.aclose()
    assert server.requests == 8 and len(tape.read_text().splitlines()) == 8

    replay = ReplayBackend(tape)
    replayed = await Swarm(replay, [capital]).run("Three capitals, please.")

    assert replay.unused == 0
    assert replayed.answer == recorded.answer == ANSWER
    assert replayed.citations == recorded.citations and len(replayed.citations) == 3
    assert replayed.orchestrator.transcript == recorded.orchestrator.transcript
    assert [a.transcript for a in replayed.agents] == [a.transcript for a in recorded.agents]
    assert [(a.status, a.result) for a in replayed.agents] == [(a.status, a.result) for a in recorded.agents]
    drop_time = {"wall_seconds"}
    assert replayed.usage.model_dump(exclude=drop_time) == recorded.usage.model_dump(exclude=drop_time)


async def test_replay_refuses_a_run_that_differs_from_the_recording(tmp_path):
    tape = tmp_path / "run.jsonl"
    with FakeOpenAI(swarm_script([["France"]], subagent, answer="Paris.")) as server:
        recorder = RecordingBackend(OpenAIBackend(server.base_url, "m"), tape)
        await Swarm(recorder, [capital]).run("One capital.")
        await recorder.aclose()

    @tool(name="capital")
    def changed_capital(country: str) -> str:
        """The capital of a country, with its source.

        Args:
            country: The country's English name.
        """
        return "The capital moved."

    with pytest.raises(ReplayMismatch, match="no recorded reply for this request"):
        await Swarm(ReplayBackend(tape), [changed_capital]).run("One capital.")

    conversation = await ReplayBackend(tape).open([Message(role="user", content="Another task")], [])
    with pytest.raises(ReplayMismatch, match="no recorded reply"):
        await conversation.reply(ReplyOptions())


def test_a_damaged_tape_names_the_line(tmp_path):
    tape = tmp_path / "bad.jsonl"
    tape.write_text('{"key": "k", "reply": {"content": "x"}}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        ReplayBackend(tape)


def fact_site() -> LoopbackSite:
    """Pages whose text changes on every visit, so re-running the tools could never reproduce a run."""
    visits = itertools.count(1)

    def fact(name: str, value: str):
        return lambda request: respond(request, f"<html><head><title>{name}</title></head><body><article><p>"
                                                f"The height of {name} is {value} metres. This page has been "
                                                f"served {next(visits)} times.</p></article></body></html>")

    return LoopbackSite({"/alpha": fact("Alpha", "120"), "/beta": fact("Beta", "95"), "/gamma": fact("Gamma", "80"),
                         "/alpha/more": fact("Alpha Annex", "12"), "/beta/more": fact("Beta Annex", "9"),
                         "/gamma/more": fact("Gamma Annex", "8")})


def fetching_subagent(site: LoopbackSite):
    """Each sub-agent fetches two pages in one turn, then answers with the first fact and its URL."""

    def subagent(request, task, results):
        if not results:
            return FakeReply(tool_calls=[("fetch", {"url": site.url(f"/{task}")}),
                                         ("fetch", {"url": site.url(f"/{task}/more")})])
        found = [r for r in results if "The height" in r]
        if not found:
            return FakeReply(content=f"No fact about {task}: the budget ran out.")
        fact = re.search(r"The height of \w+ is \d+ metres", found[0]).group(0)
        return FakeReply(content=f"{fact} [{site.url('/' + task)}]")

    return subagent


def tool_outcomes(result: RunResult) -> list[list[tuple]]:
    return [[(c.tool, c.arguments, c.executed, c.ok, c.output, c.attempts) for c in agent.tool_calls]
            for agent in [result.orchestrator, *result.agents]]


async def test_tool_tape_replays_a_live_web_run_offline_exactly(tmp_path):
    model_tape, tool_tape_file = tmp_path / "run.jsonl", tmp_path / "run.jsonl.tools.jsonl"
    with fact_site() as site:
        answer = " ".join(f"{name} [{site.url('/' + name)}]." for name in ("alpha", "beta", "gamma"))
        script = swarm_script([["alpha", "beta", "gamma"]], fetching_subagent(site), answer=answer)
        with FakeOpenAI(script) as server:
            async with Web(WebConfig(allowed_hosts=[site.url("/").split("/")[2]])) as live_web:
                recorder = RecordingBackend(OpenAIBackend(server.base_url, "m"), model_tape)
                with ToolTape.record(tool_tape_file) as tape:
                    recorded = await Swarm(recorder, [live_web.fetch], max_tool_calls=5, tool_tape=tape).run(
                        "Three heights.")
                await recorder.aclose()
        assert sum(site.hits.values()) == 5

    called = []

    async def must_not_run(**arguments):
        called.append(arguments)
        raise AssertionError("a replay ran a tool")

    async with Web() as offline_web:
        replay_fetch = as_tool(offline_web.fetch)
        replay_fetch.fn = must_not_run
        replay, tape = ReplayBackend(model_tape), ToolTape.replay(tool_tape_file)
        replayed = await Swarm(replay, [replay_fetch], max_tool_calls=5, tool_tape=tape).run("Three heights.")

    assert called == [] and replay.unused == 0 and tape.unused == 0
    assert recorded.usage.tool_calls == 5 and recorded.partial
    assert sum(not c.executed for a in recorded.agents for c in a.tool_calls) == 1
    assert replayed.answer == recorded.answer == answer
    assert replayed.citations == recorded.citations and len(replayed.citations) == 3
    assert all("The height of" in c.evidence for c in replayed.citations)
    assert tool_outcomes(replayed) == tool_outcomes(recorded)
    assert [(a.status, a.result) for a in replayed.agents] == [(a.status, a.result) for a in recorded.agents]
    drop_time = {"wall_seconds"}
    assert replayed.usage.model_dump(exclude=drop_time) == recorded.usage.model_dump(exclude=drop_time)


async def test_a_replay_that_departs_from_the_tool_tape_raises(tmp_path):
    tape_file = tmp_path / "tools.jsonl"
    with FakeOpenAI(swarm_script([["France", "Peru"]], subagent, answer=ANSWER)) as server:
        backend = OpenAIBackend(server.base_url, "m")
        with ToolTape.record(tape_file) as tape:
            swarm = Swarm(backend, [capital], tool_tape=tape)
            await swarm.run("Two capitals.")
            with pytest.raises(ValueError, match="already used for a run; open a new tape for each run"):
                await swarm.run("Two capitals again.")
        await backend.aclose()
    assert len(tape_file.read_text().splitlines()) == 2

    def asks_for_kenya(request, task, results):
        return subagent(request, "Kenya" if task == "Peru" else task, results)

    with FakeOpenAI(swarm_script([["France", "Peru"]], asks_for_kenya, answer=ANSWER)) as server:
        backend = OpenAIBackend(server.base_url, "m")
        with pytest.raises(ToolTapeMismatch, match=r'agent 2, turn 1, call 1 called capital \{"country": "Kenya"\}, '
                                                   r'the recording has capital \{"country": "Peru"\}'):
            await Swarm(backend, [capital], tool_tape=ToolTape.replay(tape_file)).run("Two capitals.")
        await backend.aclose()

    with pytest.raises(ToolTapeMismatch, match="no recorded tool call for agent 3"):
        ToolTape.replay(tape_file).take(3, 1, 0, "capital", "{}")
    (tmp_path / "two_runs.jsonl").write_text(tape_file.read_text() * 2)
    first_recorded = json.loads(tape_file.read_text().splitlines()[0])["agent_id"]  # the two sub-agents race
    with pytest.raises(ValueError, match=f"two_runs.jsonl:3: a second outcome for agent {first_recorded}, turn 1, "
                                         "call 1: a tool tape holds one run"):
        ToolTape.replay(tmp_path / "two_runs.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"agent_id": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: not a tool outcome"):
        ToolTape.replay(tmp_path / "bad.jsonl")
