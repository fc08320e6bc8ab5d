"""The in-process engine: sessions over one model, advanced together by a worker thread.

Async callers enqueue commands (open, fork, extend/generate, close); one worker thread applies
them in order and runs the model, so the event loop never waits on compute. Commands keep their
order, which is what makes `fork` synchronous and cheap: the children are materialised (slot
copied, pages shared) before anything queued after them can move the parent.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import Any

import torch

from ..model.model import KimiLinearForCausalLM
from ..model.tokenizer import Tokenizer, load_tokenizer
from ..model.weights import load_model
from .block_manager import BlockManager
from .bridge import Waiter
from .devices import resolve_device, resolve_dtype
from .errors import CacheCapacityError, EngineCrashedError, SessionClosedError
from .generation import Generation
from .model_runner import ModelRunner
from .sampling import SamplingParams
from .scheduler import Job, Scheduler
from .sequence import Sequence
from .session import Session
from .speculation import lookup_draft
from .state_cache import StateCache

STALL_SECONDS = 2.0
CPU_SPECULATIVE_TOKENS = 8
PREFILL_CHUNK = {"cpu": 1024, "cuda": 2048}
"""Tokens of one session per prefill forward. The CPU is dispatch-bound, so bigger chunks pay there
(benchmarks/history/engine.md has the measurements)."""
PREFILL_TOKENS = {"cuda": 8192}
"""Tokens of all sessions in one prefill forward (the chunk where not named): on the GPU a forward of a few
hundred tokens reads every expert's weights for little work, so forks' prompts fill one forward together; a
bigger forward would stall running decodes for longer."""
BATCHED_PREFILL_WIDTH = {"cpu": 64}
"""The widest prefill forward that several sessions share (Scheduler.next_prefill); none on CUDA. On the CPU a
forward of several forks' rows runs the chunked KDA and MLA per row, and from about 64 tokens a row it costs more
than the rows one after another (benchmarks/history/quality.md, one-row CPU prefill)."""
CPU_DEFAULT_FRACTION = 0.25
CUDA_DEFAULT_FRACTION = 0.9


def cache_budget_bytes(memory: int | float | None, device: torch.device) -> int:
    """Bytes for states and cache: an int is bytes, a float a fraction of free device memory (RAM on CPU)."""
    if isinstance(memory, int):
        return memory
    if device.type == "cuda":
        available = torch.cuda.mem_get_info(device)[0]
        fraction = CUDA_DEFAULT_FRACTION if memory is None else memory
    else:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        fraction = CPU_DEFAULT_FRACTION if memory is None else memory
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"memory fraction must be in (0, 1], got {fraction}")
    return int(available * fraction)


class Engine:
    """Sessions over one model: prefill once, fork at any token, decode every active session in one batch."""

    def __init__(self, model: KimiLinearForCausalLM, tokenizer: Tokenizer | None = None, *,
                 max_sessions: int = 128, memory: int | float | None = None, page_size: int = 64,
                 prefill_chunk: int | None = None, prefill_tokens: int | None = None,
                 batched_prefill_width: int | None = None, max_batch: int = 256,
                 shared_prefix_attention: bool = True, expand_shared_prefix: bool | None = None,
                 cuda_graphs: bool = True, speculative_tokens: int | None = None):
        self.model = model
        self.config = model.config
        self.tokenizer = tokenizer
        self.cache = StateCache.from_budget(
            self.config, memory_bytes=cache_budget_bytes(memory, model.device), max_sessions=max_sessions,
            page_size=page_size, device=model.device, dtype=model.dtype)
        self.blocks = BlockManager(self.cache)
        self.runner = ModelRunner(model, self.cache, shared_prefix_attention=shared_prefix_attention,
                                  expand_shared_prefix=expand_shared_prefix, cuda_graphs=cuda_graphs)
        if prefill_chunk is None:
            prefill_chunk = PREFILL_CHUNK.get(model.device.type, PREFILL_CHUNK["cuda"])
        if prefill_tokens is None:
            prefill_tokens = max(PREFILL_TOKENS.get(model.device.type, prefill_chunk), prefill_chunk)
        if batched_prefill_width is None:
            batched_prefill_width = BATCHED_PREFILL_WIDTH.get(model.device.type)
        self.scheduler = Scheduler(self.blocks, prefill_chunk, max_batch, batched_prefill_width, prefill_tokens)
        self.stop_ids = tokenizer.eos_token_ids if tokenizer is not None else self.config.eos_token_ids
        if speculative_tokens is None:
            speculative_tokens = CPU_SPECULATIVE_TOKENS if model.device.type == "cpu" else 0
        if speculative_tokens < 0:
            raise ValueError(f"speculative_tokens must be >= 0, got {speculative_tokens}")
        self.speculative_tokens = speculative_tokens
        """Prompt-lookup draft length for a lone greedy generation (engine/speculation.py); 0 turns it off.
        On by default on CPU, where checking several tokens costs about one decode step."""
        self.vocab_limit = min(self.config.vocab_size, tokenizer.vocab_size if tokenizer else self.config.vocab_size)
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._commands: deque[tuple] = deque()
        self._admissions: deque[tuple[Sequence | None, Sequence]] = deque()
        self._barriers: list[Waiter] = []
        self.decode_steps: deque[tuple[int, float]] = deque(maxlen=100_000)
        """(batch size, seconds) of recent decode steps, for benchmarks and live displays."""
        self.prefill_forwards: deque[tuple[int, int]] = deque(maxlen=100_000)
        """(sessions, tokens each) of recent prefill forwards: how well prompts were batched."""
        self.speculative_steps: deque[tuple[int, int, float]] = deque(maxlen=100_000)
        """(draft tokens, tokens kept, seconds) of recent speculative steps (_speculate)."""
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._crash: EngineCrashedError | None = None

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "auto",
                        dtype: torch.dtype | str | None = "auto", quantization: str | None = None,
                        **options: Any) -> Engine:
        """Load a checkpoint directory (config.json, safetensors, tokenizer files when present). `device`
        'auto' is a GPU when there is one; `dtype` 'auto' is bfloat16 on a GPU and float32 on the CPU.
        `quantization` "fp8" quantises the linear and expert weights while loading (backend/model/fp8.py)."""
        path, device = Path(path), resolve_device(device)
        model = load_model(path, device=device, dtype=resolve_dtype(dtype, device), quantization=quantization)
        has_tokenizer = (path / "tiktoken.model").is_file() or (path / "tokenizer_config.json").is_file()
        tokenizer = load_tokenizer(path, embedding_rows=model.config.vocab_size) if has_tokenizer else None
        return cls(model, tokenizer, **options)

    def encode(self, prompt: str | Seq[int]) -> list[int]:
        """Token ids of a text or id prompt, checked against the vocabulary."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this engine has no tokenizer: pass token ids instead of text")
            return self.tokenizer.encode(prompt)
        ids = [int(i) for i in prompt]
        bad = [i for i in ids if not 0 <= i < self.vocab_limit]
        if bad:
            raise ValueError(f"token ids out of range [0, {self.vocab_limit}): {bad[:5]}")
        return ids

    async def session(self, prompt: str | Seq[int]) -> Session:
        """A new session holding `prompt`, prefilled (waits for a free slot and pages if needed)."""
        ids = self.encode(prompt)
        if not ids:
            raise ValueError("a session needs a non-empty prompt")
        self._check_fits(len(ids))
        seq = Sequence(seq_id=next(self._ids))
        job = Job(seq, Waiter(asyncio.get_running_loop()), new_tokens=ids)
        self._send(("open", seq, job))
        await self._wait(job)
        return Session(self, seq)

    async def drain(self) -> None:
        """Wait until every command sent so far (forks, closes) has been applied."""
        waiter = Waiter(asyncio.get_running_loop())
        self._send(("barrier", waiter))
        await waiter.future

    def stats(self) -> dict[str, int]:
        """Slots and pages in use. Pages holding an expanded shared prefix are counted apart, not as used: the
        engine gives them back as soon as a session needs them."""
        expanded = self.runner.prefixes.reserved_pages
        return {"used_slots": self.cache.used_slots, "max_sessions": self.cache.max_sessions,
                "used_pages": self.cache.used_pages - expanded, "expanded_prefix_pages": expanded,
                "num_pages": self.cache.num_pages, "page_size": self.cache.page_size}

    def shutdown(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()

    # --- called by Session -------------------------------------------------------------

    def fork_sequence(self, parent: Sequence, n: int) -> list[Sequence]:
        if n < 1:
            raise ValueError(f"fork needs n >= 1, got {n}")
        if n > self.cache.max_sessions - 1:
            raise CacheCapacityError(f"cannot fork {n} sessions: the engine holds at most "
                                     f"{self.cache.max_sessions} (max_sessions)")
        children = [Sequence(seq_id=next(self._ids), token_ids=parent.token_ids.fork()) for _ in range(n)]
        self._send(("fork", parent, children))
        return children

    async def run_job(self, seq: Sequence, new_tokens: list[int], generation: Generation | None,
                      waiter: Waiter) -> object:
        total = len(seq.token_ids) + len(new_tokens) + (generation.params.max_tokens if generation else 0)
        self._check_fits(total)
        job = Job(seq, waiter, new_tokens=new_tokens, generation=generation)
        self._send(("job", job))
        return await self._wait(job)

    def new_generation(self, params: SamplingParams) -> Generation:
        return Generation(params, self.tokenizer, self.stop_ids, self.model.device)

    def close_sequence(self, seq: Sequence) -> None:
        self._send(("close", seq))

    # --- plumbing ----------------------------------------------------------------------

    def _check_fits(self, total_tokens: int) -> None:
        if self.cache.pages_for(total_tokens) > self.cache.num_pages:
            capacity = self.cache.num_pages * self.cache.page_size
            raise CacheCapacityError(f"a session of {total_tokens} tokens can never fit: the cache holds "
                                     f"{capacity} tokens in all; raise the engine's memory budget")

    async def _wait(self, job: Job) -> object:
        try:
            return await job.waiter.future
        except asyncio.CancelledError:
            job.cancelled = True
            self._send(("wake",))
            raise

    def _send(self, command: tuple) -> None:
        with self._cond:
            if self._crash is not None:
                raise self._crash
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="kimi-engine", daemon=True)
                self._thread.start()
            self._commands.append(command)
            self._cond.notify()

    def _loop(self) -> None:
        try:
            self._serve()
        except BaseException as error:  # a bug in the worker must fail every waiter, not leave them hanging
            self._fail_everything(error)
            raise

    def _fail_everything(self, error: BaseException) -> None:
        crash = EngineCrashedError(f"the engine worker stopped: {type(error).__name__}: {error}")
        crash.__cause__ = error
        with self._cond:
            self._crash = crash
            commands, self._commands = list(self._commands), deque()
        waiters = [c[1] for c in commands if c[0] == "barrier"] + self._barriers
        jobs = [c[2] for c in commands if c[0] == "open"] + [c[1] for c in commands if c[0] == "job"]
        for job in [*jobs, *self.scheduler.prefilling, *self.scheduler.decoding]:
            job.waiter.fail(crash)
        for waiter in waiters:
            waiter.fail(crash)

    def _serve(self) -> None:
        idle = True
        while True:
            with self._cond:
                if idle and not self._commands and not self._stopping:
                    decoding = bool(self.scheduler.decoding)
                    woken = self._cond.wait(timeout=STALL_SECONDS if decoding else None)
                    if decoding and not woken:
                        self._fail_newest_stalled()
                if self._stopping:
                    return
                commands, self._commands = list(self._commands), deque()
            for command in commands:
                self._apply(command)
            self.runner.prefixes.release_unshared()
            self._admit()
            for waiter in self._barriers:
                waiter.resolve(None)
            self._barriers.clear()
            idle = not self._step()

    def _apply(self, command: tuple) -> None:
        kind = command[0]
        if kind == "open":
            _, seq, job = command
            self._admissions.append((None, seq))
            self._add_job(job)
        elif kind == "fork":
            _, parent, children = command
            parent.pending_forks += len(children)
            self._admissions.extend((parent, child) for child in children)
        elif kind == "barrier":
            self._barriers.append(command[1])
        elif kind == "job":
            self._add_job(command[1])
        elif kind == "close":
            seq = command[1]
            seq.close_requested = True
            for job in [*self.scheduler.prefilling, *self.scheduler.decoding]:
                if job.seq is seq:
                    job.cancelled = True
                    job.waiter.fail(SessionClosedError(f"session {seq.seq_id} was closed"))
            self._release_if_done(seq)

    def _add_job(self, job: Job) -> None:
        job.seq.token_ids.extend(job.new_tokens)
        self.scheduler.add(job)

    def _admit(self) -> None:
        """Give waiting sessions and forks their slots, in order, while slots are free.

        Consecutive forks of one parent are materialised together (one copy per state pool).
        """
        while self._admissions and self.cache.free_slots:
            parent, seq = self._admissions.popleft()
            if parent is None:
                self.blocks.admit(seq)
                self._release_if_done(seq)
                continue
            children = [seq]
            while (self._admissions and self._admissions[0][0] is parent
                   and len(children) < len(self.cache.free_slots)):
                children.append(self._admissions.popleft()[1])
            self.blocks.fork_into(parent, children)
            parent.pending_forks -= len(children)
            self._release_if_done(parent)
            for child in children:
                self._release_if_done(child)

    def _release_if_done(self, seq: Sequence) -> None:
        if seq.close_requested and not seq.closed and not seq.pinned:
            if seq.slot >= 0:
                self.blocks.free(seq)
            else:  # closed before admission: it never takes a slot, and its parent no longer waits for it
                seq.closed = True
                parents = [parent for parent, waiting in self._admissions if waiting is seq and parent is not None]
                self._admissions = deque(a for a in self._admissions if a[1] is not seq)
                for parent in parents:
                    parent.pending_forks -= 1
                    self._release_if_done(parent)

    def _step(self) -> bool:
        """One prefill chunk and one decode step, as far as memory allows; False if nothing ran."""
        scheduler = self.scheduler
        scheduler.drop_cancelled()
        self._finish_prefilled()
        progressed = False
        jobs, n = scheduler.next_prefill()
        if not jobs and self.runner.prefixes.reserved_pages and scheduler.prefill_waiting():
            self.runner.prefixes.release()  # the expanded prefix's pages were in the way
            jobs, n = scheduler.next_prefill()
        if jobs:
            try:
                for job in jobs:
                    self.blocks.prepare_append(job.seq, n)
                self.runner.prefill([job.seq for job in jobs], n)
                self.prefill_forwards.append((len(jobs), n))
            except Exception as error:  # a failed forward fails its requests, not the engine
                for job in jobs:
                    self._fail(job, error)
            self._finish_prefilled()
            progressed = True
        batch = scheduler.decode_batch()
        if self.runner.prefixes.reserved_pages and len(batch) < scheduler.runnable_decodes():
            self.runner.prefixes.release()  # the expanded prefix's pages were in the way
            batch = scheduler.decode_batch()
        if batch:
            self._decode(batch)
            progressed = True
        return progressed

    def _finish_prefilled(self) -> None:
        for job in self.scheduler.promote_ready():
            job.waiter.resolve(None)

    def _decode(self, batch: list[Job]) -> None:
        if len(batch) == 1 and self._speculate(batch[0]):
            return
        started = time.perf_counter()
        try:
            for job in batch:
                self._catch_up(job.seq)
                self.blocks.prepare_append(job.seq, 1)
            logits = self.runner.decode([job.seq for job in batch])[:, :self.vocab_limit]
            greedy = logits.argmax(-1).tolist()
            self.decode_steps.append((len(batch), time.perf_counter() - started))
        except Exception as error:  # a failed forward fails its requests, not the engine
            for job in batch:
                self._fail(job, error)
            return
        for job, row, greedy_token in zip(batch, logits, greedy):
            generation = job.generation
            token = greedy_token if generation.greedy else generation.sample(row)
            generation.accept(token)
            job.seq.token_ids.append(token)
            self._deliver(job)

    def _deliver(self, job: Job) -> None:
        """Stream what a decode step added to a generation, and complete it if it finished."""
        generation = job.generation
        job.waiter.push(generation.take_delta())
        if generation.finish_reason is not None:
            self.scheduler.decoding.remove(job)
            job.waiter.resolve(generation.completion())

    def _speculate(self, job: Job) -> bool:
        """Decode a lone greedy generation several tokens at a time from a prompt-lookup draft.

        One forward checks the draft; the model's own choices are kept, up to and including its first
        disagreement, so the output is what plain greedy decoding gives. If fewer tokens are kept than
        were fed, the slot's KDA state is restored and the kept tokens stay pending: the next forward
        (the next draft's check, or `_catch_up`) runs them, so a partly kept draft costs no extra
        forward. False if there is no draft (or no room for it): the caller decodes normally.
        """
        generation, seq = job.generation, job.seq
        room = generation.params.max_tokens - len(generation.token_ids) - 1
        if not (self.speculative_tokens and generation.greedy and room > 0):
            return False
        draft = lookup_draft(seq.token_ids.tolist(), min(self.speculative_tokens, room))
        if not draft or not self.blocks.can_append(seq, seq.num_pending + len(draft)):
            return False
        started, start = time.perf_counter(), seq.num_cached
        try:
            self.blocks.prepare_append(seq, seq.num_pending + len(draft))
            snapshot = self.cache.snapshot_slot(seq.slot)
            chosen = self.runner.verify(seq, draft)[:, :self.vocab_limit].argmax(-1).tolist()
            agreed = next((i for i, (d, c) in enumerate(zip(draft, chosen)) if d != c), len(draft))
            kept = []
            for token in [*draft[:agreed], chosen[agreed]]:
                kept.append(token)
                generation.accept(token)
                if generation.finish_reason is not None:
                    break
            if len(kept) <= len(draft):  # the forward ran tokens that are not kept: undo it
                self.cache.restore_slot(seq.slot, snapshot)
                self.blocks.truncate(seq, start)
            seq.token_ids.extend(kept)
            self.speculative_steps.append((len(draft), len(kept), time.perf_counter() - started))
        except Exception as error:  # a failed forward fails its request, not the engine
            self._fail(job, error)
            return True
        self._deliver(job)
        return True

    def _catch_up(self, seq: Sequence) -> None:
        """Run the tokens a partly kept draft left pending, all but the last one, which a decode step feeds."""
        if seq.num_pending > 1:
            self.blocks.prepare_append(seq, seq.num_pending - 1)
            self.runner.prefill([seq], seq.num_pending - 1)

    def _fail(self, job: Job, error: BaseException) -> None:
        job.cancelled = True
        job.waiter.fail(error)

    def _fail_newest_stalled(self) -> None:
        """Generations hold every page and none can grow: the newest gives way so the rest can finish."""
        if self.scheduler.decoding:
            self._fail(self.scheduler.decoding[-1], CacheCapacityError(
                "cache memory exhausted: no session could continue and none was closed; "
                "close sessions sooner or raise the engine's memory budget"))
