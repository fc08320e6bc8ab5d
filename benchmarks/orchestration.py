"""Orchestration overhead per tool call: 100 agents x 15 calls of an instant tool against a replay backend.

The tape is recorded first (RecordingBackend over an in-process scripted model), then replayed:
with a replayed model and a tool that returns at once, the run's whole wall time is the swarm's
own work (agent loops, limits, events, conversation bookkeeping, replay lookups) spread over 1,500
tool calls. Target: <= 1 ms per tool call on the 2-core development machine.

    .venv/bin/python benchmarks/orchestration.py [--agents 100] [--calls 15] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

from kimi_swarm import Swarm, prompts, tool
from kimi_swarm.backend.chat.conversation import ChatBackend, Conversation, Reply, ReplyOptions
from kimi_swarm.backend.chat.messages import Message, ToolCall, ToolSpec
from kimi_swarm.backend.chat.replay import RecordingBackend, ReplayBackend


@tool
async def instant(key: str) -> str:
    """Returns at once.

    Args:
        key: Anything.
    """
    return f"value of {key} from http://bench.test/{key}"


@tool
def instant_sync(key: str) -> str:
    """Returns at once (a plain function: it runs in a worker thread).

    Args:
        key: Anything.
    """
    return f"value of {key} from http://bench.test/{key}"


class ScriptedConversation(Conversation):
    """The model for recording: orchestrator spawns `agents` tasks; each sub-agent makes `calls` calls."""

    def __init__(self, messages: list[Message], agents: int, calls: int, per_turn: int, tool_name: str) -> None:
        self._messages = messages
        self.agents, self.calls, self.per_turn, self.tool_name = agents, calls, per_turn, tool_name

    async def add(self, messages: list[Message]) -> None:
        self._messages.extend(messages)

    async def reply(self, options: ReplyOptions) -> Reply:
        tool_turns = [m for m in self._messages if m.role == "tool"]
        is_subagent = any(m.content.startswith("You are sub-agent") for m in tool_turns)
        turn = len(self._messages)
        if not is_subagent:
            if tool_turns:
                reply = Reply(content="All done [http://bench.test/k0-0].", prompt_tokens=100, completion_tokens=10)
            else:
                tasks = [f"task {i}" for i in range(self.agents)]
                reply = Reply(tool_calls=[ToolCall(id=f"c{turn}", name=prompts.SPAWN_TOOL_NAME,
                                                   arguments=json.dumps({"tasks": tasks}))], finish_reason="tool_calls")
        else:
            done = len(tool_turns) - 1
            agent = next(m.content for m in tool_turns if m.content.startswith("You are sub-agent")).split()[3]
            if done < self.calls:
                batch = range(done, min(done + self.per_turn, self.calls))
                reply = Reply(tool_calls=[ToolCall(id=f"c{turn}-{i}", name=self.tool_name,
                                                   arguments=json.dumps({"key": f"k{agent}-{i}"})) for i in batch],
                              finish_reason="tool_calls", prompt_tokens=50, completion_tokens=8)
            else:
                reply = Reply(content=f"Agent {agent} found it [http://bench.test/k{agent}-0].", prompt_tokens=50,
                              completion_tokens=8)
        self._messages.append(reply.as_message())
        return reply

    def fork(self, n: int) -> list[Conversation]:
        return [ScriptedConversation(list(self._messages), self.agents, self.calls, self.per_turn, self.tool_name)
                for _ in range(n)]

    def close(self) -> None:
        """Nothing to release."""

    @property
    def messages(self) -> list[Message]:
        return list(self._messages)


class ScriptedBackend(ChatBackend):
    def __init__(self, agents: int, calls: int, per_turn: int, tool_name: str) -> None:
        self.args = (agents, calls, per_turn, tool_name)

    async def open(self, messages: list[Message], tools: list[ToolSpec]) -> Conversation:
        return ScriptedConversation(list(messages), *self.args)


def swarm_for(backend: ChatBackend, tool_fn, agents: int, calls: int, trace: Path | None) -> Swarm:
    return Swarm(backend, [tool_fn], max_agents=agents, max_tool_calls=agents * calls, max_agent_steps=calls + 1,
                 trace_path=trace)


async def measure(agents: int, calls: int, per_turn: int, tool_fn, repeats: int, with_trace: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tape = Path(tmp) / "tape.jsonl"
        recorder = RecordingBackend(ScriptedBackend(agents, calls, per_turn, tool_fn.name), tape)
        recorded = await swarm_for(recorder, tool_fn, agents, calls, None).run("Benchmark task.")
        await recorder.aclose()
        assert recorded.usage.tool_calls == agents * calls, recorded.usage
        times = []
        for _ in range(repeats):
            replay = ReplayBackend(tape)
            trace = Path(tmp) / "trace.jsonl" if with_trace else None
            started = time.perf_counter()
            result = await swarm_for(replay, tool_fn, agents, calls, trace).run("Benchmark task.")
            times.append(time.perf_counter() - started)
            assert result.usage.tool_calls == agents * calls and replay.unused == 0
            assert result.answer == recorded.answer and not result.partial
    best, median = min(times), statistics.median(times)
    total_calls = agents * calls
    return {
        "tool": tool_fn.name, "calls_per_turn": per_turn, "trace_file": with_trace,
        "model_turns": recorded.usage.model_calls, "tool_calls": total_calls,
        "median_s": round(median, 3), "best_s": round(best, 3),
        "median_ms_per_call": round(1000 * median / total_calls, 3),
        "best_ms_per_call": round(1000 * best / total_calls, 3),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"# {args.agents} agents x {args.calls} calls, replay backend, {platform.processor() or platform.machine()},"
          f" python {platform.python_version()}")
    cases = [(1, instant, False), (1, instant, True), (5, instant, False), (1, instant_sync, False)]
    for per_turn, tool_fn, with_trace in cases:
        print(json.dumps(await measure(args.agents, args.calls, per_turn, tool_fn, args.repeats, with_trace)))


if __name__ == "__main__":
    asyncio.run(main())
