"""The parts of a run built from a person's options: the model backend, the web its tools use, MCP servers.

`swarm run` and the example workflows (examples/) both build them here, so a script behaves like the
CLI: no model option means the embedded default model on the offline web; `--model PATH` a local
Kimi Linear checkpoint, `--base-url URL` an OpenAI-compatible server, both on the live web.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import AsyncIterator, Callable, Sequence
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

from kimi_swarm.backend import ENGINE_DTYPES, QUANTIZATIONS, ChatBackend, EngineBackend, OpenAIBackend, ReplayBackend
from kimi_swarm.tools import LIVE_SEARCH_PROVIDERS, MCPServer, Web, WebConfig, rank

from .model_choice import LaunchError, checkpoint_path
from .offline_web import OfflineWeb


class WebMode(StrEnum):
    auto = "auto"
    offline = "offline"
    live = "live"
    none = "none"


EngineDtype = Enum("EngineDtype", {name: name for name in ENGINE_DTYPES}, type=str)  # type: ignore[misc]
"""What the in-process engine runs a checkpoint in, as a choice for command-line options."""

Quantization = Enum("Quantization", {name: name for name in ("none", *QUANTIZATIONS)}, type=str)  # type: ignore[misc]
"""How the in-process engine stores a checkpoint's weights: as they are, or quantised while loading."""

REPLY_TOKENS = 4096
"""Completion tokens per model turn of `swarm run` and the examples: the default model writes a 25-row table in
about 2,800."""

WEB_TOOLS = ("search", "fetch", "browse")
TOOLS = (*WEB_TOOLS, "rank")
"""The tools a run can name (`swarm run --tools`), in the order the default model was trained to see them
declared: the web's, then `rank`, which needs no web."""


def named_tools(web: Web | None, names: Sequence[str]) -> list[Callable[..., Any]]:
    """The tools called `names`: the web tools in the order given, from `web` (none without one), then `rank`."""
    unknown = [name for name in names if name not in TOOLS]
    if unknown:
        raise LaunchError(f"unknown tool(s) {', '.join(unknown)}; choose from {', '.join(TOOLS)}")
    chosen: list[Callable[..., Any]] = [getattr(web, name) for name in names if name in WEB_TOOLS] if web else []
    return chosen + [rank] if "rank" in names else chosen


def trained_tools(web: Web) -> list[Callable[..., Any]]:
    """The tools the default model was trained with, in their declared order."""
    return named_tools(web, TOOLS)


def offline_web_tools(site: OfflineWeb, index_dir: Path | None = None) -> Web:
    """The web tools over a served offline web: local search of its files, fetch allowed to its address.

    The server is our own on loopback, so requests are not paced as they are for public hosts.
    """
    extra = {"index_dir": index_dir} if index_dir else {}
    return Web(WebConfig(search_provider="local", corpus_dir=site.site_dir, corpus_base_url=site.base_url,
                         allowed_hosts=[site.host_port], per_host_rate=10_000.0, per_host_concurrency=64,
                         cache_max_entries=8192, **extra))


def open_backend(model: str | None = None, base_urls: Sequence[str] = (), api_key: str | None = None, *,
                 stream: bool = False, replay: str | Path | None = None, device: str = "auto",
                 dtype: str = "auto", quantization: str | None = None) -> ChatBackend:
    """The model: a replayed tape, an OpenAI-compatible server (`model` is its model name), a local
    checkpoint directory (`model` alone), or the embedded default model (neither). `device`, `dtype` and
    `quantization` say where and in what the in-process engine runs a checkpoint ('auto': bf16 on a GPU if
    there is one, else fp32 on the CPU; "fp8": weights quantised while loading)."""
    if (replay or base_urls) and (device != "auto" or dtype != "auto" or quantization):
        raise LaunchError("--device, --dtype and --quantization choose how the in-process engine runs a checkpoint; "
                          f"they do not apply to {'--replay' if replay else '--base-url'}")
    if replay:
        return ReplayBackend(replay)
    if base_urls:
        if not model:
            raise LaunchError("--base-url needs --model NAME (the model name the server serves)")
        try:
            return OpenAIBackend(list(base_urls), model, api_key, stream=stream)
        except ValueError as error:
            raise LaunchError(str(error)) from None
    path = checkpoint_path(model, not_a_directory="; to use a served model name, also pass --base-url")
    return _engine_backend(path, device, dtype, quantization)


def mcp_server(spec: str) -> MCPServer:
    """`--mcp SPEC`: an http:// or https:// URL is a streamable-HTTP server; anything else is a command line
    (split as a POSIX shell would, without running one) whose process speaks MCP over stdio."""
    text = spec.strip()
    if text.lower().startswith(("http://", "https://")):
        return MCPServer.http(text)
    try:
        words = shlex.split(text)
    except ValueError as error:
        raise LaunchError(f"--mcp {spec!r} is not a command line: {error}") from None
    if not words or not words[0]:
        raise LaunchError("--mcp needs a server: a command line (e.g. 'uvx mcp-server-time') or an http(s):// URL")
    return MCPServer.stdio(words[0], words[1:])


def resolve_web_mode(mode: WebMode, *, uses_default_model: bool) -> WebMode:
    """'auto' is the offline web for the embedded default model (it was trained there), else the live web."""
    if mode is not WebMode.auto:
        return mode
    return WebMode.offline if uses_default_model else WebMode.live


@contextlib.asynccontextmanager
async def open_web(mode: WebMode, search_provider: str | None = None) -> AsyncIterator[Web]:
    """A `Web` over the offline web (served on loopback while the context lasts) or the live internet
    with `search_provider` (default: the web tools' own default). `mode` must be offline or live."""
    if mode is WebMode.live:
        if search_provider is not None and search_provider not in LIVE_SEARCH_PROVIDERS:
            raise LaunchError(f"unknown search provider {search_provider!r}; choose from "
                              f"{', '.join(LIVE_SEARCH_PROVIDERS)}")
        config = WebConfig(search_provider=search_provider) if search_provider else WebConfig()
        async with Web(config) as web:
            yield web
        return
    if mode is not WebMode.offline:
        raise ValueError(f"open_web needs WebMode.offline or WebMode.live, not {mode.value!r}")
    if search_provider is not None:
        raise LaunchError("a search provider is for the live web; the offline web has its own local search")
    with OfflineWeb.start() as site:
        async with offline_web_tools(site) as web:
            yield web


def quantization_of(choice: Quantization) -> str | None:
    """The engine's `quantization` argument for a command-line choice."""
    return None if choice.value == "none" else choice.value


def _engine_backend(path: Path, device: str, dtype: str, quantization: str | None) -> ChatBackend:
    try:
        return EngineBackend.from_pretrained(path, device=device, dtype=dtype, quantization=quantization)
    except (OSError, ValueError, KeyError) as error:
        raise LaunchError(f"cannot load the checkpoint at {path}: {error}") from None
