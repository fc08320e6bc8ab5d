"""Multi-entity comparison: one sub-agent per entity finds the fact and its source, the orchestrator
compares them and answers with citations.

    python examples/compare_entities.py                  # held-out entities of the offline web, default model
    python examples/compare_entities.py --count 4 --seed 7
    python examples/compare_entities.py --base-url http://localhost:8000/v1 \\
        --model moonshotai/Kimi-Linear-48B-A3B-Instruct --search brave \\
        --kind city --attribute population --entities "Lyon, Porto, Gdansk"
"""

from __future__ import annotations

import argparse

from common import offline_task, parser, research, run_main

from kimi_swarm.offline_web.tasks import COMPARISONS, PLURALS, join_names


def comparison_prompt(kind: str, attribute: str, entities: list[str], smallest: bool) -> str:
    known = COMPARISONS.get((kind, attribute.capitalize()))  # type: ignore[call-overload]
    phrase = known[smallest] if known else f"has the {'smallest' if smallest else 'largest'} {attribute.lower()}"
    return f"Which of these {PLURALS.get(kind, kind + 's')} {phrase}: {join_names(entities)}?"


async def main(options: argparse.Namespace) -> None:
    if options.entities:
        entities = [name.strip() for name in options.entities.split(",") if name.strip()]
        await research(options, comparison_prompt(options.kind, options.attribute, entities, options.smallest))
        return
    task = offline_task(options, "compare", options.count,
                        live_web_needs="name what to compare with --entities (and --kind, --attribute)")
    await research(options, task.prompt, task.answer)


if __name__ == "__main__":
    options = parser(__doc__)
    options.add_argument("--entities", help="comma-separated names to compare (default: held-out offline entities)")
    options.add_argument("--kind", default="city", help="what the entities are: city, country, company, person, ...")
    options.add_argument("--attribute", default="population", help="the numeric fact to compare")
    options.add_argument("--smallest", action="store_true", help="ask for the smallest instead of the largest")
    options.add_argument("--count", type=int, default=3, help="how many offline entities to compare (2 or more)")
    run_main(main(options.parse_args()))
