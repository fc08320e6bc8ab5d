"""The parts of a run built from a person's options: the model backend and the web its tools use.

`swarm run` and the example workflows (examples/) both build them here, so a script behaves like the
CLI: no model option means the embedded default model on the offline web; `--model PATH` a local
Kimi Linear checkpoint, `--base-url URL` an OpenAI-compatible server, both on the live web.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

from backend.conversation import ChatBackend


class LaunchError(Exception):
    """A problem the person can fix (a missing checkpoint, a bad option); the message says what."""


class WebMode(str, Enum):
    auto = "auto"
    offline = "offline"
    live = "live"
    none = "none"


class EngineDtype(str, Enum):
    """What the in-process engine runs a checkpoint in (backend.engine_backend.ENGINE_DTYPES)."""
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


LIVE_SEARCH_PROVIDERS = ("duckduckgo", "searxng", "brave", "tavily")
"""Search providers on the live web (keys and URLs from BRAVE_API_KEY, TAVILY_API_KEY, SEARXNG_URL)."""


def open_backend(model: str | None = None, base_urls: Sequence[str] = (), api_key: str | None = None, *,
                 stream: bool = False, replay: str | Path | None = None, device: str = "auto",
                 dtype: str = "auto") -> ChatBackend:
    """The model: a replayed tape, an OpenAI-compatible server (`model` is its model name), a local
    checkpoint directory (`model` alone), or the embedded default model (neither). `device` and `dtype`
    say where and in what the in-process engine runs a checkpoint ('auto': bf16 on a GPU if there is one,
    else fp32 on the CPU)."""
    if (replay or base_urls) and (device != "auto" or dtype != "auto"):
        raise LaunchError("--device and --dtype choose how the in-process engine runs a checkpoint; "
                          f"they do not apply to {'--replay' if replay else '--base-url'}")
    if replay:
        from backend.replay import ReplayBackend

        return ReplayBackend(replay)
    if base_urls:
        from backend.openai_backend import OpenAIBackend

        if not model:
            raise LaunchError("--base-url needs --model NAME (the model name the server serves)")
        try:
            return OpenAIBackend(list(base_urls), model, api_key, stream=stream)
        except ValueError as error:
            raise LaunchError(str(error)) from None
    if model:
        checkpoint = Path(model)
        if not checkpoint.is_dir():
            raise LaunchError(f"--model {model!r} is not a checkpoint directory; to use a served model name, "
                              "also pass --base-url")
        return _engine_backend(checkpoint, device, dtype)
    default_model = import_or_fail("backend.default_model", "the embedded default model")
    try:
        return _engine_backend(default_model.default_model_path(), device, dtype)
    except FileNotFoundError as error:
        raise LaunchError(str(error)) from None


def resolve_web_mode(mode: WebMode, *, uses_default_model: bool) -> WebMode:
    """'auto' is the offline web for the embedded default model (it was trained there), else the live web."""
    if mode is not WebMode.auto:
        return mode
    return WebMode.offline if uses_default_model else WebMode.live


@contextlib.asynccontextmanager
async def open_web(mode: WebMode, search_provider: str | None = None) -> AsyncIterator[Any]:
    """A `tools.Web` over the offline web (served on loopback while the context lasts) or the live internet
    with `search_provider` (default: the web tools' own default). `mode` must be offline or live."""
    web_tools = import_or_fail("tools", "the web tools")
    if mode is WebMode.live:
        if search_provider is not None and search_provider not in LIVE_SEARCH_PROVIDERS:
            raise LaunchError(f"unknown search provider {search_provider!r}; choose from "
                              f"{', '.join(LIVE_SEARCH_PROVIDERS)}")
        config = web_tools.WebConfig(search_provider=search_provider) if search_provider else web_tools.WebConfig()
        async with web_tools.Web(config) as web:
            yield web
        return
    if mode is not WebMode.offline:
        raise ValueError(f"open_web needs WebMode.offline or WebMode.live, not {mode.value!r}")
    if search_provider is not None:
        raise LaunchError("a search provider is for the live web; the offline web has its own local search")
    offline_web = import_or_fail("swarm.offline_web", "the offline web")
    trajectories = import_or_fail("swarm.offline_web.trajectories", "the offline web")
    with offline_web.OfflineWeb.start() as site:
        async with trajectories.offline_web_tools(site) as web:  # the web tools the default model was trained with
            yield web


def _engine_backend(path: Path, device: str, dtype: str) -> ChatBackend:
    engine_backend = import_or_fail("backend.engine_backend", "the in-process engine")
    try:
        return engine_backend.EngineBackend.from_pretrained(path, device=device, dtype=dtype)
    except (OSError, ValueError, KeyError) as error:
        raise LaunchError(f"cannot load the checkpoint at {path}: {error}") from None


def import_or_fail(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise LaunchError(f"{what} is not available in this installation ({module}: {error})") from None
