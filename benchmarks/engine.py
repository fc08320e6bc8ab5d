"""Engine benchmark: prefill, fork, batched decode and memory per session, as one table.

    python benchmarks/engine.py                          # CPU, small config
    python benchmarks/engine.py --preset 48b --device cuda --prefix 65536   # GPU, real config
    python benchmarks/engine.py --preset default --batches 1,8,20,32      # the shipped model (CPU path)

Random weights for small and 48b (speed hardly depends on their values; the router bias spreads tokens
over experts, benchmarks/common.py says how); `default` loads the shipped checkpoint, whose trained router
decides which experts a batch touches. Fork time is measured for a short and a
long shared prefix: it must not depend on the prefix length. The wave rows time forks of the long prefix
taking a few tokens each in one forward, as sub-agents do when their tool results arrive together.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import torch
from common import sync

from kimi_swarm.backend import Engine, SamplingParams
from kimi_swarm.backend.engine.state_cache import CacheLayout
from kimi_swarm.backend.model.default_model import default_model_path
from kimi_swarm.backend.model.presets import preset_config, random_model
from kimi_swarm.backend.model.weights import load_model


def random_ids(n: int, vocab: int, seed: int) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


async def time_fork(engine: Engine, prefix_len: int, children: int, vocab: int) -> tuple[float, float]:
    """(median fork ms for `children` forks, prefill seconds of the prefix)."""
    start = time.perf_counter()
    parent = await engine.session(random_ids(prefix_len, vocab, prefix_len))
    prefill_s = time.perf_counter() - start
    times = []
    for _ in range(5):
        await engine.drain()
        start = time.perf_counter()
        forks = parent.fork(children)
        await engine.drain()
        sync(engine.model.device)
        times.append(time.perf_counter() - start)
        for f in forks:
            f.close()
    parent.close()
    await engine.drain()
    return statistics.median(times) * 1e3, prefill_s


async def time_decode(engine: Engine, batch: int, prefix_len: int, steps: int, vocab: int) -> float:
    """Seconds per decode step with `batch` forks of one prefix generating together. Each fork first takes
    8 tokens of its own: forks that stayed alike would decode the same token in every row, which routes every
    row to the same experts and flatters the MoE (agents' rows differ)."""
    parent = await engine.session(random_ids(prefix_len, vocab, 1))
    forks = parent.fork(batch)
    await asyncio.gather(*(f.extend(random_ids(8, vocab, 100 + i)) for i, f in enumerate(forks)))
    params = SamplingParams(max_tokens=steps, stop_token_ids=[])
    warm = SamplingParams(max_tokens=2, stop_token_ids=[])
    await asyncio.gather(*(f.generate(warm) for f in forks))
    start = time.perf_counter()
    await asyncio.gather(*(f.generate(params) for f in forks))
    elapsed = time.perf_counter() - start
    for f in [parent, *forks]:
        f.close()
    await engine.drain()
    return elapsed / steps


async def time_wave(engine: Engine, prefix_len: int, children: int, private: int, widths: list[int],
                    vocab: int, repeats: int = 3) -> dict[int, float]:
    """Median ms for `children` forks of one prefix, each holding `private` tokens of its own, to take
    `width` more tokens each: the forward a wave of sub-agents finishing a tool call together runs."""
    parent = await engine.session(random_ids(prefix_len, vocab, 2))
    forks = parent.fork(children)
    await asyncio.gather(*(f.extend(random_ids(private, vocab, 10 + i)) for i, f in enumerate(forks)))
    medians = {}
    for width in widths:
        times = []
        for repeat in range(repeats):
            tails = [random_ids(width, vocab, 1000 * repeat + i) for i in range(children)]
            start = time.perf_counter()
            await asyncio.gather(*(f.extend(tail) for f, tail in zip(forks, tails)))
            sync(engine.model.device)
            times.append(time.perf_counter() - start)
        medians[width] = statistics.median(times) * 1e3
    for f in [parent, *forks]:
        f.close()
    await engine.drain()
    return medians


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small",
                        help="small | 48b (random weights) | default (the shipped checkpoint, trained routing)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prefix", type=int, default=None, help="long shared prefix for the fork timing")
    parser.add_argument("--decode-prefix", type=int, default=256)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batches", default="1,8,32,100")
    parser.add_argument("--memory-gib", type=float, default=None, help="engine cache budget")
    parser.add_argument("--wave-forks", type=int, default=27,
                        help="forks in the wave timing (a 20-row table spawned 27 sub-agents)")
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.preset == "default":
        model = load_model(default_model_path(), device=device, dtype=dtype)
        config = model.config
    else:
        config = preset_config(args.preset)
        model = random_model(config, device, dtype)
    long_prefix = args.prefix or (65536 if device.type == "cuda" else 4096)
    memory = int(args.memory_gib * 2**30) if args.memory_gib else (None if device.type == "cuda" else 2 << 30)
    engine = Engine(model, None, max_sessions=128, memory=memory, page_size=64, prefill_chunk=4096,
                    speculative_tokens=0)  # plain decode steps: random ids give no drafts anyway
    vocab = config.vocab_size
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"# engine benchmark: preset={args.preset} device={name} dtype={dtype}", flush=True)

    rows: list[tuple[str, str]] = []
    short_ms, _ = await time_fork(engine, 1024, 100, vocab)
    long_ms, prefill_s = await time_fork(engine, long_prefix, 100, vocab)
    rows.append((f"prefill {long_prefix} tokens", f"{long_prefix / prefill_s:,.0f} tok/s ({prefill_s:.2f} s)"))
    rows.append(("fork 100 children, 1K prefix", f"{short_ms:.2f} ms"))
    rows.append((f"fork 100 children, {long_prefix // 1024}K prefix", f"{long_ms:.2f} ms"))
    step_1 = None
    for batch in (int(b) for b in args.batches.split(",")):
        step = await time_decode(engine, batch, args.decode_prefix, args.steps, vocab)
        step_1 = step_1 or step
        rows.append((f"decode batch {batch}", f"{batch / step:,.1f} tok/s ({step * 1e3:.1f} ms/step, "
                                              f"{batch / step * step_1:.1f}x batch 1)"))
        if batch == 100:
            rows.append(("fork 100 vs one decode step of 100", f"{long_ms / (step * 1e3):.2f}x"))
    wave = await time_wave(engine, long_prefix, args.wave_forks, 1200, [2, 8], vocab)
    for width, ms in wave.items():
        rows.append((f"wave: {args.wave_forks} forks (1,200 own tokens) take {width} tokens each", f"{ms:.0f} ms"))
    layout = CacheLayout.for_config(config, dtype, 64)
    rows.append(("KDA state per session", f"{layout.slot_bytes / 2**20:.2f} MiB"))
    rows.append(("latent cache per token", f"{layout.page_bytes / 64 / 1024:.1f} KiB"))
    engine.shutdown()
    width = max(len(r[0]) for r in rows)
    print("\n| measurement | value |\n|---|---|")
    for label, value in rows:
        print(f"| {label:<{width}} | {value} |")


if __name__ == "__main__":
    asyncio.run(main())
