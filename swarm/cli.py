"""`swarm run TASK`: a research swarm from the command line; `swarm serve`: the engine as an OpenAI-compatible
API; `swarm serve-web`: the offline web;
`swarm report TRACE`: a finished run's HTML page from its trace; `swarm run --resume TRACE`: a crashed run,
continued from its trace.

Model, in order of precedence: `--replay FILE` (a recorded run), `--base-url URL --model NAME` (an
OpenAI-compatible server), `--model PATH` (a local Kimi Linear checkpoint on the in-process
engine), or nothing: the embedded default model, with the offline web as its web. `--device` and `--dtype`
say where and in what the in-process engine runs. `--mcp` adds the tools of MCP servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from kimi_swarm.backend import RecordingBackend, ReplayMismatch, ReplyOptions
from kimi_swarm.tools import LIVE_SEARCH_PROVIDERS, MCPServer, MCPServerError, WebConfig

from . import offline_web
from .budget import Limits
from .display import LivePanel, LogLines
from .events import Event, RunStarted, read_trace
from .function_tools import Tool
from .launch import (
    REPLY_TOKENS,
    TOOLS,
    WEB_TOOLS,
    EngineDtype,
    LaunchError,
    Quantization,
    WebMode,
    mcp_server,
    named_tools,
    open_backend,
    open_web,
    quantization_of,
    resolve_web_mode,
)
from .orchestrator import Swarm
from .report import UNSUPPORTED_TITLE, markdown_report
from .report_html import render_report
from .result import RunResult
from .resume import ResumeError, read_identity
from .serve.model import DEFAULT_MODEL_NAME, LOOPBACK, load_generator, model_name_for, parse_memory
from .tape import ToolTape, ToolTapeMismatch, tool_tape_path

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = (
    "Exit codes: 0 the run finished within every limit; 1 error (a model, server or checkpoint failure, or a "
    "replay that departs from its tape); 2 usage error (a bad option or argument); 3 partial result (a budget, "
    "cap, deadline or failed agent cut part of the run short); 130 interrupted by Ctrl-C (the partial result is "
    "still printed and saved)."
)

DEFAULT_LIMITS = Limits()

QuantizationOption = Annotated[Quantization, typer.Option(
    help="fp8: quantise the checkpoint's linear and expert weights to FP8 while loading (half the GPU memory of "
         "bf16; Ada/Hopper GPUs; on a CPU the weights are dequantised per call).")]
"""--quantization of `swarm run` and `swarm serve`, which load a checkpoint the same way."""


def _about(limit: str) -> str:
    """A limit's option help: its description in `Limits`, the one place limits are declared."""
    description = Limits.model_fields[limit].description or limit
    return description[0].upper() + description[1:] + "."

app = typer.Typer(
    help="Agent swarms on one shared long context: an orchestrator fans a task out to up to 100 sub-agents.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)


@app.command(epilog=EXIT_CODES_HELP)
def run(
    ctx: typer.Context,
    task: Annotated[str | None, typer.Argument(
        help="The research task; '-' reads it from stdin. With --resume, the trace's task unless given.")] = None,
    model: Annotated[str | None, typer.Option(
        metavar="NAME|PATH", help="With --base-url: the served model name. Alone: a local Kimi Linear checkpoint "
                                  "directory. Neither: the embedded default model.")] = None,
    base_url: Annotated[list[str] | None, typer.Option(
        "--base-url", metavar="URL",
        help="OpenAI-compatible server, e.g. http://localhost:8000/v1. Repeat to spread runs.")] = None,
    api_key: Annotated[str | None, typer.Option(
        envvar="OPENAI_API_KEY", metavar="KEY", help="Bearer key for --base-url.")] = None,
    stream: Annotated[bool, typer.Option(help="Stream replies from --base-url (server-sent events).")] = False,
    device: Annotated[str, typer.Option(
        metavar="DEVICE", help="Where the in-process engine runs: auto (a GPU if present), cpu, cuda or cuda:N.")
    ] = "auto",
    dtype: Annotated[EngineDtype, typer.Option(
        help="What the in-process engine computes in: auto is bfloat16 on a GPU, float32 on the CPU. bfloat16 "
             "halves the weights' memory; on a CPU it pays only with bf16 instructions (AVX512-BF16, AMX).")
    ] = EngineDtype.auto,
    quantization: QuantizationOption = Quantization.none,
    max_agents: Annotated[int, typer.Option(min=1, help=_about("max_agents"))] = DEFAULT_LIMITS.max_agents,
    max_tool_calls: Annotated[int, typer.Option(min=0, help=_about("max_tool_calls"))] = DEFAULT_LIMITS.max_tool_calls,
    max_agent_steps: Annotated[int, typer.Option(
        min=1, help=_about("max_agent_steps"))] = DEFAULT_LIMITS.max_agent_steps,
    max_orchestrator_steps: Annotated[int, typer.Option(
        min=1, help=_about("max_orchestrator_steps"))] = DEFAULT_LIMITS.max_orchestrator_steps,
    concurrency: Annotated[int, typer.Option(min=1, help=_about("max_concurrency"))] = DEFAULT_LIMITS.max_concurrency,
    deadline: Annotated[float | None, typer.Option(min=0.001, help=_about("deadline"))] = DEFAULT_LIMITS.deadline,
    token_budget: Annotated[int | None, typer.Option(
        min=1, help=_about("token_budget"))] = DEFAULT_LIMITS.token_budget,
    max_tokens: Annotated[int, typer.Option(min=1, help="Completion tokens per model turn (a 25-row table "
                                                         "takes the default model about 2,800).")] = REPLY_TOKENS,
    temperature: Annotated[float, typer.Option(min=0.0, help="Sampling temperature.")] = 0.0,
    tools: Annotated[str, typer.Option(
        help=f"Comma-separated tools to give the agents, from: {', '.join(TOOLS)}.")
    ] = ",".join(TOOLS),
    web: Annotated[WebMode, typer.Option(
        help="Where the web tools go: 'offline' (the generated offline web on loopback), 'live' (the internet), "
             "'none' (no web tools), 'auto' (offline for the embedded default model, live otherwise).")
    ] = WebMode.auto,
    search: Annotated[str | None, typer.Option(
        metavar="PROVIDER", help=f"Search provider on the live web: {', '.join(LIVE_SEARCH_PROVIDERS)} (keys and "
                                 "URLs from BRAVE_API_KEY, TAVILY_API_KEY, SEARXNG_URL). "
                                 f"Default: {WebConfig.model_fields['search_provider'].default}.")] = None,
    tools_from: Annotated[list[str] | None, typer.Option(
        "--tools-from", metavar="MODULE:ATTR",
        help="Extra tools, 'module:attribute' naming a tool, a typed callable, or a list of them. Repeatable.")
    ] = None,
    mcp: Annotated[list[str] | None, typer.Option(
        "--mcp", metavar="COMMAND|URL",
        help="An MCP tool server whose tools the agents get, their output marked untrusted: a command line run as "
             "a subprocess over stdio (e.g. 'uvx mcp-server-time'), or the http:// or https:// URL of a "
             "streamable-HTTP server. Repeatable.")
    ] = None,
    context: Annotated[list[Path] | None, typer.Option(
        "--context", exists=True, dir_okay=False, metavar="FILE",
        help="A shared context document for the orchestrator. Repeatable.")] = None,
    out: Annotated[Path | None, typer.Option(
        metavar="FILE", help="Write a Markdown report (answer, sources, agents, usage).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the RunResult as JSON on stdout.")] = False,
    trace: Annotated[Path | None, typer.Option(metavar="FILE", help="Write every event of the run as JSONL.")] = None,
    report: Annotated[Path | None, typer.Option(
        metavar="FILE", help="Write the run as one self-contained HTML page: a timeline of every agent, the answer "
                             "with its sources, budget and token use, and each agent's transcript.")] = None,
    otel: Annotated[bool, typer.Option(
        "--otel", help="Export the run's OpenTelemetry spans over OTLP/HTTP to where the standard "
                       "OTEL_EXPORTER_OTLP_* variables say. Needs: pip install 'kimi-swarm[otel]'.")] = False,
    record: Annotated[Path | None, typer.Option(
        metavar="FILE",
        help="Record every model exchange to this JSONL tape, and every tool outcome to TAPE.tools.jsonl.")] = None,
    replay: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, metavar="FILE",
        help="Replay a recorded tape instead of calling a model; with its .tools.jsonl beside it, tools are "
             "replayed too (no web needed).")] = None,
    resume: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, metavar="TRACE",
        help="Continue the run of a --trace file after a crash, appending to it: finished sub-agents keep their "
             "results, the others and the orchestrator go on from their last completed turn, and the budget spans "
             "the whole run. Give the same model and tools; limits, --max-tokens and --temperature are the "
             "trace's unless given.")] = None,
) -> None:
    """Run a research swarm on TASK and print its answer with sources."""
    console = Console(stderr=True)
    if task == "-":
        task = sys.stdin.read().strip()
    recorded = _recorded_run(console, resume) if resume else None
    if task is None and recorded is None:
        raise typer.BadParameter("give the research task, or --resume TRACE", param_hint="TASK")
    task = task if task is not None else recorded.task  # type: ignore[union-attr]
    if not task.strip():
        raise typer.BadParameter("the task is empty", param_hint="TASK")
    selected = [name.strip() for name in tools.split(",") if name.strip()]
    try:
        named_tools(None, selected)
    except LaunchError as error:
        raise typer.BadParameter(str(error), param_hint="--tools") from None
    try:
        servers = [mcp_server(spec) for spec in mcp or []]
    except LaunchError as error:
        raise typer.BadParameter(str(error), param_hint="--mcp") from None
    if search is not None and search not in LIVE_SEARCH_PROVIDERS:
        raise typer.BadParameter(f"unknown search provider {search!r}; choose from {', '.join(LIVE_SEARCH_PROVIDERS)}",
                                 param_hint="--search")
    if base_url and not model and not replay:
        raise typer.BadParameter("--base-url needs --model NAME (the model name the server serves)",
                                 param_hint="--model")
    if resume and (record or replay):
        raise typer.BadParameter("--resume goes on with a traced run; it does not go with --record or --replay",
                                 param_hint="--resume")
    if resume and trace and trace.resolve() != resume.resolve():
        raise typer.BadParameter("--resume appends to the trace it resumes; leave out --trace", param_hint="--trace")
    settings = dict(
        max_agents=max_agents, max_tool_calls=max_tool_calls, max_agent_steps=max_agent_steps,
        max_orchestrator_steps=max_orchestrator_steps, max_concurrency=concurrency, deadline=deadline,
        token_budget=token_budget, reply_options=ReplyOptions(max_tokens=max_tokens, temperature=temperature),
        trace_path=trace,
    )
    if recorded is not None:
        settings = _resumed_settings(ctx, console, recorded, settings)
        max_tool_calls = settings["limits"].max_tool_calls
    documents = [path.read_text(encoding="utf-8") for path in context or []]
    web_mode = resolve_web_mode(web, uses_default_model=not (base_url or model or replay))
    if search and web_mode is not WebMode.live:
        raise typer.BadParameter(f"--search is for the live web (--web live), not --web {web_mode.value}",
                                 param_hint="--search")
    try:
        result, interrupted = asyncio.run(_run(
            task, documents, console, settings, model=model, base_urls=base_url or [], api_key=api_key,
            stream=stream, device=device, dtype=dtype.value, quantization=quantization_of(quantization),
            web_mode=web_mode, search=search, tool_names=selected,
            tools_from=tools_from or [], servers=servers, record=record, replay=replay, resume=resume,
            live=console.is_terminal and not json_output, otel=otel,
        ))
    except (LaunchError, ReplayMismatch, ToolTapeMismatch, ResumeError) as error:
        _print_error(console, error)
        raise typer.Exit(EXIT_ERROR) from None
    _print_result(result, console, json_output, out, max_tool_calls)
    if report:
        result.report_html(report)
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
    try:
        offline_web.serve_forever(port=port, seed=seed)
    except (LaunchError, OSError) as error:
        _print_error(Console(stderr=True), error)
        raise typer.Exit(EXIT_ERROR) from None


@app.command("serve")
def serve_command(
    model: Annotated[str | None, typer.Option(
        metavar="PATH", help="A Kimi Linear checkpoint directory; default: the embedded default model.")] = None,
    device: Annotated[str, typer.Option(
        metavar="DEVICE", help="Where the engine runs: auto (a GPU if present), cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[EngineDtype, typer.Option(
        help="What the engine computes in: auto is bfloat16 on a GPU, float32 on the CPU.")] = EngineDtype.auto,
    quantization: QuantizationOption = Quantization.none,
    host: Annotated[str, typer.Option(
        help="Address to listen on. Only loopback by default; 0.0.0.0 opens the server to the network.")
    ] = LOOPBACK,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0 picks a free one).")] = 8000,
    api_key: Annotated[str | None, typer.Option(
        envvar="SWARM_SERVE_API_KEY", metavar="KEY",
        help="Require 'Authorization: Bearer KEY' on every /v1 request.")] = None,
    model_name: Annotated[str | None, typer.Option(
        metavar="NAME", help=f"The model name clients ask for; default: the checkpoint's folder name, "
                             f"{DEFAULT_MODEL_NAME} for the embedded model.")] = None,
    memory: Annotated[str | None, typer.Option(
        metavar="FRACTION|SIZE", help="The engine's memory budget for states and cache: a fraction of free memory "
                                      "(0.5) or a size (8GiB). Default: 0.9 of a GPU's, 0.25 of RAM.")] = None,
    max_sessions: Annotated[int, typer.Option(
        min=2, help="Engine sessions at once: running requests plus cached prefix snapshots.")] = 128,
    prefix_reuse: Annotated[bool, typer.Option(
        help="Continue each request from the longest prompt prefix the engine already holds.")] = True,
) -> None:
    """Serve the in-process engine as an OpenAI-compatible API (/v1/chat/completions, /v1/models) until Ctrl-C."""
    from .serve.app import create_app  # the HTTP stack loads only for this command
    from .serve.server import bind, serve, url_of

    console = Console(stderr=True)
    try:
        generator = load_generator(model, device=device, dtype=dtype.value, quantization=quantization_of(quantization),
                                   memory=parse_memory(memory),
                                   max_sessions=max_sessions, prefix_reuse=prefix_reuse)
        sock = bind(host, port)
    except (LaunchError, OSError) as error:
        _print_error(console, error)
        raise typer.Exit(EXIT_ERROR) from None
    name = model_name or model_name_for(model)
    sys.stdout.write(f"serving {name} at {url_of(sock)}\n")
    sys.stdout.flush()
    serve(create_app(generator, model_name=name, api_key=api_key), sock, on_stop=generator.shutdown)


@app.command("report")
def report_command(
    trace: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A trace written by swarm run --trace.")],
    out: Annotated[Path | None, typer.Option(metavar="FILE", help="The page to write; default: TRACE with .html.")
    ] = None,
) -> None:
    """Write the HTML page of a finished run from its trace: timeline, answer, budget and tokens, tool calls."""
    try:
        events = read_trace(str(trace))
    except (ValueError, OSError) as error:
        _print_error(Console(stderr=True), LaunchError(f"{trace} is not a swarm trace: {error}"))
        raise typer.Exit(EXIT_ERROR) from None
    target = out or trace.with_suffix(".html")
    target.write_text(render_report(events), encoding="utf-8")
    Console(stderr=True).print(f"report: {target}", markup=False, highlight=False)


LIMIT_OPTIONS = {"max_agents": "max_agents", "max_tool_calls": "max_tool_calls", "max_agent_steps": "max_agent_steps",
                 "max_orchestrator_steps": "max_orchestrator_steps", "concurrency": "max_concurrency",
                 "deadline": "deadline", "token_budget": "token_budget"}
"""`swarm run`'s limit options, each with the `Limits` field it sets."""


def _recorded_run(console: Console, trace: Path) -> RunStarted:
    """--resume: the identity the trace recorded, or exit 1 saying why it cannot be resumed."""
    try:
        return read_identity(trace)
    except ResumeError as error:
        _print_error(console, error)
        raise typer.Exit(EXIT_ERROR) from None


def _resumed_settings(ctx: typer.Context, console: Console, recorded: RunStarted,
                      settings: dict[str, Any]) -> dict[str, Any]:
    """--resume: the trace's limits and reply options, but for those given on the command line (one that differs
    from the trace's is then refused, by name)."""
    given = {name for name in (*LIMIT_OPTIONS, "max_tokens", "temperature")
             if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"}  # typer bundles its own click
    limits = recorded.limits | {field: settings[field] for option, field in LIMIT_OPTIONS.items() if option in given}
    options = {**(recorded.reply_options or {}), **settings["reply_options"].model_dump(include=given)}
    try:
        return dict(limits=Limits(**limits), reply_options=ReplyOptions(**options))
    except ValueError as error:
        _print_error(console, ResumeError(f"the trace's limits or reply options do not fit this kimi-swarm: {error}"))
        raise typer.Exit(EXIT_ERROR) from None


def _otel_tracer() -> contextlib.AbstractContextManager[Callable[[Event], None]]:
    """The OTLP exporter, imported only when --otel asks for it (the SDK is an optional extra)."""
    try:
        from .telemetry import otlp_tracer
    except ImportError as error:
        raise LaunchError(str(error)) from None
    return otlp_tracer()


def _print_error(console: Console, error: Exception) -> None:
    """One unwrapped line, so the message can be copied and grepped; its text is not read as markup."""
    console.print("[red]error:[/red]", escape(str(error)), soft_wrap=True)


async def _run(task: str, documents: list[str], console: Console, settings: dict[str, Any], *, model: str | None,
               base_urls: list[str], api_key: str | None, stream: bool, device: str, dtype: str,
               quantization: str | None, web_mode: WebMode,
               search: str | None, tool_names: list[str], tools_from: list[str], servers: list[MCPServer],
               record: Path | None, replay: Path | None, live: bool, otel: bool = False,
               resume: Path | None = None) -> tuple[RunResult, bool]:
    async with contextlib.AsyncExitStack() as stack:
        tracer = stack.enter_context(_otel_tracer()) if otel else None
        extra_tools = [t for spec in tools_from for t in _load_tools(spec)]
        backend = open_backend(model, base_urls, api_key, stream=stream, replay=replay, device=device, dtype=dtype,
                               quantization=quantization)
        stack.push_async_callback(backend.aclose)
        web = None
        if web_mode is not WebMode.none and set(tool_names) & set(WEB_TOOLS):
            web = await stack.enter_async_context(open_web(web_mode, search))
        run_tools: list[Tool | Callable[..., Any] | MCPServer] = [*named_tools(web, tool_names), *extra_tools,
                                                                  *servers]
        tool_tape = None
        if record:
            backend = RecordingBackend(backend, record)
            tool_tape = ToolTape.record(tool_tape_path(record))
        elif replay and tool_tape_path(replay).is_file():
            tool_tape = ToolTape.replay(tool_tape_path(replay))
        if tool_tape is not None:
            stack.callback(tool_tape.close)
        swarm = Swarm(backend, run_tools, tool_tape=tool_tape, **settings)
        display = LivePanel(console, swarm.limits, task) if live else LogLines(console, swarm.limits)
        swarm.add_listener(display)
        if tracer is not None:
            swarm.add_listener(tracer)
        interrupts = _InterruptHandler(swarm)
        with display, interrupts:
            try:
                if resume:
                    result = await swarm.resume(resume, task=task, context=documents)
                else:
                    result = await swarm.run(task, documents)
            except MCPServerError as error:
                raise LaunchError(str(error)) from None
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


def _load_tools(spec: str) -> list[Tool | Callable[..., Any]]:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise LaunchError(f"--tools-from {spec!r}: write it as 'package.module:attribute'")
    try:
        value = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise LaunchError(f"--tools-from {spec!r}: {error}") from None
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not all(isinstance(item, Tool) or callable(item) for item in items):
        raise LaunchError(f"--tools-from {spec!r}: not a tool, a callable or a list of them")
    return items


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
        if result.unsupported_citations:
            sys.stdout.write(f"\n{UNSUPPORTED_TITLE}:\n"
                             + "".join(f"  {url}\n" for url in result.unsupported_citations))
    usage = result.usage
    state = f"partial ({result.stop_reason})" if result.partial else "complete"
    console.print(f"{state}: {usage.agents} agents, {usage.tool_calls}/{max_tool_calls} tool calls, "
                  f"{usage.prompt_tokens}+{usage.completion_tokens} tokens, {usage.wall_seconds:.1f} s"
                  + (f"; report: {out}" if out else ""), markup=False, highlight=False)

