"""Training trajectories: the teacher plays every agent of real Swarm runs over the offline web.

Each run's conversations become token-level training examples: the chat-format text of the whole
conversation, split into segments flagged as model output (the conversation's own assistant turns)
or context (everything else, including a sub-agent's inherited orchestrator turns). Runs use
train-split entities only, and any trajectory that mentions a held-out entity of the evaluated web
(seed 0) is dropped.

Runs can be spread over several seeded webs: each has other entity names, so a model trained on them
must copy names from its context instead of recalling the few thousand names of one web. `--split
heldout` writes the evaluated web's held-out tasks instead: a validation set, never for training.
`--misnamed-rate` gives that share of train tables a plan that misspells one or two names, as the small model's
plans do; only those sub-agents are written: they search (half of them also fetch the page the name would have,
which fails) and report that no page is about the name.

`--phrasing train` words each task with the question grammar's train forms (kimi_swarm.offline_web.phrasings:
synonyms, word orders, imperatives, lower case, requests for sources) instead of the original templates, all but a
`--template-rate` share; held-out forms are never written. The newcomer families (`lookup`, `yes_no`, `unknown`)
are chosen with `--families` like the others.

    python training/trajectories.py --out trajectories.jsonl.xz --tasks 3000 --web-seeds 0 1 2 3
    python training/trajectories.py --out new.jsonl.xz --tasks 1200 --families lookup yes_no unknown compare \
        --phrasing train --template-rate 0.2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import lzma
import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from teacher import Teacher, TeacherBackend, TeacherConversation

from kimi_swarm import prompts
from kimi_swarm.backend.chat.chat_format import render
from kimi_swarm.backend.chat.messages import Message, ToolSpec
from kimi_swarm.function_tools import as_tool
from kimi_swarm.launch import offline_web_tools, trained_tools
from kimi_swarm.offline_web.phrasings import Phrasing
from kimi_swarm.offline_web.server import OfflineWeb, ensure_site
from kimi_swarm.offline_web.site import SiteManifest
from kimi_swarm.offline_web.tasks import ALL_FAMILIES, FAMILIES, Family, ResearchTask, misnamed, sample_task
from kimi_swarm.offline_web.world import Split
from kimi_swarm.orchestrator import Swarm
from kimi_swarm.tools import Web, rank

Segment = tuple[str, bool]


class Trajectory(BaseModel):
    family: Family
    role: str
    segments: list[Segment]

    @property
    def text(self) -> str:
        return "".join(text for text, _ in self.segments)


def conversation_segments(messages: list[Message], tools: list[ToolSpec], own_from: int) -> list[Segment]:
    """The rendered conversation as (text, is_target) pieces; targets are assistant turns at index >= own_from.

    A target is the assistant's body plus <|im_end|>, exactly what the engine generates after the
    generation prompt; the concatenated pieces equal `render(messages, tools)`.
    """
    full = render(messages, tools, add_generation_prompt=False)
    segments: list[Segment] = []
    done = 0
    for index, message in enumerate(messages):
        if message.role != "assistant" or index < own_from:
            continue
        start = len(render(messages[:index], tools, add_generation_prompt=True))
        end = len(render(messages[: index + 1], tools, add_generation_prompt=False))
        segments += [(full[done:start], False), (full[start:end], True)]
        done = end
    segments.append((full[done:], False))
    pieces = [(text, target) for text, target in segments if text]
    if "".join(text for text, _ in pieces) != full:
        raise AssertionError("segments do not add up to the rendered conversation")
    return pieces


def declared_tools(web: Web, rng: random.Random) -> list[Any]:
    """The tools one shard of training runs declares: mostly trained_tools, a fifth of the time without browse,
    so the model meets both tool lists."""
    return [web.search, web.fetch, rank] if rng.random() < 0.2 else trained_tools(web)


async def record_run(task: ResearchTask, manifest: SiteManifest, base_url: str, tools: list) -> TeacherBackend:
    """One real Swarm run with the teacher as the model; the backend holds every conversation."""
    backend = TeacherBackend(Teacher(task, manifest, base_url))
    await Swarm(backend, tools).run(task.prompt)
    return backend


def run_trajectories(task: ResearchTask, backend: TeacherBackend, rng: random.Random,
                     subagents_per_wave: int) -> list[Trajectory]:
    """The orchestrator's trajectory and a sample of each wave's sub-agent trajectories; of a misnamed run
    (tasks.misnamed), only sub-agents whose entity has no page: its orchestrator's plan is wrong on purpose."""
    orchestrator, *children = backend.conversations
    missing = [lk.task for wave in task.waves for lk in wave if lk.url_path is None]
    out: list[Trajectory] = []
    if missing and task.family != "unknown":  # an unknown entity's plan is right: its run is a whole example
        children = [c for c in children if any(t in c.messages[c.fork_point].content for t in missing)]
    else:
        out.append(Trajectory(family=task.family, role="orchestrator",
                              segments=conversation_segments(orchestrator.messages, orchestrator.tools, 0)))
    by_wave: dict[int, list[TeacherConversation]] = {}
    for child in children:
        by_wave.setdefault(child.fork_point, []).append(child)
    for wave in by_wave.values():
        for child in rng.sample(wave, min(subagents_per_wave, len(wave))):
            out.append(Trajectory(family=task.family, role="subagent",
                                  segments=conversation_segments(child.messages, child.tools, child.fork_point)))
    return out


def plan_trajectory(task: ResearchTask, manifest: SiteManifest, specs: list[ToolSpec]) -> Trajectory:
    """The orchestrator's trajectory up to and including its plan (the first spawn_agents turn), rendered as a
    run renders it. No web or sub-agent is needed, so plans are cheap to make in bulk: long lists of names to
    copy exactly are the lesson (a misspelt name in a table's plan loses that row)."""
    messages = prompts.orchestrator_messages(task.prompt)
    messages.append(Teacher(task, manifest, base_url="http://plan.invalid").next_turn(messages).as_message())
    return Trajectory(family=task.family, role="orchestrator", segments=conversation_segments(messages, specs, 0))


EVALUATED_WEB_SEED = 0  # benchmarks/quality.py scores held-out tasks of this web


def heldout_pattern(*manifests: SiteManifest) -> re.Pattern[str]:
    """Any held-out entity name of these webs, as a whole word."""
    names = sorted({e.name for m in manifests for e in m.entities if e.split == "heldout"}, key=len, reverse=True)
    return re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")\b")


def task_stream(manifest: SiteManifest, rng: random.Random, count: int, split: Split = "train",
                families: tuple[Family, ...] = FAMILIES, phrasing: Phrasing = "template",
                template_rate: float = 0.0) -> Iterator[ResearchTask]:
    """Tasks of one split, cycling through `families`; tables lean large (wide tables are the hard case),
    comparisons use 2-5 entities. A `phrasing` other than "template" words all but a `template_rate` share of them
    with that split of the question grammar."""
    for index in range(count):
        family = families[index % len(families)]
        size = {"compare": rng.randint(2, 5), "table": rng.choice([rng.randint(3, 12), rng.randint(12, 25)]),
                }.get(family)
        worded = phrasing if phrasing == "template" or rng.random() >= template_rate else "template"
        yield sample_task(manifest, family, split, rng, size, worded)


async def generate(out: Path, tasks: int, shards: int, seed: int, subagents_per_wave: int,
                   cache_dir: Path | None = None, web_seeds: tuple[int, ...] = (EVALUATED_WEB_SEED,),
                   split: Split = "train", families: tuple[Family, ...] = FAMILIES,
                   misnamed_rate: float = 0.0, phrasing: Phrasing = "template", template_rate: float = 0.0) -> Counter:
    """Write trajectories for `tasks` tasks, served on `shards` successive servers (each a new port).

    Shard i serves web_seeds[i % len(web_seeds)]. Held-out tasks come from the evaluated web alone. A train
    table task becomes misnamed (1-2 of its names misspelled in the plan) with probability misnamed_rate.
    """
    if phrasing == "heldout" and split != "heldout":
        raise ValueError("held-out question forms are for validation (--split heldout), never for training data")
    if split == "heldout" and set(web_seeds) != {EVALUATED_WEB_SEED}:
        raise ValueError(f"held-out (validation) trajectories come from the evaluated web, seed {EVALUATED_WEB_SEED}, "
                         f"not from web seeds {list(web_seeds)}")
    rng = random.Random(seed)
    stats: Counter = Counter()
    per_shard = -(-tasks // shards)
    _, evaluated = ensure_site(EVALUATED_WEB_SEED, cache_dir)
    with lzma.open(out, "wt", encoding="utf-8", preset=6) as sink:
        for shard in range(shards):
            with OfflineWeb.start(seed=web_seeds[shard % len(web_seeds)], cache_dir=cache_dir) as offline:
                heldout = None if split == "heldout" else heldout_pattern(evaluated, offline.manifest)
                web = offline_web_tools(offline, index_dir=(cache_dir / "search-index") if cache_dir else None)
                declared = declared_tools(web, rng)
                try:
                    for task in task_stream(offline.manifest, rng, min(per_shard, tasks - shard * per_shard), split,
                                            families, phrasing, template_rate):
                        if split == "train" and task.family == "table" and rng.random() < misnamed_rate:
                            task = misnamed(task, offline.manifest, rng, rng.randint(1, 2))
                            stats["misnamed_runs"] += 1
                        backend = await record_run(task, offline.manifest, offline.base_url, declared)
                        if backend.errors:
                            stats["failed_runs"] += 1
                            continue
                        for trajectory in run_trajectories(task, backend, rng, subagents_per_wave):
                            if heldout and heldout.search(trajectory.text):
                                stats["dropped_heldout"] += 1
                                continue
                            sink.write(json.dumps(trajectory.model_dump()) + "\n")
                            stats[f"{trajectory.family}/{trajectory.role}"] += 1
                            stats["phrased" if task.form != "template" else "templated"] += 1
                            stats["chars"] += len(trajectory.text)
                finally:
                    await web.aclose()
            print(f"shard {shard + 1}/{shards} done: {dict(stats)}", flush=True)
    return stats


async def generate_plans(out: Path, tasks: int, seed: int, cache_dir: Path | None, web_seeds: tuple[int, ...],
                         families: tuple[Family, ...], phrasing: Phrasing = "template",
                         template_rate: float = 0.0) -> Counter:
    """Write plan-only trajectories (plan_trajectory) of `tasks` train tasks spread evenly over `web_seeds`."""
    rng = random.Random(seed)
    stats: Counter = Counter()
    _, evaluated = ensure_site(EVALUATED_WEB_SEED, cache_dir)
    async with Web() as web:
        with lzma.open(out, "wt", encoding="utf-8", preset=6) as sink:
            for index, web_seed in enumerate(web_seeds):
                _, manifest = ensure_site(web_seed, cache_dir)
                heldout = heldout_pattern(evaluated, manifest)
                specs = [prompts.SPAWN_TOOL] + [as_tool(t).spec for t in declared_tools(web, rng)]
                count = tasks * (index + 1) // len(web_seeds) - tasks * index // len(web_seeds)
                for task in task_stream(manifest, rng, count, "train", families, phrasing, template_rate):
                    trajectory = plan_trajectory(task, manifest, specs)
                    if heldout.search(trajectory.text):
                        stats["dropped_heldout"] += 1
                        continue
                    sink.write(json.dumps(trajectory.model_dump()) + "\n")
                    stats[f"{task.family}/plan"] += 1
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--shards", type=int, default=8, help="servers (ports) the tasks are spread over")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subagents-per-wave", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--web-seeds", type=int, nargs="+", default=[EVALUATED_WEB_SEED],
                        help="seeded webs the shards cycle through (other seeds: other entity names)")
    parser.add_argument("--split", choices=["train", "heldout"], default="train",
                        help="heldout: validation trajectories of the evaluated web's held-out entities")
    parser.add_argument("--families", nargs="+", choices=ALL_FAMILIES, default=list(FAMILIES),
                        help="task families the tasks cycle through (name one twice to weight it)")
    parser.add_argument("--misnamed-rate", type=float, default=0.1,
                        help="share of train table tasks whose plan misspells 1-2 names: sub-agent examples that "
                             "report a missing page (their orchestrators are not written)")
    parser.add_argument("--phrasing", choices=["template", "train", "heldout"], default="template",
                        help="train: word tasks with the question grammar's train forms; heldout: its held-out forms "
                             "(only with --split heldout: validation)")
    parser.add_argument("--template-rate", type=float, default=0.2,
                        help="with --phrasing train: share of tasks still worded with the original templates")
    parser.add_argument("--plans-only", action="store_true",
                        help="write only each task's plan turn (plan_trajectory), spread over --web-seeds; no runs")
    args = parser.parse_args()
    started = time.time()
    if args.phrasing == "heldout" and (args.split != "heldout" or args.plans_only):
        parser.error("--phrasing heldout writes validation data: it needs --split heldout (and no --plans-only)")
    if args.plans_only:
        stats = asyncio.run(generate_plans(args.out, args.tasks, args.seed, args.cache_dir, tuple(args.web_seeds),
                                           tuple(args.families), args.phrasing, args.template_rate))
        print(f"wrote {args.out} in {time.time() - started:.0f}s: {dict(stats)}")
        return
    stats = asyncio.run(generate(args.out, args.tasks, args.shards, args.seed, args.subagents_per_wave, args.cache_dir,
                                 tuple(args.web_seeds), args.split, tuple(args.families), args.misnamed_rate,
                                 args.phrasing, args.template_rate))
    print(f"wrote {args.out} in {time.time() - started:.0f}s: {dict(stats)}")


if __name__ == "__main__":
    main()
