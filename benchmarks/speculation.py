"""Speculative greedy decoding on the orchestrator's synthesis: with and without prompt-lookup drafts.

The prompt is a real held-out orchestrator conversation of the offline web up to its last turn (the teacher
plays every agent, the tools are real), so the model is asked for the answer it writes from its sub-agents'
reports. Each prompt is decoded greedily by the default model with drafts of each length given, and the
outputs must match the plain decode's token for token. Prints one table: tokens/s, tokens per forward pass,
speed-up.

    python benchmarks/speculation.py --tasks compare table --draft 0 4 8 16
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

from kimi_swarm.backend.chat.chat_format import render
from kimi_swarm.backend.engine.engine import Engine
from kimi_swarm.backend.engine.sampling import SamplingParams
from kimi_swarm.backend.model.default_model import default_model_path
from kimi_swarm.launch import offline_web_tools
from kimi_swarm.offline_web import OfflineWeb
from kimi_swarm.offline_web.tasks import sample_task

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))  # the teacher plays every agent
from trajectories import record_run  # noqa: E402

TABLE_ROWS = 20


async def synthesis_prompts(families: list[str], seed: int) -> list[tuple[str, str]]:
    """(family, rendered prompt) of each task's orchestrator, cut before its final answer."""
    rng = random.Random(seed)
    prompts = []
    with OfflineWeb.start(seed=0) as offline:
        web = offline_web_tools(offline)
        try:
            for family in families:
                task = sample_task(offline.manifest, family, "heldout", rng, TABLE_ROWS if family == "table" else None)
                backend = await record_run(task, offline.manifest, offline.base_url, web.tools())
                orchestrator = backend.conversations[0]
                prompts.append((family, render(orchestrator.messages[:-1], orchestrator.tools,
                                               add_generation_prompt=True)))
        finally:
            await web.aclose()
    return prompts


def count_forwards(engine: Engine) -> list[int]:
    """A list that grows by one with every forward pass the engine's model runner makes from now on (the CPU
    path: CUDA-graph decode steps would not pass through it)."""
    passes: list[int] = []
    forward = engine.runner._forward

    def counted(*args, **kwargs):
        passes.append(1)
        return forward(*args, **kwargs)

    engine.runner._forward = counted
    return passes


async def decode(engine: Engine, prompt: str, max_tokens: int, passes: list[int]) -> tuple[list[int], float, int]:
    """Greedy tokens of `prompt`, the seconds and the forward passes they took (the prompt's prefill excluded)."""
    session = await engine.session(prompt)
    try:
        started, before = time.perf_counter(), len(passes)
        out = await session.generate(SamplingParams(max_tokens=max_tokens))
        return out.token_ids, time.perf_counter() - started, len(passes) - before
    finally:
        session.close()


async def main_async(args: argparse.Namespace) -> None:
    prompts = await synthesis_prompts(args.tasks, args.seed)
    rows = []
    for family, prompt in prompts:
        baseline = None
        for draft in args.draft:
            engine = Engine.from_pretrained(args.model or default_model_path(), speculative_tokens=draft)
            passes = count_forwards(engine)
            try:
                await decode(engine, prompt, 8, passes)  # warm-up
                times, forward_counts, tokens = [], [], None
                for _ in range(args.repeats):
                    tokens, seconds, forwards = await decode(engine, prompt, args.max_tokens, passes)
                    times.append(seconds)
                    forward_counts.append(forwards)
            finally:
                engine.shutdown()
            seconds = statistics.median(times)
            forwards = statistics.median(forward_counts)
            baseline = baseline or (tokens, seconds)
            same = "yes" if tokens == baseline[0] else "NO"
            rows.append((family, draft, len(tokens), len(tokens) / seconds, len(tokens) / max(forwards, 1),
                         baseline[1] / seconds, same))
    print("| synthesis | draft tokens | tokens | tokens/s | tokens per forward | speed-up | same output |")
    print("|---|---|---|---|---|---|---|")
    for family, draft, count, rate, per_forward, speedup, same in rows:
        print(f"| {family} | {draft} | {count} | {rate:.1f} | {per_forward:.2f} | {speedup:.2f}x | {same} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["compare", "table"], choices=["compare", "table", "two_hop"])
    parser.add_argument("--draft", nargs="+", type=int, default=[0, 4, 8, 16], help="draft lengths; the first is "
                                                                                   "the baseline (use 0)")
    parser.add_argument("--max-tokens", type=int, default=2500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--model", type=Path, default=None, help="checkpoint (default: the embedded model)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
