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

from kimi_swarm.kernels.fp8_reference import FP8, quantize_rows

from .config import KimiLinearConfig
from .fp8 import check_quantization, quantize_fp8_
from .model import KimiLinearForCausalLM

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
KEEP_FP32 = ("A_log", "dt_bias", "e_score_correction_bias")  # tiny, and read in fp32 by the math anyway
HELD_IN_FP32 = (*KEEP_FP32, "block_sparse_moe.gate.weight")
"""Tensors a loaded model holds in fp32 whatever its dtype: the router's weight too, which the router reads in
fp32 (as transformers does), so it is not cast on every call. Checkpoints store it in the model's dtype."""
EXPERT_NAME = re.compile(r"^(model\.layers\.\d+\.block_sparse_moe\.experts)\.(\d+)\.(w[123])\.weight$")
EXPERT_PARTS = {"w1": ("w13", 0), "w3": ("w13", 1), "w2": ("w2", None)}
"""Where a per-expert tensor goes in StackedExperts: w1 (gate) and w3 (up) are the halves of w13."""
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


Part = tuple[int, int | None] | None
"""Which piece of our parameter a checkpoint tensor fills: (expert row, half of it or None for all of it), or
None for the whole parameter."""


def _target_name(name: str) -> tuple[str, Part]:
    """Our parameter for a checkpoint tensor, and the piece of it the tensor fills."""
    if m := EXPERT_NAME.match(name):
        target, half = EXPERT_PARTS[m.group(3)]
        return f"{m.group(1)}.{target}", (int(m.group(2)), half)
    if m := DENSE_AS_MOE.match(name):
        return f"{m.group(1)}.mlp.{m.group(2)}", None
    return name, None


def _piece(tensor: torch.Tensor, part: Part) -> torch.Tensor:
    if part is None:
        return tensor
    row, half = part
    return tensor[row] if half is None else tensor[row].chunk(2)[half]


def _read_into(dest: torch.Tensor, stored: StoredTensor, handle, scale: torch.Tensor | None = None) -> None:
    """Fill dest from the file: directly when dtype and device match, else via one temporary; an FP8 dest is
    quantised from the temporary, row by row, its scales written into `scale`."""
    direct = dest.device.type == "cpu" and dest.dtype == stored.dtype and dest.is_contiguous()
    buffer = dest if direct else torch.empty(stored.shape, dtype=stored.dtype)
    handle.seek(stored.start)
    raw = buffer.reshape(-1).view(torch.uint8).numpy()
    if handle.readinto(memoryview(raw)) != stored.end - stored.start:
        raise WeightLoadError(f"file {stored.file.name} is truncated")
    if scale is not None:
        q, row_scales = quantize_rows(buffer.view(dest.shape).to(dest.device))
        dest.copy_(q)
        scale.copy_(row_scales)
    elif not direct:
        dest.copy_(buffer.view(dest.shape))


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               quantization: str | None = None) -> KimiLinearForCausalLM:
    """Build the model from `path/config.json` and load its safetensors weights; with quantization="fp8" the
    linear and expert weights are quantised tensor by tensor as they are read (backend/model/fp8.py)."""
    path = Path(path)
    check_quantization(quantization, torch.device(device))
    config = KimiLinearConfig.from_pretrained(path)
    stored = read_safetensors_index(path)
    with torch.device("meta"):
        model = KimiLinearForCausalLM(config)
        tied = config.tie_word_embeddings and "lm_head.weight" not in stored
        if config.tie_word_embeddings and not tied:
            # an explicit lm_head in the checkpoint wins over the tie flag, as transformers computes it
            model.lm_head.weight = nn.Parameter(torch.empty_like(model.lm_head.weight))
        if quantization is not None:
            quantize_fp8_(model)
    params = dict(model.named_parameters(remove_duplicate=True))
    scales = {f"{name}_scale": name for name, p in params.items() if p.dtype == FP8}
    sources: dict[str, list[tuple[Part, str]]] = {name: [] for name in params}
    unexpected = []
    for name in stored:
        target, part = _target_name(name)
        if target in sources:
            sources[target].append((part, name))
        else:
            unexpected.append(name)
    missing = [n for n, s in sources.items()
               if not s and not (tied and n == "lm_head.weight") and n not in scales]
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(sorted(missing)[:20])}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(sorted(unexpected)[:20])}")
    for target, srcs in sources.items():
        expected = tuple(params[target].shape)
        for part, name in srcs:
            if part is not None and part[0] >= expected[0]:
                problems.append(f"tensor {name} names expert {part[0]}, but the config has {expected[0]}")
                continue
            want = tuple(_piece(torch.empty(expected, device="meta"), part).shape)
            if stored[name].shape != want:
                problems.append(f"tensor {name} has shape {list(stored[name].shape)}, expected {list(want)}")
        for half in {part[1] for part, _ in srcs if part is not None}:
            rows = {part[0] for part, _ in srcs if part is not None and part[1] == half}
            if rows != set(range(expected[0])):
                family = next(name for part, name in srcs if part is not None and part[1] == half)
                family = EXPERT_NAME.sub(r"\1.N.\3.weight", family)
                missing = sorted(set(range(expected[0])) - rows)
                problems.append(f"{family} for N in 0..{expected[0] - 1}: the checkpoint has {len(rows)}, "
                                f"missing N = {missing[:10]}")
    if problems:
        raise WeightLoadError(f"checkpoint {path} does not match its config: " + "; ".join(problems))

    handles = {}
    try:
        for target, srcs in sources.items():
            if not srcs:
                continue
            fp8 = params[target].dtype == FP8
            keep = FP8 if fp8 else torch.float32 if target.endswith(HELD_IN_FP32) else dtype
            tensor = torch.empty(params[target].shape, dtype=keep, device=device)
            scale = torch.empty(params[target].shape[:-1], dtype=torch.float32, device=device) if fp8 else None
            for part, name in srcs:
                info = stored[name]
                handle = handles.get(info.file) or handles.setdefault(info.file, info.file.open("rb"))
                _read_into(_piece(tensor, part), info, handle, None if scale is None else _piece(scale, part))
            _set_parameter(model, target, tensor)
            if scale is not None:
                _set_parameter(model, f"{target}_scale", scale)
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
