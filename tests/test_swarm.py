"""The orchestrator against a loopback fake OpenAI server: budgets, caps, waves, deadlines, failures."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from fake_openai import (
    Counter,
    FakeError,
    FakeOpenAI,
    FakeReply,
    counting_lookup,
    spawn_results,
    subagent_task,
    swarm_script,
)

from kimi_swarm import Swarm, TransientToolError, read_trace, tool
from kimi_swarm.backend.chat.conversation import ReplyOptions
from kimi_swarm.backend.chat.openai_backend import OpenAIBackend
from kimi_swarm.events import AgentStarted, RunFinished, RunStarted, ToolCallStarted
from kimi_swarm.tools import ToolError, untrusted_output


async def run_swarm(server: FakeOpenAI, tools, task: str = "Research everything.", **limits):
    backend = OpenAIBackend(server.base_url, "fake-model")
    try:
        return await Swarm(backend, tools, **limits).run(task)
    finally:
        await backend.aclose()


async def test_120_agents_40_calls_execute_exactly_1500_calls_on_exactly_100_concurrent_agents(tmp_path):
    counter = Counter()
    def subagent(request, task, results):
        if any(r.startswith("Not executed") for r in results) or len(results) >= 40:
            return FakeReply(content=f"Done after {len(results)} results.")
        return FakeReply(tool_calls=[("lookup", {"query": f"{task} {len(results) + i}"}) for i in range(5)])

    tasks = [f"Find fact number {i:03d}" for i in range(120)]
    with FakeOpenAI(swarm_script([tasks], subagent), delay=0.2) as server:
        server.keep_bodies = True
        backend = OpenAIBackend(server.base_url, "fake-model")
        swarm = Swarm(backend, [counting_lookup(counter)], trace_path=tmp_path / "trace.jsonl")
        result = await swarm.run("Collect 120 facts.")
        await backend.aclose()

    assert counter.calls == 1500
    assert result.usage.tool_calls == 1500
    assert sum(a.executed_tool_calls for a in result.agents) == 1500
    assert result.usage.agents == len(result.agents) == 100
    assert [a.task for a in result.agents] == tasks[:100]
    assert all(a.executed_tool_calls <= 40 for a in result.agents)
    assert server.peak_in_flight >= 50
    assert result.partial and all(a.status == "budget" for a in result.agents)
    spawn_answer = result.orchestrator.transcript[3].content
    assert spawn_answer.count("(refused)") == 20 and "cap of 100 sub-agents" in spawn_answer
    assert result.answer == "Final answer."
    trace = read_trace(str(tmp_path / "trace.jsonl"))
    assert sum(isinstance(e, ToolCallStarted) for e in trace) == 1500
    assert isinstance(trace[0], RunStarted) and isinstance(trace[-1], RunFinished)
    # Every sub-agent request starts with the orchestrator's transcript up to its spawn call: the shared prefix.
    first = server.bodies[0]["messages"]
    spawn_turn = result.orchestrator.transcript[2]
    prefix = first + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in spawn_turn.tool_calls]}]
    sub_requests = [b for b in server.bodies if len(b["messages"]) > len(prefix) + 1
                    and b["messages"][len(prefix)]["content"].startswith("You are sub-agent")]
    assert len(sub_requests) >= 100
    assert all(b["messages"][:len(prefix)] == prefix for b in sub_requests)
    assert all(b["tools"] == server.bodies[0]["tools"] for b in sub_requests)


async def test_agent_cap_holds_across_waves():
    counter = Counter()

    def subagent(request, task, results):
        if not results:
            return FakeReply(tool_calls=[("lookup", {"query": task})])
        return FakeReply(content=f"{task}: {results[0]}")

    waves = [["a1", "a2", "a3"], ["b1", "b2", "b3", "b4"]]
    with FakeOpenAI(swarm_script(waves, subagent)) as server:
        result = await run_swarm(server, [counting_lookup(counter)], max_agents=5)

    assert [a.task for a in result.agents] == ["a1", "a2", "a3", "b1", "b2"]
    assert [a.wave for a in result.agents] == [1, 1, 1, 2, 2]
    second_spawn = result.orchestrator.transcript[5].content
    assert second_spawn.count("(refused)") == 2 and "task: b3" in second_spawn and "task: b4" in second_spawn
    assert result.usage.waves == 2 and result.usage.agents == 5 and counter.calls == 5
    # 3 orchestrator turns + the longest sub-agent of each wave (2 turns each).
    assert result.usage.critical_steps == 3 + 2 + 2
    assert not result.partial and result.status == "done"


async def test_deadline_stops_every_agent_promptly_and_returns_the_partial_result(tmp_path):
    counter = Counter()

    def subagent(request, task, results):
        return FakeReply(tool_calls=[("lookup", {"query": task})])

    with FakeOpenAI(swarm_script([["slow one", "slow two"]], subagent)) as server:
        backend = OpenAIBackend(server.base_url, "fake-model")
        swarm = Swarm(backend, [counting_lookup(counter, seconds=30)], deadline=1.0,
                      trace_path=tmp_path / "t.jsonl")
        started = time.perf_counter()
        result = await swarm.run("Take forever.")
        elapsed = time.perf_counter() - started
        await backend.aclose()

    assert elapsed < 3.0
    assert result.partial and result.stop_reason == "deadline"
    assert {a.status for a in result.agents} == {"deadline"}
    assert result.status == "deadline"
    assert result.answer.startswith("Partial result (deadline)")
    assert counter.running == 0
    last = read_trace(str(tmp_path / "t.jsonl"))[-1]
    assert isinstance(last, RunFinished) and last.partial


async def test_cancel_returns_partial_and_an_outer_cancel_still_saves_the_trace(tmp_path):
    counter = Counter()

    def subagent(request, task, results):
        return FakeReply(tool_calls=[("lookup", {"query": task})])

    with FakeOpenAI(swarm_script([["x", "y", "z"]], subagent)) as server:
        backend = OpenAIBackend(server.base_url, "fake-model")
        swarm = Swarm(backend, [counting_lookup(counter, seconds=30)], trace_path=tmp_path / "a.jsonl")
        run = asyncio.create_task(swarm.run("Wait."))
        while counter.calls < 3:
            await asyncio.sleep(0.01)
        swarm.cancel()
        result = await asyncio.wait_for(run, 2.0)
        assert result.stop_reason == "cancelled" and result.partial
        assert {a.status for a in result.agents} == {"cancelled"}

        swarm.trace_path = tmp_path / "b.jsonl"
        run = asyncio.create_task(swarm.run("Wait again."))
        while counter.calls < 6:
            await asyncio.sleep(0.01)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(run, 2.0)
        await backend.aclose()

    last = read_trace(str(tmp_path / "b.jsonl"))[-1]
    assert isinstance(last, RunFinished) and last.partial and last.status == "cancelled"
    assert counter.running == 0


async def test_malformed_calls_get_bounded_corrections_and_a_failing_agent_does_not_fail_the_run():
    counter = Counter()

    def subagent(request, task, results):
        if task == "hopeless":
            return FakeReply(tool_calls=[("lookup", "{not json")])
        turn = len(results)
        corrections = [m for m in request["messages"] if m["role"] == "user" and "could not be used" in m["content"]]
        if turn == 0:
            return FakeReply(tool_calls=[("lookup", "{not json")])
        if turn == 1:
            return FakeReply(tool_calls=[("lokup", {"query": "typo"})])
        if turn == 2:
            return FakeReply(tool_calls=[("lookup", {"query": 7, "extra": True})])
        if turn == 3 and not corrections:
            return FakeReply(tool_calls=[(None, {"query": "nameless"})])
        if turn == 3:
            return FakeReply(tool_calls=[("lookup", {"query": "right"})])
        return FakeReply(content=f"Found: {results[-1]}")

    with FakeOpenAI(swarm_script([["patient", "hopeless"]], subagent)) as server:
        result = await run_swarm(server, [counting_lookup(counter)], max_corrections=4)

    patient, hopeless = result.agents
    assert patient.status == "done" and counter.calls == 1
    outputs = [c.output for c in patient.tool_calls]
    assert "not valid JSON" in outputs[0]
    assert "unknown tool 'lokup'" in outputs[1] and "lookup" in outputs[1]
    assert "query" in outputs[2] and "extra" in outputs[2]
    assert [c.executed for c in patient.tool_calls] == [False, False, False, True]
    assert any("tool call 1 has no function name" in m.content for m in patient.transcript if m.role == "user")
    assert hopeless.status == "failed" and hopeless.steps == 5 and "malformed" in hopeless.result
    assert result.status == "done" and result.answer == "Final answer."


async def test_tool_errors_become_error_results_and_transient_ones_are_retried():
    attempts = {"flaky": 0, "broken": 0, "slow": 0}

    @tool(retries=3)
    async def flaky(query: str) -> str:
        """Fails twice, then works."""
        attempts["flaky"] += 1
        if attempts["flaky"] < 3:
            raise TransientToolError("upstream busy")
        return "flaky worked"

    @tool
    def broken(query: str) -> str:
        """Always fails."""
        attempts["broken"] += 1
        raise ValueError("bad input")

    @tool(timeout=0.2, retries=0)
    async def slow(query: str) -> str:
        """Never returns in time."""
        attempts["slow"] += 1
        await asyncio.sleep(10)
        return "too late"

    def subagent(request, task, results):
        if not results:
            return FakeReply(tool_calls=[(task, {"query": "q"})])
        return FakeReply(content=results[0])

    with FakeOpenAI(swarm_script([["flaky", "broken", "slow"]], subagent)) as server:
        result = await run_swarm(server, [flaky, broken, slow])

    by_task = {a.task: a.tool_calls[0] for a in result.agents}
    assert by_task["flaky"].ok and by_task["flaky"].attempts == 3 and by_task["flaky"].output == "flaky worked"
    assert not by_task["broken"].ok and "ValueError: bad input" in by_task["broken"].output
    assert attempts["broken"] == 1
    assert not by_task["slow"].ok and "timed out after 0.2 s" in by_task["slow"].output
    assert result.usage.tool_calls == 3
    assert {a.status for a in result.agents} == {"done"}


async def test_web_tool_refusals_are_not_retried_and_web_output_is_wrapped_as_untrusted():
    calls = []

    class Web:
        @untrusted_output
        async def fetch(self, url: str) -> str:
            """Fetches a page.

            Args:
                url: The address.
            """
            calls.append(url)
            if "blocked" in url:
                raise ToolError("This host is not allowed.")
            return f"Page text of {url}"

    def subagent(request, task, results):
        if not results:
            return FakeReply(tool_calls=[("fetch", {"url": task})])
        return FakeReply(content=results[0])

    with FakeOpenAI(swarm_script([["http://blocked.test/", "http://ok.test/a"]], subagent)) as server:
        result = await run_swarm(server, [Web().fetch])

    blocked, ok = (a.tool_calls[0] for a in result.agents)
    assert calls.count("http://blocked.test/") == 1 and blocked.attempts == 1
    assert "ToolError: This host is not allowed." in blocked.output
    assert ok.output.startswith("<untrusted_web_content") and "Page text of http://ok.test/a" in ok.output


async def test_step_cap_token_budget_and_concurrency_caps():
    counter = Counter()

    def endless(request, task, results):
        return FakeReply(tool_calls=[("lookup", {"query": f"{task} {len(results)}"})], prompt_tokens=100,
                         completion_tokens=20)

    with FakeOpenAI(swarm_script([[f"t{i}" for i in range(6)]], endless)) as server:
        capped = await run_swarm(server, [counting_lookup(counter, seconds=0.02)], max_agent_steps=3,
                                 max_concurrency=2)
    assert {a.status for a in capped.agents} == {"step_limit"} and all(a.steps == 3 for a in capped.agents)
    assert counter.calls == 6 * 3 and capped.partial
    assert max_running_agents(capped.trace) == 2

    counter = Counter()
    limited_lookup = counting_lookup(counter, seconds=0.05)
    limited_lookup.max_concurrency = 2
    with FakeOpenAI(swarm_script([[f"t{i}" for i in range(4)]], endless)) as server:
        budgeted = await run_swarm(server, [limited_lookup], token_budget=2000, max_agent_steps=50,
                                   reply_options=ReplyOptions(max_tokens=20))
    assert {a.status for a in budgeted.agents} == {"token_limit"} and budgeted.status == "token_limit"
    total = budgeted.usage.prompt_tokens + budgeted.usage.completion_tokens
    assert 1000 <= total <= 2000
    assert counter.peak == 2


def max_running_agents(trace) -> int:
    running = peak = 0
    for event in trace:
        if isinstance(event, AgentStarted) and event.agent_id:
            running += 1
            peak = max(peak, running)
        elif event.type == "agent_finished" and event.agent_id:
            running -= 1
    return peak


async def test_stream_yields_typed_events_and_the_result():
    counter = Counter()

    def subagent(request, task, results):
        if not results:
            return FakeReply(tool_calls=[("lookup", {"query": task})])
        return FakeReply(content=f"{results[0]} [http://facts.test/{task}]")

    answer = "Alpha holds [http://facts.test/alpha]. Beta is unseen [http://unseen.test/]."
    with FakeOpenAI(swarm_script([["alpha"]], subagent, answer=answer)) as server:
        backend = OpenAIBackend(server.base_url, "fake-model")
        stream = Swarm(backend, [counting_lookup(counter)]).stream("Stream it.")
        events = [event async for event in stream]
        await backend.aclose()

    kinds = [e.type for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert {"agent_started", "tool_call_started", "tool_call_finished", "tokens", "budget_left"} <= set(kinds)
    assert stream.result is not None and stream.result.answer == answer
    assert [c.url for c in stream.result.citations] == ["http://facts.test/alpha"]
    citation = stream.result.citations[0]
    assert citation.claim == "Alpha holds." and "Fact about alpha" in citation.evidence
    assert stream.result.unsupported_citations == ["http://unseen.test"]
    summary = json.loads(stream.result.summary_json())
    assert summary["usage"]["tool_calls"] == 1 and summary["unsupported_citations"] == ["http://unseen.test"]


async def test_sub_agents_cannot_spawn_and_orchestrator_spawn_arguments_are_checked():
    def script(request):
        task = subagent_task(request)
        if task is not None:
            if not any(m["role"] == "tool" and "only the orchestrator" in (m["content"] or "")
                       for m in request["messages"]):
                return FakeReply(tool_calls=[("spawn_agents", {"tasks": ["nested"]})])
            return FakeReply(content="I did it myself.")
        results = spawn_results(request)
        if not results:
            return FakeReply(tool_calls=[("spawn_agents", {"tasks": []})])
        if len(results) == 1:
            return FakeReply(tool_calls=[("spawn_agents", {"tasks": ["one"]})])
        return FakeReply(content="ok")

    with FakeOpenAI(script) as server:
        result = await run_swarm(server, [])

    assert "at least one non-empty task" in result.orchestrator.transcript[3].content
    assert len(result.agents) == 1 and result.agents[0].result == "I did it myself."
    assert result.usage.tool_calls == 0 and result.answer == "ok"



async def test_a_sub_agent_that_keeps_calling_spawn_agents_fails_after_the_correction_limit():
    """spawn_agents is not a sub-agent's tool: each attempt is a correction turn, so a sub-agent that
    repeats it stops at max_corrections instead of spending its whole step budget."""
    def script(request):
        if subagent_task(request) is not None:
            return FakeReply(tool_calls=[("spawn_agents", {"tasks": ["nested"]})])
        return FakeReply(tool_calls=[("spawn_agents", {"tasks": ["loop"]})]) if not spawn_results(request) \
            else FakeReply(content="done")

    with FakeOpenAI(script) as server:
        result = await run_swarm(server, [])

    agent = result.agents[0]
    assert agent.status == "failed" and agent.steps == 4, (agent.status, agent.steps)
    assert "orchestrator's tool" in agent.result


def test_run_sync_turns_a_model_failure_into_a_failed_result():
    with FakeOpenAI(lambda request: FakeError(401, message="bad key")) as server:
        result = Swarm(OpenAIBackend(server.base_url, "fake-model"), []).run_sync("Anything.")
    assert result.status == "failed" and result.partial
    assert "HTTP 401" in result.orchestrator.error and "bad key" in result.orchestrator.error
    assert result.answer.startswith("Partial result (failed)")


async def test_leaving_a_stream_early_cancels_the_run():
    counter = Counter()

    def subagent(request, task, results):
        return FakeReply(tool_calls=[("lookup", {"query": task})])

    with FakeOpenAI(swarm_script([["one", "two"]], subagent)) as server:
        backend = OpenAIBackend(server.base_url, "fake-model")
        async for event in Swarm(backend, [counting_lookup(counter, seconds=30)]).stream("Leave early."):
            if event.type == "tool_call_started":
                break
        for _ in range(100):
            if counter.calls and counter.running == 0:
                break
            await asyncio.sleep(0.02)
        await backend.aclose()
    assert counter.calls >= 1 and counter.running == 0


async def test_a_spawn_with_columns_gets_its_rows_as_one_table_and_a_final_one_is_the_answer():
    """Each sub-agent is asked for one row; rows come back under the columns as one table. An answer that is
    not one row of as many cells keeps its text in the task's row. With `final`, that table ends the run."""
    columns = ["Item", "Value", "Source"]
    answers = {"a": "| a | 1 | [http://facts.test/a] |", "b": "I found nothing.", "c": "| c | 3 |"}
    seen_tasks: list[str] = []

    def script(final: bool):
        def play(request):
            task = subagent_task(request)
            if task is not None:
                seen_tasks.append(next(m["content"] for m in request["messages"] if m["role"] == "tool"))
                return FakeReply(content=answers[task])
            if not spawn_results(request):
                return FakeReply(tool_calls=[("spawn_agents", {"tasks": list(answers), "columns": columns,
                                                               "final": final})])
            return FakeReply(content="Summary of the table.")
        return play

    table = ("| Item | Value | Source |\n| --- | --- | --- |\n| a | 1 | [http://facts.test/a] |\n"
             "| b | (done) I found nothing. |  |\n| c | (done) / c / 3 / |  |")
    with FakeOpenAI(script(final=True)) as server:
        final = await run_swarm(server, [])
    assert final.status == "done" and not final.partial
    assert final.answer == table and final.orchestrator.steps == 1
    assert final.orchestrator.transcript[-1].content == table
    assert all(text.endswith("with the columns | Item | Value | Source |, every source URL in square brackets.")
               for text in seen_tasks) and len(seen_tasks) == 3

    with FakeOpenAI(script(final=False)) as server:
        not_final = await run_swarm(server, [])
    assert not_final.answer == "Summary of the table." and not_final.orchestrator.steps == 2
    assert not_final.orchestrator.transcript[-2].content == table


@pytest.mark.parametrize("arguments, problem", [
    ({"tasks": ["a"], "final": True}, '"final": true needs "columns"'),
    ({"tasks": ["a"], "columns": []}, '"columns" must be a list of non-empty column titles'),
    ({"tasks": ["a"], "columns": ["A"], "final": "yes"}, '"final" must be true or false'),
])
async def test_bad_table_arguments_of_spawn_agents_are_named(arguments, problem):
    def script(request):
        if subagent_task(request) is not None:
            return FakeReply(content="| a |")
        return FakeReply(content="gave up") if spawn_results(request) else FakeReply(
            tool_calls=[("spawn_agents", arguments)])

    with FakeOpenAI(script) as server:
        result = await run_swarm(server, [])
    assert problem in result.orchestrator.transcript[3].content and result.agents == []
