"""CUDA graphs of the decode step: one replay runs the whole model for a batch of sessions.

At small batch a decode step is launch-bound: hundreds of small kernels, each costing more to launch
from Python than to run. A graph is captured per (batch bucket, block-table width, shared prefix pages,
expanded prefix rows) once that shape has been seen CAPTURE_AFTER times, and replayed after its static
inputs are refreshed. A batch is padded to its bucket with rows that read and write only the cache's
scratch slot and page, so the padding never touches a session. Captures share one memory pool; each
replay's logits are copied out at once.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from ..model.model import KimiLinearForCausalLM
from .expanded_prefix import ExpandedPrefix
from .paged_context import PagedContext
from .state_cache import StateCache

BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384)
MIN_TABLE_WIDTH = 16
MAX_GRAPHS = 32
CAPTURE_AFTER = 3
"""Steps of one shape run eagerly before it is captured: a capture costs tens of eager steps, and a shape seen
once or twice (forks finishing their prompts at different times, a batch in passing) would pay it for nothing."""


class _CapturedStep:
    """A captured decode step and the static tensors it reads (inputs) and writes (logits)."""

    def __init__(self, batch: int, width: int, device: torch.device):
        self.ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.slots = torch.zeros(batch, dtype=torch.long, device=device)
        self.starts = torch.zeros(batch, dtype=torch.long, device=device)
        self.tables = torch.zeros(batch, width, dtype=torch.int32, device=device)
        self.graph = torch.cuda.CUDAGraph()
        self.logits: torch.Tensor | None = None


class DecodeGraphs:
    def __init__(self, model: KimiLinearForCausalLM, cache: StateCache):
        self.model = model
        self.cache = cache
        self._steps: OrderedDict[tuple[int, int, int, int], _CapturedStep] = OrderedDict()
        self._uses: dict[tuple[int, int, int, int], int] = {}
        self._pool = None
        self.captures = 0
        self.replays = 0

    @staticmethod
    def supported(model: KimiLinearForCausalLM) -> bool:
        """On CUDA in bf16, where the MoE runs grouped GEMMs with no host sync (other dtypes loop on the host)."""
        return model.device.type == "cuda" and model.dtype == torch.bfloat16 and hasattr(torch, "_grouped_mm")

    def decode(self, ids: list[int], slots: torch.Tensor, starts: list[int], tables: torch.Tensor,
               shared_pages: int, expanded: ExpandedPrefix | None) -> torch.Tensor | None:
        """fp32 next-token logits [N, vocab] of one decode step (slots and block tables already on the device),
        or None (the caller runs it eagerly) when N exceeds the largest bucket or the step's shape is not yet
        worth capturing (CAPTURE_AFTER). An expanded prefix is read where the graph was captured: the same
        length is always the same pages."""
        n = len(ids)
        batch = next((b for b in BATCH_BUCKETS if b >= n), None)
        if batch is None:
            return None
        width = tables.shape[1]
        key = (batch, max(MIN_TABLE_WIDTH, 1 << (width - 1).bit_length()), shared_pages,
               expanded.rows if expanded else 0)
        if key not in self._steps:
            self._uses[key] = self._uses.get(key, 0) + 1
            if self._uses[key] < CAPTURE_AFTER:
                return None
            del self._uses[key]
        host = torch.tensor([ids, starts], dtype=torch.long).to(self.model.device, non_blocking=True)
        step = self._steps.get(key) or self._capture(key, expanded)
        self._steps.move_to_end(key)
        step.ids[:n, 0].copy_(host[0])
        step.slots[:n].copy_(slots)
        step.starts[:n].copy_(host[1])
        step.tables[:n, :width].copy_(tables)
        step.tables[:n, width:].zero_()
        self._pad(step, n)
        step.graph.replay()
        self.replays += 1
        return step.logits[:n, 0].clone()

    def _pad(self, step: _CapturedStep, n: int) -> None:
        """Rows n.. decode one token at position 0 of the scratch page, into the scratch slot."""
        step.ids[n:].zero_()
        step.slots[n:].fill_(self.cache.scratch_slot)
        step.starts[n:].zero_()
        step.tables[n:].fill_(self.cache.scratch_page)

    def _capture(self, key: tuple[int, int, int, int], expanded: ExpandedPrefix | None) -> _CapturedStep:
        batch, width, shared_pages, _ = key
        step = _CapturedStep(batch, width, self.model.device)
        self._pad(step, 0)  # the warm-up run executes: all of it goes to the scratch slot and page

        def run() -> torch.Tensor:
            ctx = PagedContext.for_decode(self.cache, step.slots, step.tables, step.starts, shared_pages,
                                                expanded)
            return self.model.forward_unchecked(step.ids, ctx, last_only=True)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            run()  # compiles and tunes the Triton kernels before capture, which must not
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(step.graph, pool=self._pool):
            step.logits = run()
        self._pool = step.graph.pool()
        self._steps[key] = step
        if len(self._steps) > MAX_GRAPHS:
            self._steps.popitem(last=False)
        self.captures += 1
        return step
