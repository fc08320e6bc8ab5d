"""Quality of the embedded default model on held-out tasks, through the full stack.

Each task is a real `Swarm` run: the in-process engine (EngineBackend) with the shipped checkpoint,
forked sub-agent sessions, and the real web tools over HTTP against the offline web served on
loopback. Tasks use only held-out entities (never in the training data). Reports, per family:
accuracy, citation correctness, tool calls, tokens, wall time and critical steps.

    python benchmarks/quality.py                      # 10 comparisons, 2 tables of 20 rows, 10 two-hop
    python benchmarks/quality.py --results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import re
import subprocess
import time
from pathlib import Path

from pydantic import BaseModel

from kimi_swarm.backend.chat.conversation import ReplyOptions
from kimi_swarm.backend.chat.engine_backend import EngineBackend
from kimi_swarm.backend.model.default_model import default_model_path
from kimi_swarm.launch import offline_web_tools, trained_tools
from kimi_swarm.offline_web import OfflineWeb
from kimi_swarm.offline_web.tasks import Family, ResearchTask, grade, sample_task
from kimi_swarm.orchestrator import Swarm

REPLY_TOKENS = 4096  # a byte-level model writes a 25-row table in about 2,800 tokens; --max-tokens changes it


class TaskScore(BaseModel):
    family: Family
    prompt: str
    correct: int
    cited: int
    total: int
    agents: int
    tool_calls: int
    prompt_tokens: int
    completion_tokens: int
    critical_steps: int
    wall_seconds: float
    status: str
    answer: str


class FamilySummary(BaseModel):
    family: Family
    tasks: int
    accuracy: float
    cited: float
    tool_calls: float
    tokens: float
    wall_seconds: float
    max_wall_seconds: float
    critical_steps: float
    agents: float


async def run_task(backend: EngineBackend, tools: list, task: ResearchTask, base_url: str,
                   max_tokens: int = REPLY_TOKENS) -> TaskScore:
    swarm = Swarm(backend, tools, reply_options=ReplyOptions(max_tokens=max_tokens))
    started = time.perf_counter()
    result = await swarm.run(task.prompt)
    wall = time.perf_counter() - started
    score = grade(task, result.answer, base_url)
    usage = result.usage
    return TaskScore(family=task.family, prompt=task.prompt, correct=score.correct, cited=score.cited,
                     total=score.total, agents=usage.agents, tool_calls=usage.tool_calls,
                     prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                     critical_steps=usage.critical_steps, wall_seconds=wall, status=result.status,
                     answer=result.answer)


def summarize(family: Family, scores: list[TaskScore]) -> FamilySummary:
    n = len(scores)
    total = sum(s.total for s in scores)
    return FamilySummary(
        family=family, tasks=n, accuracy=sum(s.correct for s in scores) / total,
        cited=sum(s.cited for s in scores) / total, tool_calls=sum(s.tool_calls for s in scores) / n,
        tokens=sum(s.prompt_tokens + s.completion_tokens for s in scores) / n,
        wall_seconds=sum(s.wall_seconds for s in scores) / n, max_wall_seconds=max(s.wall_seconds for s in scores),
        critical_steps=sum(s.critical_steps for s in scores) / n, agents=sum(s.agents for s in scores) / n)


def markdown(summaries: list[FamilySummary], model: str, device: str, seed: int, table_rows: int) -> str:
    unit = {"compare": "answers", "table": "cells", "two_hop": "answers"}
    lines = [
        "## Quality",
        "",
        f"Embedded default model (`{model}`) on held-out entities of the offline web, full stack: Swarm + "
        f"in-process engine on {device} + real HTTP tools (`python benchmarks/quality.py --seed {seed}`; "
        f"tables have {table_rows} rows, one sub-agent per row). Machine: {platform.machine()}, "
        f"{_cpu_count()} CPU cores. Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        f"Commit: {_commit()}.",
        "",
        "| family | tasks | correct | with correct source URL | tool calls / task | tokens / task "
        "| wall s / task (max) | critical steps | sub-agents / task |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        lines.append(f"| {s.family} | {s.tasks} | {s.accuracy:.0%} of {unit[s.family]} | {s.cited:.0%} "
                     f"| {s.tool_calls:.1f} | {s.tokens:,.0f} | {s.wall_seconds:.1f} ({s.max_wall_seconds:.1f}) "
                     f"| {s.critical_steps:.1f} | {s.agents:.1f} |")
    return "\n".join(lines) + "\n"


def _commit() -> str:
    """The checkout's short commit, marked when the tree has uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True).stdout
    commit = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    return commit + (" (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else "")


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def write_section(results: Path, section: str) -> None:
    """Replace (or append) the `## Quality` section of RESULTS.md, leaving other sections alone."""
    text = results.read_text() if results.exists() else "# Results\n"
    pattern = re.compile(r"^## Quality\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    results.write_text(text)


async def main_async(args: argparse.Namespace) -> list[FamilySummary]:
    model = Path(args.model) if args.model else default_model_path()
    options = {} if args.speculative_tokens is None else {"speculative_tokens": args.speculative_tokens}
    backend = EngineBackend.from_pretrained(model, device=args.device, **options)
    rng = random.Random(args.seed)
    plan: list[tuple[Family, int | None]] = (
        [("compare", None)] * args.compare + [("table", args.table_rows)] * args.tables
        + [("two_hop", None)] * args.two_hop)
    scores: dict[Family, list[TaskScore]] = {}
    with OfflineWeb.start(seed=0) as offline:
        web = offline_web_tools(offline)
        try:
            await web.search("warm up the search index", 1)
            for family, size in plan:
                task = sample_task(offline.manifest, family, "heldout", rng, size)
                score = await run_task(backend, trained_tools(web), task, offline.base_url, args.max_tokens)
                scores.setdefault(family, []).append(score)
                print(f"{family:8s} {score.correct}/{score.total} cited {score.cited} agents {score.agents} "
                      f"tools {score.tool_calls} {score.wall_seconds:.1f}s [{score.status}] {task.prompt[:70]}",
                      flush=True)
                if args.verbose:
                    print(score.answer, "\n", flush=True)
        finally:
            await web.aclose()
            await backend.aclose()
    summaries = [summarize(family, family_scores) for family, family_scores in scores.items()]
    if args.json:
        Path(args.json).write_text(json.dumps({f: [s.model_dump() for s in v] for f, v in scores.items()}, indent=2))
    section = markdown(summaries, model.name if args.model else "backend/checkpoints", str(backend.engine.model.device),
                       args.seed, args.table_rows)
    print(section)
    if args.results:
        write_section(Path(args.results), section)
    return summaries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", type=int, default=10, help="comparison tasks (2-4 entities each)")
    parser.add_argument("--tables", type=int, default=2, help="wide-table tasks")
    parser.add_argument("--table-rows", type=int, default=20)
    parser.add_argument("--two-hop", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=REPLY_TOKENS, help="completion tokens per model turn")
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the embedded model)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--speculative-tokens", type=int, default=None,
                        help="prompt-lookup draft length (0: off; default: the engine's, on for CPU)")
    parser.add_argument("--json", default=None, help="write every task's score and answer here")
    parser.add_argument("--results", default=None, help="update the ## Quality section of this RESULTS.md")
    parser.add_argument("--verbose", action="store_true", help="print every answer")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
