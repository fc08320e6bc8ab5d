"""Which model `swarm serve` serves, under what name, on what engine and where: `swarm run`'s defaults, loopback."""

from __future__ import annotations

import re
from pathlib import Path

from kimi_swarm.backend import Engine

from ..model_choice import LaunchError, checkpoint_path
from .generator import EngineGenerator

LOOPBACK = "127.0.0.1"
"""Where the server listens unless --host says otherwise."""
DEFAULT_MODEL_NAME = "kimi-swarm-default"
"""The served name of the embedded default model."""

_SIZE = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[KMGT]i?B?)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_memory(text: str | None) -> int | float | None:
    """--memory: a fraction of free memory ('0.5') or a size in bytes ('8GiB', '512MB', '1000000')."""
    if text is None:
        return None
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise LaunchError(f"--memory {text!r}: give a fraction of free memory (0.5) or a size (8GiB, 512MB)")
    number, unit = match["number"], (match["unit"] or "").lower().removesuffix("b")
    if not unit and "." in number:
        return float(number)
    return int(float(number) * _UNITS[unit])


def model_name_for(model: str | None) -> str:
    return Path(model).resolve().name if model else DEFAULT_MODEL_NAME


def load_generator(model: str | None, *, device: str, dtype: str, memory: int | float | None, max_sessions: int,
                   prefix_reuse: bool, quantization: str | None = None) -> EngineGenerator:
    """The engine on a checkpoint directory, or on the embedded default model when `model` is None."""
    path = checkpoint_path(model)
    try:
        engine = Engine.from_pretrained(path, device=device, dtype=dtype, quantization=quantization, memory=memory,
                                        max_sessions=max_sessions)
        return EngineGenerator(engine, prefix_reuse=prefix_reuse)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise LaunchError(f"cannot serve the checkpoint at {path}: {error}") from None
