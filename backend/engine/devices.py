"""Where and in what the engine runs: one reading of `device` and `dtype` for every entry point."""

from __future__ import annotations

import torch

ENGINE_DTYPES = ("auto", "float32", "bfloat16", "float16")
"""What the engine can run a checkpoint in; 'auto' is bfloat16 on a GPU and float32 on the CPU."""


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' is a GPU when one is present, else the CPU; a named device must exist here."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {str(device)!r}; use auto, cpu, cuda or cuda:N") from None
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"the engine runs on cpu or cuda, not {str(device)!r}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but no CUDA GPU is available here")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r} asked for, but this machine has {torch.cuda.device_count()} GPU(s)")
    return resolved


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """A torch dtype or one of ENGINE_DTYPES; 'auto' (or None) is bfloat16 on a GPU and float32 on the CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is not None and dtype not in ENGINE_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(ENGINE_DTYPES)}")
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)
