"""Wide table filling: one sub-agent per row looks its cell up and answers with its row, the swarm lays the rows
out as one cited Markdown table (spawn_agents with columns), and this script writes it to CSV (one row per
entity asked for, with its source URL).

    python examples/table_to_csv.py --out table.csv      # 20 held-out entities of the offline web
    python examples/table_to_csv.py --rows 30 --seed 3 --out wide.csv
    python examples/table_to_csv.py --base-url http://localhost:8000/v1 \\
        --model moonshotai/Kimi-Linear-48B-A3B-Instruct --search brave \\
        --kind country --attribute capital --entities "Peru, Kenya, Norway, Japan" --out capitals.csv
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from common import offline_task, parser, research, run_main

from kimi_swarm.offline_web.tasks import PLURALS, TABLE_TEMPLATES, join_names, table_rows


def table_prompt(kind: str, attribute: str, entities: list[str]) -> str:
    return TABLE_TEMPLATES[0].format(attribute=attribute.lower(), plural=PLURALS.get(kind, kind + "s"),
                                     names=join_names(entities))


def write_csv(path: Path, header: list[str], entities: list[str], rows: dict[str, tuple[str, str]]) -> list[str]:
    """One line per entity asked for, in that order (empty cells where the answer has no row); the missing."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for name in entities:
            value, source = rows.get(name, ("", ""))
            writer.writerow([name, value, source])
    return [name for name in entities if name not in rows]


async def main(options: argparse.Namespace) -> None:
    expected: dict[str, str] = {}
    if options.entities:
        entities = [name.strip() for name in options.entities.split(",") if name.strip()]
        kind, attribute = options.kind, options.attribute
        prompt = table_prompt(kind, attribute, entities)
    else:
        task = offline_task(options, "table", options.rows,
                            live_web_needs="name the rows with --entities (and --kind, --attribute)")
        entities = [lookup.entity for lookup in task.waves[0]]
        expected = {lookup.entity: lookup.value for lookup in task.waves[0]}
        kind, attribute, prompt = task.kind, task.attribute, task.prompt
    result = await research(options, prompt)
    rows = table_rows(result.answer, attribute)
    missing = write_csv(options.out, [kind.capitalize(), attribute.capitalize(), "Source"], entities, rows)
    print(f"\nWrote {options.out}: {len(entities) - len(missing)} of {len(entities)} rows filled"
          + (f"; no row for {', '.join(missing)}" if missing else ""))
    if expected:
        matching = sum(rows.get(name, ("",))[0] == value for name, value in expected.items())
        print(f"Cells matching the offline web's facts: {matching}/{len(expected)}")


if __name__ == "__main__":
    options = parser(__doc__)
    options.add_argument("--out", type=Path, default=Path("table.csv"), help="the CSV file to write")
    options.add_argument("--entities", help="comma-separated row names (default: held-out offline entities)")
    options.add_argument("--kind", default="country", help="what the rows are: country, city, company, person, ...")
    options.add_argument("--attribute", default="population", help="the column to fill")
    options.add_argument("--rows", type=int, default=20, help="how many offline entities to tabulate")
    run_main(main(options.parse_args()))
