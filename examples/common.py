"""What the example workflows share: the options that pick the model and the web, the swarm they build
from them, and how a result is printed.

The model and the web come from kimi_swarm.launch, exactly as `swarm run` builds them:
  (no option)                  the embedded default model on the offline web; nothing leaves the machine
  --model PATH                 a local Kimi Linear checkpoint (e.g. Kimi-Linear-48B-A3B-Instruct), live web
  --base-url URL --model NAME  an OpenAI-compatible server (vLLM, SGLang, Moonshot's API), live web
  --web offline|live           override where the web tools go; --search PROVIDER picks the live search engine
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from kimi_swarm import Limits, RunResult, Swarm
from kimi_swarm.backend import ReplyOptions
from kimi_swarm.launch import REPLY_TOKENS, LaunchError, WebMode, open_backend, open_web, resolve_web_mode
from kimi_swarm.offline_web import SiteManifest, ensure_site
from kimi_swarm.offline_web.tasks import Family, ResearchTask, sample_task
from kimi_swarm.tools import LIVE_SEARCH_PROVIDERS, rank

DEFAULT_LIMITS = Limits()


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the model, web and limit options of every example."""
    options = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = options.add_argument_group("model (default: the embedded default model)")
    model.add_argument("--model", metavar="NAME|PATH",
                       help="with --base-url: the served model name; alone: a Kimi Linear checkpoint directory")
    model.add_argument("--base-url", action="append", metavar="URL",
                       help="an OpenAI-compatible server, e.g. http://localhost:8000/v1 (repeatable)")
    model.add_argument("--api-key", metavar="KEY", help="bearer key for --base-url (default: $OPENAI_API_KEY)")
    web = options.add_argument_group("web (default: offline for the default model, live otherwise)")
    web.add_argument("--web", choices=[m.value for m in WebMode if m is not WebMode.none], default="auto")
    web.add_argument("--search", choices=LIVE_SEARCH_PROVIDERS,
                     help="search provider on the live web (keys from BRAVE_API_KEY, TAVILY_API_KEY, SEARXNG_URL)")
    limits = options.add_argument_group("limits")
    about = {name: field.description for name, field in Limits.model_fields.items()}
    limits.add_argument("--max-agents", type=int, default=DEFAULT_LIMITS.max_agents, help=about["max_agents"])
    limits.add_argument("--max-tool-calls", type=int, default=DEFAULT_LIMITS.max_tool_calls,
                        help=about["max_tool_calls"])
    limits.add_argument("--deadline", type=float, default=DEFAULT_LIMITS.deadline, help=about["deadline"])
    options.add_argument("--seed", type=int, default=0, help="which held-out offline-web entities to ask about")
    return options


def web_mode(options: argparse.Namespace) -> WebMode:
    return resolve_web_mode(WebMode(options.web), uses_default_model=not (options.model or options.base_url))


def offline_task(options: argparse.Namespace, family: Family, size: int | None = None, *,
                 live_web_needs: str) -> ResearchTask:
    """A task about held-out entities of the offline web (the default model never saw them in training),
    with its expected answer. On the live web there is none to pick: exit saying what to pass instead."""
    if web_mode(options) is not WebMode.offline:
        raise SystemExit(f"error: on the live web, {live_web_needs}")
    manifest: SiteManifest = ensure_site()[1]
    return sample_task(manifest, family, "heldout", random.Random(options.seed), size)


@contextlib.asynccontextmanager
async def research_swarm(options: argparse.Namespace) -> AsyncIterator[Swarm]:
    """A Swarm over the chosen model with web search, fetch and rank; closed (server, browser, model) on exit."""
    backend = open_backend(options.model, options.base_url or [], options.api_key)
    try:
        async with open_web(web_mode(options), options.search) as web:
            yield Swarm(backend, [web.search, web.fetch, rank], max_agents=options.max_agents,
                        max_tool_calls=options.max_tool_calls, deadline=options.deadline,
                        reply_options=ReplyOptions(max_tokens=REPLY_TOKENS))
    finally:
        await backend.aclose()


def run_main(main: Coroutine[Any, Any, None]) -> None:
    """Run an example's async main; a problem the user can fix ends it with its message and exit code 1."""
    try:
        asyncio.run(main)
    except LaunchError as error:
        sys.exit(f"error: {error}")


async def research(options: argparse.Namespace, prompt: str, expected: object = None) -> RunResult:
    """Print the task, run the swarm on it, print the result (and the offline web's answer, if known)."""
    print(f"Task: {prompt}\n")
    async with research_swarm(options) as swarm:
        result = await swarm.run(prompt)
    print_result(result)
    if expected is not None:
        print(f"Expected (the offline web's facts): {expected}")
    return result


def print_result(result: RunResult) -> None:
    """The answer, then each citation (URL and the text it rests on), then usage."""
    print(result.answer.rstrip())
    print("\nCitations:")
    for number, citation in enumerate(result.citations, start=1):
        evidence = " ".join(citation.evidence.split())
        print(f"  [{number}] {citation.url}\n      {evidence[:160]}")
    if not result.citations:
        print("  (none: the answer cites no URL that a tool returned)")
    usage = result.usage
    state = f"partial ({result.stop_reason})" if result.partial else "complete"
    print(f"\nUsage: {state}; {usage.agents} sub-agents in {usage.waves} wave(s), {usage.tool_calls} tool calls, "
          f"{usage.model_calls} model calls, {usage.prompt_tokens} prompt + {usage.completion_tokens} completion "
          f"tokens, {usage.critical_steps} critical steps, {usage.wall_seconds:.1f} s")
