"""The checkpoint a `--model` option names, and the error a person can fix: shared by `swarm run` and `swarm
serve`, apart from launch.py so that serving loads no agent tools."""

from __future__ import annotations

from pathlib import Path

from kimi_swarm.backend.model.default_model import default_model_path


class LaunchError(Exception):
    """A problem the person can fix (a missing checkpoint, a bad option); the message says what."""


def checkpoint_path(model: str | None, *, not_a_directory: str = "") -> Path:
    """The checkpoint directory `--model` names, or the embedded default model's when it names none;
    `not_a_directory` ends the error for a path that is not a directory."""
    if not model:
        try:
            return default_model_path()
        except FileNotFoundError as error:
            raise LaunchError(str(error)) from None
    path = Path(model)
    if not path.is_dir():
        raise LaunchError(f"--model {model!r} is not a checkpoint directory{not_a_directory}")
    return path
