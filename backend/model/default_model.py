"""The embedded default model: a small Kimi Linear trained on swarm trajectories over the offline web.

It ships inside the package (backend/checkpoints/) as an official-format checkpoint, so `swarm run`
works with no download and no GPU. training/train_default_model.py produces it.
"""

from __future__ import annotations

from pathlib import Path

from .. import checkpoints

CHECKPOINT_FILES = ("config.json", "tokenizer_config.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
"""Either one weights file or the index of its shards, as in official checkpoints."""


class DefaultModelMissing(FileNotFoundError):
    """The installation has no trained default checkpoint."""


def default_model_path() -> Path:
    """The shipped checkpoint directory; raises DefaultModelMissing naming what is absent."""
    directory = Path(checkpoints.__file__).resolve().parent
    missing = [name for name in CHECKPOINT_FILES if not (directory / name).is_file()]
    if not any((directory / name).is_file() for name in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES))
    if missing:
        raise DefaultModelMissing(
            f"the embedded default model is not in this installation: {', '.join(missing)} missing from "
            f"{directory}. Train it with training/train_default_model.py (see its docstring), or pass "
            "--model PATH (a Kimi Linear checkpoint) or --base-url URL (an OpenAI-compatible server)."
        )
    return directory
