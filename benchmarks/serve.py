"""`swarm serve` under N concurrent streaming clients that share one long prefix, prefix reuse on and off.

    .venv/bin/python benchmarks/serve.py                                        # CPU, default model, 20 x 2K
    .venv/bin/python benchmarks/serve.py --device cuda --clients 100 --prefix-tokens 32768
    .venv/bin/python benchmarks/serve.py --overhead-only                        # the server alone, 100 streams

Each client sends a system message (the shared prefix, a generated document of --prefix-tokens tokens) and its own
short question, streams --max-tokens tokens (vLLM's ignore_eos, so every reply has that length) with the official
openai client, and reads usage. The table gives prompt tokens received and computed (received less
prompt_tokens_details.cached_tokens) against the ideal (the prefix once plus every suffix), time to first token
(the first chunk: the server sends it with the first generated token) at p50 and p99, and completion tokens per
second over the wave, against the time to first token of one request alone on an idle server (its prefix
prefilled once). Targets: with reuse, computed <= 1.05 x ideal, without, the prefix N times; on the GPU, time
to first token of all N <= 1.5x one prefix prefill with reuse.

The overhead row replaces the engine at the server's engine boundary with a generator that answers at once, runs
the server in its own process, and divides the CPU time that process used by the requests served with
--overhead-streams streams in flight. Target: <= 2 ms per request at 100 streams.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import openai

from kimi_swarm.backend import Engine, Message, SamplingParams, default_model_path, load_tokenizer
from kimi_swarm.backend.chat.chat_format import render_turns
from kimi_swarm.serve.app import create_app
from kimi_swarm.serve.generator import EngineGenerator
from kimi_swarm.serve.server import ServerThread, bind, serve, url_of

MODEL = "bench"
INSTANT_REPLY = [f"word{n} " for n in range(16)]


def shared_prefix(tokenizer, tokens: int, city: str = "Riton") -> str:
    """A document of about `tokens` tokens."""
    sentences, text = 0, ""
    while len(tokenizer.encode(text)) < tokens:
        text += " ".join(f"Record {sentences + n}: the city of {city} counted {(sentences + n) * 37 % 1000} "
                         "houses that year." for n in range(20)) + " "
        sentences += 20
    ids = tokenizer.encode(text)[:tokens]
    return tokenizer.decode(ids)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def one_client(api: openai.AsyncOpenAI, messages: list[dict], max_tokens: int) -> tuple[float, object]:
    """(seconds to the first chunk, usage) of one streamed request."""
    started, first = time.perf_counter(), None
    usage = None
    stream = await api.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    async for chunk in stream:
        if first is None:
            first = time.perf_counter() - started
        usage = chunk.usage or usage
    return first, usage


async def wave(url: str, prefix: str, clients: int, max_tokens: int) -> dict[str, float]:
    api = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=3600)
    requests = [[{"role": "system", "content": prefix},
                 {"role": "user", "content": f"Client {n}: how many houses did Riton count in record {n}?"}]
                for n in range(clients)]
    started = time.perf_counter()
    results = await asyncio.gather(*(one_client(api, messages, max_tokens) for messages in requests))
    wall = time.perf_counter() - started
    await api.close()
    ttfts = [ttft for ttft, _ in results]
    usages = [usage for _, usage in results]
    return {"received": sum(u.prompt_tokens for u in usages),
            "computed": sum(u.prompt_tokens - u.prompt_tokens_details.cached_tokens for u in usages),
            "completion": sum(u.completion_tokens for u in usages), "wall": wall,
            "ttft_p50": percentile(ttfts, 0.5), "ttft_p99": percentile(ttfts, 0.99),
            "min_prompt": min(u.prompt_tokens for u in usages)}


def model_label(path: Path) -> str:
    return "embedded default" if path.resolve() == default_model_path() else path.name


def model_rows(args: argparse.Namespace) -> None:
    tokenizer = load_tokenizer(args.model)
    prefix = shared_prefix(tokenizer, args.prefix_tokens)
    other = shared_prefix(tokenizer, args.prefix_tokens, city="Quun")
    print(f"# swarm serve, {args.clients} clients x (shared {args.prefix_tokens}-token prefix + own question), "
          f"{args.max_tokens} tokens each; model {model_label(args.model)}, device {args.device}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"{'prefix reuse':<13}{'received':>10}{'computed':>10}{'ideal':>8}{'computed/ideal':>16}"
          f"{'TTFT p50 s':>12}{'TTFT p99 s':>12}{'tok/s':>8}{'wall s':>8}")
    alone = None
    for reuse in (True, False):
        engine = Engine.from_pretrained(args.model, device=args.device, dtype=args.dtype)
        generator = EngineGenerator(engine, prefix_reuse=reuse)
        shared = len(tokenizer.encode(render_turns([Message(role="system", content=prefix)])[0]))
        try:
            with ServerThread(create_app(generator, model_name=MODEL)) as server:
                # warm-up at full length on another document: compiles and first-call costs stay out of the figures
                asyncio.run(wave(server.url, other, 2, 2))
                if reuse:  # the yardstick: one request alone on an idle server, its prefix prefilled once
                    generator.cache.clear()
                    alone = asyncio.run(wave(server.url, prefix, 1, args.max_tokens))["ttft_p50"]
                generator.cache.clear()
                row = asyncio.run(wave(server.url, prefix, args.clients, args.max_tokens))
        finally:
            generator.shutdown()
        ideal = row["received"] - (args.clients - 1) * shared
        print(f"{'on' if reuse else 'off':<13}{row['received']:>10}{row['computed']:>10}{ideal:>8}"
              f"{row['computed'] / ideal:>16.3f}{row['ttft_p50']:>12.2f}{row['ttft_p99']:>12.2f}"
              f"{row['completion'] / row['wall']:>8.1f}{row['wall']:>8.1f}"
              f"   TTFT p50/p99 = {row['ttft_p50'] / alone:.2f}x/{row['ttft_p99'] / alone:.2f}x one request alone")
    print(f"# one request alone on an idle server (the prefix prefilled once): TTFT {alone:.2f} s")


class InstantStream:
    """A generation that is already done: a few words, at once."""

    def __init__(self, prompt_tokens: int):
        self.prompt_tokens, self.cached_tokens = prompt_tokens, 0
        self.completion_tokens, self.finish_reason = len(INSTANT_REPLY), "stop"

    async def __aiter__(self) -> AsyncIterator[str]:
        for word in INSTANT_REPLY:
            yield word

    def close(self) -> None:
        pass


class InstantGenerator:
    """The server's engine boundary with no model behind it."""

    def __init__(self):
        self.tokenizer = load_tokenizer(default_model_path())
        self.context_tokens = 1 << 20

    async def start(self, segments: Sequence[Sequence[int]], params: SamplingParams) -> InstantStream:
        return InstantStream(sum(map(len, segments)))


def instant_server(ready: multiprocessing.Queue) -> None:
    sock = bind("127.0.0.1", 0)
    ready.put(url_of(sock))
    serve(create_app(InstantGenerator(), model_name=MODEL), sock)


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def overhead_load(url: str, streams: int, per_stream: int) -> float:
    """Seconds for `streams` clients to stream `per_stream` requests each, one after another."""
    api = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
    messages = [{"role": "system", "content": "You answer briefly. " * 20}, {"role": "user", "content": "Hello?"}]

    async def client() -> None:
        for _ in range(per_stream):
            await one_client(api, messages, 16)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(streams)))
    await api.close()
    return time.perf_counter() - started


def overhead_row(args: argparse.Namespace) -> None:
    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    server = context.Process(target=instant_server, args=(ready,), daemon=True)
    server.start()
    try:
        url = ready.get(timeout=120)
        asyncio.run(overhead_load(url, 4, 5))  # warm-up
        before = cpu_seconds(server.pid)
        wall = asyncio.run(overhead_load(url, args.overhead_streams, args.overhead_requests))
        used = cpu_seconds(server.pid) - before
    finally:
        server.terminate()
        server.join()
    requests = args.overhead_streams * args.overhead_requests
    print(f"# server overhead, instant generator, {args.overhead_streams} concurrent streams, {requests} requests: "
          f"{used / requests * 1000:.2f} ms server CPU per request ({requests / wall:.0f} requests/s; clients share "
          "the machine)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--prefix-tokens", type=int, default=2048)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--overhead-streams", type=int, default=100)
    parser.add_argument("--overhead-requests", type=int, default=10, help="requests per stream, one after another")
    parser.add_argument("--overhead-only", action="store_true")
    args = parser.parse_args()
    if not args.overhead_only:
        model_rows(args)
    overhead_row(args)


if __name__ == "__main__":
    main()
