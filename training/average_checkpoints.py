"""Average checkpoints of one training lineage, tensor by tensor (a "model soup", Wortsman et al. 2022).

Two continuations of one checkpoint that each learned something the other lost (the default model's
comparison direction in one, its two-hop plans in the other) can keep both when their weights are averaged.
The checkpoints must share config.json and tensor names, shapes and dtypes; the average is taken in float32
and stored in each tensor's own dtype, in the first checkpoint's shard layout.

    python training/average_checkpoints.py A B --out DIR [--weights 0.5 0.5]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def average_checkpoints(paths: list[Path], weights: list[float], out: Path) -> None:
    """Write to `out` the weighted mean of the checkpoints in `paths`; every other file is the first one's."""
    if len(paths) < 2 or len(weights) != len(paths):
        raise ValueError(f"need two or more checkpoints and one weight each, got {len(paths)} and {len(weights)}")
    if abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"weights must sum to 1, got {sum(weights)}")
    first = paths[0]
    for path in paths[1:]:
        if (path / "config.json").read_text() != (first / "config.json").read_text():
            raise ValueError(f"{path}/config.json differs from {first}/config.json: only one lineage averages")
    shards = sorted(first.glob("*.safetensors"))
    if not shards:
        raise ValueError(f"no *.safetensors in {first}")
    out.mkdir(parents=True, exist_ok=True)
    for file in first.iterdir():
        if file.suffix != ".safetensors":
            shutil.copy(file, out / file.name)
    for shard in shards:
        tensors = [load_file(path / shard.name) for path in paths]
        averaged = {}
        for path, other in zip(paths[1:], tensors[1:]):
            if other.keys() != tensors[0].keys():
                raise ValueError(f"{path}/{shard.name} holds other tensors than {first}/{shard.name}")
        for name, tensor in tensors[0].items():
            for path, other in zip(paths[1:], tensors[1:]):
                if other[name].shape != tensor.shape or other[name].dtype != tensor.dtype:
                    raise ValueError(f"{path}/{shard.name}: tensor {name} has another shape or dtype")
            mean = sum(weight * t[name].to(torch.float32) for weight, t in zip(weights, tensors))
            averaged[name] = mean.to(tensor.dtype)
        save_file(averaged, str(out / shard.name), metadata={"format": "pt"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--weights", type=float, nargs="+", help="one per checkpoint (default: equal)")
    args = parser.parse_args()
    weights = args.weights or [1.0 / len(args.checkpoints)] * len(args.checkpoints)
    average_checkpoints(args.checkpoints, weights, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
