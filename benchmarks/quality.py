"""Quality of the embedded default model on held-out tasks, through the full stack.

Each task is a real `Swarm` run: the in-process engine (EngineBackend) with the shipped checkpoint,
forked sub-agent sessions, and the real web tools over HTTP against the offline web served on
loopback. Tasks use only held-out entities (never in the training data). Reports, per family:
accuracy, citation correctness, tool calls, tokens, wall time and critical steps.

    python benchmarks/quality.py                      # 10 comparisons, 2 tables of 20 rows, 10 two-hop
    python benchmarks/quality.py --results benchmarks/RESULTS.md

Rows for what a newcomer types (issue 31), each its own row and its own seeded stream of tasks, so adding one
changes no other row's tasks: `--lookup N` single-fact look-ups, `--yes-no N` yes/no comparisons and `--unknown N`
questions about entities the web does not have (worded with the question grammar's train forms, held-out
entities), and `--phrasing N` tasks worded only with held-out question forms, which never appear in training data
(kimi_swarm.offline_web.phrasings), cycling through comparisons, yes/no, look-ups and two-hop questions:

    python benchmarks/quality.py --compare 0 --tables 0 --two-hop 0 --lookup 20 --yes-no 10 --unknown 20 --phrasing 20
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

from kimi_swarm.backend import QUANTIZATIONS
from kimi_swarm.backend.chat.conversation import ReplyOptions
from kimi_swarm.backend.chat.engine_backend import EngineBackend
from kimi_swarm.backend.model.default_model import default_model_path
from kimi_swarm.launch import offline_web_tools, trained_tools
from kimi_swarm.offline_web import OfflineWeb
from kimi_swarm.offline_web.phrasings import Phrasing
from kimi_swarm.offline_web.tasks import Family, ResearchTask, grade, sample_task
from kimi_swarm.orchestrator import Swarm

REPLY_TOKENS = 4096  # a byte-level model writes a 25-row table in about 2,800 tokens; --max-tokens changes it
PHRASING_FAMILIES: tuple[Family, ...] = ("compare", "yes_no", "lookup", "two_hop")
"""The families the held-out phrasing row cycles through (answers graded one by one, each with its page)."""
UNITS = {"table": "cells", "unknown": "answered not found"}


class TaskScore(BaseModel):
    family: str
    """The row: a family, or "phrasing" (held-out question forms)."""
    prompt: str
    form: str = "template"
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
    family: str
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
                   max_tokens: int = REPLY_TOKENS, row: str | None = None) -> TaskScore:
    swarm = Swarm(backend, tools, reply_options=ReplyOptions(max_tokens=max_tokens))
    started = time.perf_counter()
    result = await swarm.run(task.prompt)
    wall = time.perf_counter() - started
    score = grade(task, result.answer, base_url)
    usage = result.usage
    return TaskScore(family=row or task.family, prompt=task.prompt, form=task.form, correct=score.correct,
                     cited=score.cited, total=score.total, agents=usage.agents, tool_calls=usage.tool_calls,
                     prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                     critical_steps=usage.critical_steps, wall_seconds=wall, status=result.status,
                     answer=result.answer)


def summarize(family: str, scores: list[TaskScore]) -> FamilySummary:
    n = len(scores)
    total = sum(s.total for s in scores)
    return FamilySummary(
        family=family, tasks=n, accuracy=sum(s.correct for s in scores) / total,
        cited=sum(s.cited for s in scores) / total, tool_calls=sum(s.tool_calls for s in scores) / n,
        tokens=sum(s.prompt_tokens + s.completion_tokens for s in scores) / n,
        wall_seconds=sum(s.wall_seconds for s in scores) / n, max_wall_seconds=max(s.wall_seconds for s in scores),
        critical_steps=sum(s.critical_steps for s in scores) / n, agents=sum(s.agents for s in scores) / n)


def markdown(summaries: list[FamilySummary], model: str, device: str, seed: int, table_rows: int) -> str:
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
        label = "phrasing (held-out forms)" if s.family == "phrasing" else s.family
        lines.append(f"| {label} | {s.tasks} | {s.accuracy:.0%} of {UNITS.get(s.family, 'answers')} | {s.cited:.0%} "
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
    backend = EngineBackend.from_pretrained(model, device=args.device, dtype=args.dtype,
                                            quantization=args.quantization, **options)
    rng = random.Random(args.seed)
    plan = task_plan(args)
    scores: dict[str, list[TaskScore]] = {}
    with OfflineWeb.start(seed=0) as offline:
        web = offline_web_tools(offline)
        streams = {row: random.Random(f"{args.seed}/{row}") for row, *_ in plan if row not in FAMILIES_OF_OLD}
        try:
            await web.search("warm up the search index", 1)
            for row, family, size, phrasing in plan:
                task = sample_task(offline.manifest, family, "heldout", streams.get(row, rng), size, phrasing)
                score = await run_task(backend, trained_tools(web), task, offline.base_url, args.max_tokens, row)
                scores.setdefault(row, []).append(score)
                print(f"{row:8s} {score.correct}/{score.total} cited {score.cited} agents {score.agents} "
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


FAMILIES_OF_OLD = ("compare", "table", "two_hop")
"""Rows drawn from one stream seeded with --seed, in this order, as they always were (same seed, same tasks)."""


def task_plan(args: argparse.Namespace) -> list[tuple[str, Family, int | None, Phrasing]]:
    """(row, family, size, phrasing) of every task, in run order: the original rows first, then issue 31's."""
    plan: list[tuple[str, Family, int | None, Phrasing]] = (
        [("compare", "compare", None, "template")] * args.compare
        + [("table", "table", args.table_rows, "template")] * args.tables
        + [("two_hop", "two_hop", None, "template")] * args.two_hop
        + [("lookup", "lookup", None, "train")] * args.lookup
        + [("yes_no", "yes_no", None, "train")] * args.yes_no
        + [("unknown", "unknown", None, "train")] * args.unknown)
    plan += [("phrasing", PHRASING_FAMILIES[i % len(PHRASING_FAMILIES)], None, "heldout") for i in range(args.phrasing)]
    return plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", type=int, default=10, help="comparison tasks (2-4 entities each)")
    parser.add_argument("--tables", type=int, default=2, help="wide-table tasks")
    parser.add_argument("--table-rows", type=int, default=20)
    parser.add_argument("--two-hop", type=int, default=10)
    parser.add_argument("--lookup", type=int, default=0, help="single-fact look-ups (train question forms)")
    parser.add_argument("--yes-no", type=int, default=0, help="yes/no comparisons of two entities (train forms)")
    parser.add_argument("--unknown", type=int, default=0,
                        help="questions about an entity the web does not have: right when answered not found")
    parser.add_argument("--phrasing", type=int, default=0,
                        help="tasks in held-out question forms (never in training data), cycling through "
                             + ", ".join(PHRASING_FAMILIES))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=REPLY_TOKENS, help="completion tokens per model turn")
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the embedded model)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 on a GPU, float32 on the CPU")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default=None,
                        help="FP8 weights, quantised while loading (compare against the same run without)")
    parser.add_argument("--speculative-tokens", type=int, default=None,
                        help="prompt-lookup draft length (0: off; default: the engine's, on for CPU)")
    parser.add_argument("--json", default=None, help="write every task's score and answer here")
    parser.add_argument("--results", default=None, help="update the ## Quality section of this RESULTS.md")
    parser.add_argument("--verbose", action="store_true", help="print every answer")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
