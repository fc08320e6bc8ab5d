"""Load an official-format Kimi Linear checkpoint (safetensors, single file or sharded) into our model.

The model is built on the meta device and every parameter is read straight from the file into
its final tensor (dtype and device), one tensor at a time, so loading never holds two copies of
the weights. Accepts the official names and the ones transformers' `save_pretrained` writes.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import KimiLinearConfig
from .model import KimiLinearForCausalLM

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
KEEP_FP32 = ("A_log", "dt_bias", "e_score_correction_bias")  # tiny, and read in fp32 by the math anyway
EXPERT_NAME = re.compile(r"^(model\.layers\.\d+\.block_sparse_moe\.experts)\.(\d+)\.(w[123])\.weight$")
DENSE_AS_MOE = re.compile(r"^(model\.layers\.\d+)\.block_sparse_moe\.((?:gate|up|down)_proj\.weight)$")


class WeightLoadError(ValueError):
    """A checkpoint that does not match the config, with the tensors at fault named."""


@dataclass(frozen=True)
class StoredTensor:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


def read_safetensors_index(path: Path) -> dict[str, StoredTensor]:
    """Every tensor's file, dtype, shape and byte range, from the headers alone."""
    index_file = path / "model.safetensors.index.json"
    if index_file.is_file():
        weight_map = json.loads(index_file.read_text())["weight_map"]
        files = sorted({path / name for name in weight_map.values()})
    elif (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        raise WeightLoadError(f"no safetensors weights in {path} (expected model.safetensors or an index)")
    tensors: dict[str, StoredTensor] = {}
    for file in files:
        if not file.is_file():
            raise WeightLoadError(f"shard {file.name} listed in the index is missing from {path}")
        with file.open("rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
        base = 8 + header_len
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] not in SAFETENSORS_DTYPES:
                raise WeightLoadError(f"tensor {name} has unsupported dtype {info['dtype']}")
            start, end = info["data_offsets"]
            tensors[name] = StoredTensor(file, SAFETENSORS_DTYPES[info["dtype"]], tuple(info["shape"]),
                                         base + start, base + end)
    return tensors


def _target_name(name: str) -> tuple[str, int | None]:
    """Our parameter for a checkpoint tensor, and the expert row it fills (None for whole tensors)."""
    if m := EXPERT_NAME.match(name):
        return f"{m.group(1)}.{m.group(3)}", int(m.group(2))
    if m := DENSE_AS_MOE.match(name):
        return f"{m.group(1)}.mlp.{m.group(2)}", None
    return name, None


def _read_into(dest: torch.Tensor, stored: StoredTensor, handle) -> None:
    """Fill dest from the file: directly when dtype and device match, else via one temporary."""
    direct = dest.device.type == "cpu" and dest.dtype == stored.dtype and dest.is_contiguous()
    buffer = dest if direct else torch.empty(stored.shape, dtype=stored.dtype)
    handle.seek(stored.start)
    raw = buffer.reshape(-1).view(torch.uint8).numpy()
    if handle.readinto(memoryview(raw)) != stored.end - stored.start:
        raise WeightLoadError(f"file {stored.file.name} is truncated")
    if not direct:
        dest.copy_(buffer.view(dest.shape))


def load_model(path: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> KimiLinearForCausalLM:
    """Build the model from `path/config.json` and load its safetensors weights."""
    path = Path(path)
    config = KimiLinearConfig.from_pretrained(path)
    stored = read_safetensors_index(path)
    with torch.device("meta"):
        model = KimiLinearForCausalLM(config)
        tied = config.tie_word_embeddings and "lm_head.weight" not in stored
        if config.tie_word_embeddings and not tied:
            # an explicit lm_head in the checkpoint wins over the tie flag, as transformers computes it
            model.lm_head.weight = nn.Parameter(torch.empty_like(model.lm_head.weight))
    params = dict(model.named_parameters(remove_duplicate=True))
    sources: dict[str, list[tuple[int | None, str]]] = {name: [] for name in params}
    unexpected = []
    for name in stored:
        target, row = _target_name(name)
        if target in sources:
            sources[target].append((row, name))
        else:
            unexpected.append(name)
    missing = [n for n, s in sources.items() if not s and not (tied and n == "lm_head.weight")]
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(sorted(missing)[:20])}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(sorted(unexpected)[:20])}")
    for target, srcs in sources.items():
        expected = tuple(params[target].shape)
        for row, name in srcs:
            want = expected[1:] if row is not None else expected
            if stored[name].shape != want:
                problems.append(f"tensor {name} has shape {list(stored[name].shape)}, expected {list(want)}")
        rows = sorted(r for r, _ in srcs if r is not None)
        if rows and rows != list(range(expected[0])):
            problems.append(f"{target}: expected experts 0..{expected[0] - 1}, checkpoint has {len(rows)}")
    if problems:
        raise WeightLoadError(f"checkpoint {path} does not match its config: " + "; ".join(problems))

    handles = {}
    try:
        for target, srcs in sources.items():
            if not srcs:
                continue
            keep = torch.float32 if target.endswith(KEEP_FP32) else dtype
            tensor = torch.empty(params[target].shape, dtype=keep, device=device)
            for row, name in srcs:
                info = stored[name]
                handle = handles.get(info.file) or handles.setdefault(info.file, info.file.open("rb"))
                _read_into(tensor if row is None else tensor[row], info, handle)
            _set_parameter(model, target, tensor)
    finally:
        for handle in handles.values():
            handle.close()
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()


def _set_parameter(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = model.get_submodule(owner_name)
    owner._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
