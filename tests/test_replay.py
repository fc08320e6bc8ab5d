"""Record a swarm run over HTTP, replay it with no server, and get exactly the same run."""

from __future__ import annotations

import pytest

from backend.conversation import ReplyOptions
from backend.messages import Message
from backend.openai_backend import OpenAIBackend
from backend.replay import RecordingBackend, ReplayBackend, ReplayMismatch
from swarm import Swarm, tool
from tests.fake_openai import FakeOpenAI, FakeReply, swarm_script


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

    replayed = await Swarm(ReplayBackend(tape), [changed_capital]).run("One capital.")
    assert replayed.agents[0].status == "failed" and "ReplayMismatch" in replayed.agents[0].error

    conversation = await ReplayBackend(tape).open([Message(role="user", content="Another task")], [])
    with pytest.raises(ReplayMismatch, match="no recorded reply"):
        await conversation.reply(ReplyOptions())


def test_a_damaged_tape_names_the_line(tmp_path):
    tape = tmp_path / "bad.jsonl"
    tape.write_text('{"key": "k", "reply": {"content": "x"}}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        ReplayBackend(tape)
