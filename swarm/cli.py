"""`swarm run TASK`: a research swarm from the command line; `swarm serve-web`: the offline web.

Model, in order of precedence: `--replay FILE` (a recorded run), `--base-url URL --model NAME` (an
OpenAI-compatible server), `--model PATH` (a local Kimi Linear checkpoint on the in-process
engine), or nothing: the embedded default model, with the offline web as its web.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from backend.conversation import ChatBackend, ReplyOptions
from swarm.display import LivePanel, LogLines
from swarm.orchestrator import Swarm
from swarm.report import markdown_report
from swarm.result import RunResult
from swarm.tape import ToolTape, tool_tape_path
from swarm.tool import Tool

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = (
    "Exit codes: 0 the run finished within every limit; 1 error (bad option, model or server failure); "
    "2 usage error; 3 partial result (a budget, cap, deadline or failed agent cut part of the run short); "
    "130 interrupted by Ctrl-C (the partial result is still printed and saved)."
)

WEB_TOOLS = ("search", "fetch", "browse")

app = typer.Typer(
    help="Agent swarms on one shared long context: an orchestrator fans a task out to up to 100 sub-agents.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)


class WebMode(str, Enum):
    auto = "auto"
    offline = "offline"
    live = "live"
    none = "none"


class CliError(Exception):
    """A problem the user can fix; printed without a traceback, exit code 1."""


@app.command(epilog=EXIT_CODES_HELP)
def run(
    task: Annotated[str, typer.Argument(help="The research task; '-' reads it from stdin.")],
    model: Annotated[str | None, typer.Option(
        help="With --base-url: the served model name. Alone: a local Kimi Linear checkpoint directory. "
             "Neither: the embedded default model.")] = None,
    base_url: Annotated[list[str] | None, typer.Option(
        "--base-url", help="OpenAI-compatible server, e.g. http://localhost:8000/v1. Repeat to spread runs.")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="OPENAI_API_KEY", help="Bearer key for --base-url.")] = None,
    stream: Annotated[bool, typer.Option(help="Stream replies from --base-url (server-sent events).")] = False,
    max_agents: Annotated[int, typer.Option(min=1, help="Sub-agents over the whole run.")] = 100,
    max_tool_calls: Annotated[int, typer.Option(min=0, help="Executed tool calls of all agents.")] = 1500,
    max_agent_steps: Annotated[int, typer.Option(min=1, help="Model turns per sub-agent.")] = 100,
    max_orchestrator_steps: Annotated[int, typer.Option(min=1, help="Model turns of the orchestrator.")] = 15,
    concurrency: Annotated[int, typer.Option(min=1, help="Sub-agents running at once.")] = 100,
    deadline: Annotated[float | None, typer.Option(min=0.001, help="Wall-clock seconds for the whole run.")] = None,
    token_budget: Annotated[int | None, typer.Option(min=1, help="Prompt + completion tokens of the run.")] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="Completion tokens per model turn.")] = 1024,
    temperature: Annotated[float, typer.Option(min=0.0, help="Sampling temperature.")] = 0.0,
    tools: Annotated[str, typer.Option(
        help=f"Comma-separated web tools to give the sub-agents, from: {', '.join(WEB_TOOLS)}.")] = "search,fetch,browse",
    web: Annotated[WebMode, typer.Option(
        help="Where the web tools go: 'offline' (the generated offline web on loopback), 'live' (the internet), "
             "'none' (no web tools), 'auto' (offline for the embedded default model, live otherwise).")
    ] = WebMode.auto,
    tools_from: Annotated[list[str] | None, typer.Option(
        "--tools-from", help="Extra tools, 'module:attribute' naming a tool, a typed callable, or a list of them. "
                             "Repeatable.")] = None,
    context: Annotated[list[Path] | None, typer.Option(
        "--context", exists=True, dir_okay=False, help="A shared context document for the orchestrator. "
                                                       "Repeatable.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write a Markdown report (answer, sources, agents, usage).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the RunResult as JSON on stdout.")] = False,
    trace: Annotated[Path | None, typer.Option(help="Write every event of the run as JSONL.")] = None,
    record: Annotated[Path | None, typer.Option(
        help="Record every model exchange to this JSONL tape, and every tool outcome to TAPE.tools.jsonl.")] = None,
    replay: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, help="Replay a recorded tape instead of calling a model; with its "
                                          ".tools.jsonl beside it, tools are replayed too (no web needed).")] = None,
) -> None:
    """Run a research swarm on TASK and print its answer with sources."""
    console = Console(stderr=True)
    if task == "-":
        task = sys.stdin.read().strip()
    if not task.strip():
        raise typer.BadParameter("the task is empty", param_hint="TASK")
    selected = [name.strip() for name in tools.split(",") if name.strip()]
    unknown = [name for name in selected if name not in WEB_TOOLS]
    if unknown:
        raise typer.BadParameter(f"unknown tool(s) {', '.join(unknown)}; choose from {', '.join(WEB_TOOLS)}",
                                 param_hint="--tools")
    if base_url and not model and not replay:
        raise typer.BadParameter("--base-url needs --model NAME (the model name the server serves)",
                                 param_hint="--model")
    settings = dict(
        max_agents=max_agents, max_tool_calls=max_tool_calls, max_agent_steps=max_agent_steps,
        max_orchestrator_steps=max_orchestrator_steps, max_concurrency=concurrency, deadline=deadline,
        token_budget=token_budget, reply_options=ReplyOptions(max_tokens=max_tokens, temperature=temperature),
        trace_path=trace,
    )
    documents = [path.read_text(encoding="utf-8") for path in context or []]
    web_mode = web if web is not WebMode.auto else (
        WebMode.offline if not (base_url or model or replay) else WebMode.live)
    try:
        result, interrupted = asyncio.run(_run(
            task, documents, console, settings, model=model, base_urls=base_url or [], api_key=api_key,
            stream=stream, web_mode=web_mode, web_tools=selected, tools_from=tools_from or [], record=record,
            replay=replay, live=console.is_terminal and not json_output,
        ))
    except CliError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(EXIT_ERROR) from None
    _print_result(result, console, json_output, out, max_tool_calls)
    if interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    if result.status == "failed":
        raise typer.Exit(EXIT_ERROR)
    raise typer.Exit(EXIT_PARTIAL if result.partial else EXIT_OK)


@app.command("serve-web")
def serve_web(
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port on 127.0.0.1 (0 picks a free one).")] = 8000,
    seed: Annotated[int, typer.Option(help="Which generated offline web to serve.")] = 0,
) -> None:
    """Serve the generated offline web (pages and search corpus) on loopback until Ctrl-C."""
    offline_web = _import_or_fail("swarm.offline_web", "the offline web")
    offline_web.serve_forever(port=port, seed=seed)


async def _run(task: str, documents: list[str], console: Console, settings: dict[str, Any], *, model: str | None,
               base_urls: list[str], api_key: str | None, stream: bool, web_mode: WebMode, web_tools: list[str],
               tools_from: list[str], record: Path | None, replay: Path | None,
               live: bool) -> tuple[RunResult, bool]:
    async with contextlib.AsyncExitStack() as stack:
        run_tools: list[Tool | Callable[..., Any]] = [t for spec in tools_from for t in _load_tools(spec)]
        backend = _backend(model, base_urls, api_key, stream, replay)
        stack.push_async_callback(backend.aclose)
        if web_mode is not WebMode.none and web_tools:
            web = await stack.enter_async_context(_web(web_mode))
            run_tools = [getattr(web, name) for name in web_tools] + run_tools
        tool_tape = None
        if record:
            from backend.replay import RecordingBackend

            backend = RecordingBackend(backend, record)
            tool_tape = ToolTape.record(tool_tape_path(record))
        elif replay and tool_tape_path(replay).is_file():
            tool_tape = ToolTape.replay(tool_tape_path(replay))
        if tool_tape is not None:
            stack.callback(tool_tape.close)
        swarm = Swarm(backend, run_tools, tool_tape=tool_tape, **settings)
        display = LivePanel(console, swarm.limits, task) if live else LogLines(console, swarm.limits)
        swarm.add_listener(display)
        interrupts = _InterruptHandler(swarm)
        with display, interrupts:
            result = await swarm.run(task, documents)
        return result, interrupts.interrupted


class _InterruptHandler:
    """First Ctrl-C cancels the run (every agent stops, the partial result is kept); a second one exits."""

    def __init__(self, swarm: Swarm) -> None:
        self.swarm = swarm
        self.interrupted = False
        self._installed = False

    def _on_sigint(self) -> None:
        if self.interrupted:
            os._exit(EXIT_INTERRUPTED)
        self.interrupted = True
        self.swarm.cancel()

    def __enter__(self) -> _InterruptHandler:
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGINT, self._on_sigint)
            self._installed = True
        except (NotImplementedError, RuntimeError, ValueError):
            self._installed = False
        return self

    def __exit__(self, *_: object) -> None:
        if self._installed:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)


def _backend(model: str | None, base_urls: list[str], api_key: str | None, stream: bool,
             replay: Path | None) -> ChatBackend:
    if replay:
        from backend.replay import ReplayBackend

        return ReplayBackend(replay)
    if base_urls:
        from backend.openai_backend import OpenAIBackend

        try:
            return OpenAIBackend(base_urls, model or "", api_key, stream=stream)
        except ValueError as error:
            raise CliError(str(error)) from None
    if model:
        checkpoint = Path(model)
        if not checkpoint.is_dir():
            raise CliError(f"--model {model!r} is not a checkpoint directory; to use a served model name, "
                           "also pass --base-url")
        return _engine_backend(checkpoint)
    default_model = _import_or_fail("backend.default_model", "the embedded default model")
    try:
        return _engine_backend(default_model.default_model_path())
    except FileNotFoundError as error:
        raise CliError(str(error)) from None


def _engine_backend(path: Path) -> ChatBackend:
    engine_backend = _import_or_fail("backend.engine_backend", "the in-process engine")
    try:
        return engine_backend.EngineBackend.from_pretrained(path)
    except (OSError, ValueError, KeyError) as error:
        raise CliError(f"cannot load the checkpoint at {path}: {error}") from None


@contextlib.asynccontextmanager
async def _web(mode: WebMode) -> AsyncIterator[Any]:
    """The web tools' `Web`: over the offline web (served for the run's length) or the live internet."""
    web_tools = _import_or_fail("tools", "the web tools")
    if mode is WebMode.live:
        async with web_tools.Web() as web:
            yield web
        return
    offline_web = _import_or_fail("swarm.offline_web", "the offline web")
    with offline_web.OfflineWeb.start() as site:
        config = web_tools.WebConfig(search_provider="local", corpus_dir=site.site_dir,
                                     corpus_base_url=site.base_url, allowed_hosts=[site.host_port])
        async with web_tools.Web(config) as web:
            yield web


def _load_tools(spec: str) -> list[Tool | Callable[..., Any]]:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise CliError(f"--tools-from {spec!r}: write it as 'package.module:attribute'")
    try:
        value = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise CliError(f"--tools-from {spec!r}: {error}") from None
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not all(isinstance(item, Tool) or callable(item) for item in items):
        raise CliError(f"--tools-from {spec!r}: not a tool, a callable or a list of them")
    return items


def _import_or_fail(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise CliError(f"{what} is not available in this installation ({module}: {error})") from None


def _print_result(result: RunResult, console: Console, json_output: bool, out: Path | None,
                  max_tool_calls: int) -> None:
    if out:
        out.write_text(markdown_report(result), encoding="utf-8")
    if json_output:
        sys.stdout.write(result.summary_json() + "\n")
    else:
        sys.stdout.write(result.answer.rstrip() + "\n")
        if result.citations:
            sys.stdout.write("\nSources:\n" + "".join(f"  [{n}] {c.url}\n" for n, c in
                                                      enumerate(result.citations, start=1)))
    usage = result.usage
    state = f"partial ({result.stop_reason})" if result.partial else "complete"
    console.print(f"{state}: {usage.agents} agents, {usage.tool_calls}/{max_tool_calls} tool calls, "
                  f"{usage.prompt_tokens}+{usage.completion_tokens} tokens, {usage.wall_seconds:.1f} s"
                  + (f"; report: {out}" if out else ""), markup=False, highlight=False)

