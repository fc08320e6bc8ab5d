"""Timing helpers shared by the benchmark scripts (run as scripts: `python benchmarks/NAME.py`)."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cuda_event_median_ms(fn: Callable[[], object], runs: int) -> float:
    """Median milliseconds of `runs` calls, each timed by CUDA events around it alone."""
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)
