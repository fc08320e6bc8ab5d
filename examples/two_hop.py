"""Two-hop research: a first wave finds the entity the question hinges on (a founder, a headquarters,
a capital), a second wave looks up the asked fact about it, and the answer cites both pages.

    python examples/two_hop.py                           # a held-out two-hop question on the offline web
    python examples/two_hop.py --seed 5
    python examples/two_hop.py --base-url http://localhost:8000/v1 \\
        --model moonshotai/Kimi-Linear-48B-A3B-Instruct --search brave \\
        --question "In which year was the founder of Patagonia born?"
"""

from __future__ import annotations

import argparse

from common import offline_task, parser, research, run_main


async def main(options: argparse.Namespace) -> None:
    if options.question:
        await research(options, options.question)
        return
    task = offline_task(options, "two_hop", live_web_needs="ask a question with --question")
    await research(options, task.prompt, task.answer)


if __name__ == "__main__":
    options = parser(__doc__)
    options.add_argument("--question", help="a two-hop question (default: a held-out offline-web question)")
    run_main(main(options.parse_args()))
