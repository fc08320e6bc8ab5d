"""`swarm serve` against real clients: the official openai package, and `swarm run --base-url`, on loopback.

A tiny random checkpoint (byte tokenizer) checks the protocol, the errors and the prefix cache's arithmetic; the
embedded default model, which is trained to call tools, checks tool calls streamed and whole, and the README's
task end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from model_support import write_chat_checkpoint
from typer.testing import CliRunner

from kimi_swarm import prompts
from kimi_swarm.backend import Engine
from kimi_swarm.backend.chat.chat_format import render_turns
from kimi_swarm.backend.chat.messages import Message
from kimi_swarm.cli import app as cli_app
from kimi_swarm.function_tools import as_tool
from kimi_swarm.launch import trained_tools
from kimi_swarm.serve.app import create_app
from kimi_swarm.serve.generator import EngineGenerator
from kimi_swarm.serve.model import DEFAULT_MODEL_NAME, load_generator
from kimi_swarm.serve.server import ServerThread
from kimi_swarm.tools import Web

TINY = "tiny"
README_TASK = "Compare the founding year of Riton and Quun. Which one was founded most recently?"
"""The task of the README's main job (scripts/main.sh, the quick start's first command)."""
SWARM = str(Path(sys.executable).parent / "swarm")


def tiny_generator(checkpoint: Path, *, prefix_reuse: bool = True, **engine_options) -> EngineGenerator:
    engine_options.setdefault("memory", 64 * 2**20)
    return EngineGenerator(Engine.from_pretrained(checkpoint, device="cpu", **engine_options), prefix_reuse=prefix_reuse)


@contextlib.contextmanager
def served(generator: EngineGenerator, name: str = TINY, **options) -> Iterator[str]:
    try:
        with ServerThread(create_app(generator, model_name=name, **options)) as server:
            yield server.url
    finally:
        generator.shutdown()


def client(url: str, **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, **options)


def chat(system: str, user: str) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def document(topic: str, sentences: int) -> str:
    return " ".join(f"Fact {n} about {topic}: the value is {n * 7 % 13}." for n in range(sentences))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return write_chat_checkpoint(tmp_path_factory.mktemp("tiny"), layers="KKKM", seed=0)


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint) -> Iterator[tuple[str, EngineGenerator]]:
    generator = tiny_generator(tiny_checkpoint)
    with served(generator) as url:
        yield url, generator


@pytest.fixture(scope="module")
def default_model() -> Iterator[tuple[str, EngineGenerator]]:
    generator = load_generator(None, device="cpu", dtype="auto", memory=None, max_sessions=128, prefix_reuse=True)
    with served(generator, DEFAULT_MODEL_NAME) as url:
        yield url, generator


def test_models_chat_and_usage_with_the_openai_client(tiny):
    url, _ = tiny
    api = client(url)
    assert [model.id for model in api.models.list()] == [TINY]
    assert api.models.retrieve(TINY).id == TINY
    messages = chat(document("usage", 20), "Say something.")
    first, again = (api.chat.completions.create(model=TINY, messages=messages, max_tokens=24, temperature=0,
                                                user="someone", metadata={"ignored": "yes"}) for _ in range(2))
    assert first.object == "chat.completion" and first.choices[0].message.role == "assistant"
    assert first.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert first.choices[0].message == again.choices[0].message, "the same greedy request, answered alike"
    usage = first.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens and 0 < usage.completion_tokens <= 24
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert again.usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens - 1, "all but the pending token"


def test_the_second_request_on_a_long_prefix_is_cached_and_answers_as_a_fresh_server(tiny_checkpoint, tiny):
    url, _ = tiny
    prefix = document("reuse", 40)
    question = chat(prefix, "What is fact 3?")
    client(url).chat.completions.create(model=TINY, messages=chat(prefix, "What is fact 1?"), max_tokens=8,
                                        temperature=0)
    warm = client(url).chat.completions.create(model=TINY, messages=question, max_tokens=40, temperature=0)
    assert warm.usage.prompt_tokens_details.cached_tokens >= len(prefix.encode())
    for reuse in (True, False):
        with served(tiny_generator(tiny_checkpoint, prefix_reuse=reuse)) as fresh_url:
            fresh = client(fresh_url).chat.completions.create(model=TINY, messages=question, max_tokens=40,
                                                              temperature=0)
        assert fresh.usage.prompt_tokens_details.cached_tokens == 0
        assert (fresh.choices[0], fresh.usage.completion_tokens) == (warm.choices[0], warm.usage.completion_tokens)


async def test_concurrent_requests_on_one_prefix_prefill_it_once(tiny):
    url, generator = tiny
    prefix = document("concurrency", 60)
    questions = [f"Question {n}: what is fact {n}?" for n in range(6)]
    api = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0)
    replies = await asyncio.gather(*(api.chat.completions.create(
        model=TINY, messages=chat(prefix, q), max_tokens=4, temperature=0) for q in questions))
    await api.close()
    shared = len(generator.tokenizer.encode(render_turns(chat_messages(chat(prefix, "")))[0]))
    suffixes = [reply.usage.prompt_tokens - shared for reply in replies]
    computed = sum(r.usage.prompt_tokens - r.usage.prompt_tokens_details.cached_tokens for r in replies)
    assert sorted(r.usage.prompt_tokens_details.cached_tokens >= shared - 1 for r in replies) == [False] + [True] * 5
    assert computed <= 1.05 * (shared + sum(suffixes)), (computed, shared, suffixes)


def chat_messages(messages: list[dict]) -> list[Message]:
    return [Message(**message) for message in messages]


def test_bad_fields_are_400s_naming_them_and_unknown_fields_are_ignored(tiny):
    url, _ = tiny
    api = client(url)
    ok = dict(model=TINY, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    cases = [
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"temperature": "hot"}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 2}, "n"),
        ({"stop": [""]}, "stop"),
        ({"tools": [{"type": "function", "function": {"name": "a"}}], "tool_choice": {
            "type": "function", "function": {"name": "b"}}}, "tool_choice.function.name"),
        ({"messages": [{"role": "tool", "content": "result"}]}, "messages"),
    ]
    for change, param in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            api.chat.completions.create(**{**ok, **change})
        assert caught.value.body["param"] == param and f"'{param}'" in caught.value.message, change
    with pytest.raises(openai.NotFoundError, match="model_not_found|does not exist"):
        api.chat.completions.create(**{**ok, "model": "gpt-9"})
    raw = httpx.post(f"{url}/chat/completions", content=b"{not json")
    assert raw.status_code == 400 and raw.json()["error"]["message"] == "the request body is not valid JSON"
    accepted = api.chat.completions.create(**ok, frequency_penalty=0.5, logit_bias={"1": 2}, store=False,
                                           extra_body={"some_vendor_field": [1, 2]})
    assert accepted.choices[0].message.role == "assistant"


def test_prompts_over_the_cache_are_413_full_memory_is_503_and_a_disconnect_frees_its_session(tiny_checkpoint):
    page_bytes, slot_bytes = 64 * 40 * 4, 3 * (2 * 16 * 16 * 4 + 3 * 2 * 16 * 3 * 4)  # KKKM tiny layout, fp32
    generator = tiny_generator(tiny_checkpoint, max_sessions=2, memory=3 * slot_bytes + 65 * page_bytes)
    assert generator.context_tokens == 64 * 64
    with served(generator) as url:
        api = client(url)
        with pytest.raises(openai.APIStatusError) as too_long:
            api.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "x" * 5000}])
        assert too_long.value.status_code == 413 and "context" in too_long.value.message
        with pytest.raises(openai.APIStatusError) as too_many:
            api.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "x"}], max_tokens=5000)
        assert too_many.value.status_code == 413

        holding = dict(model=TINY, max_tokens=1000, stream=True, temperature=0, extra_body={"ignore_eos": True})
        with contextlib.ExitStack() as streams:
            for n in range(2):
                stream = streams.enter_context(api.chat.completions.create(
                    **holding, messages=[{"role": "user", "content": f"hold {n}"}]))
                next(iter(stream))
            with pytest.raises(openai.APIStatusError) as full:
                api.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "one more"}],
                                            max_tokens=4)
            assert full.value.status_code == 503 and full.value.response.headers["retry-after"] == "1"
            assert "running requests" in full.value.message
        deadline = time.monotonic() + 10
        while generator.engine.stats()["used_slots"] > generator.cache.snapshot_count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert generator.cache.live_sessions == generator.cache.snapshot_count, "a disconnected stream kept its session"
        assert generator.engine.stats()["used_slots"] == generator.cache.snapshot_count
        after = api.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "one more"}],
                                            max_tokens=4)
        assert after.usage.completion_tokens >= 1

        impatient = client(url, timeout=0.5)  # a whole reply, not streamed, whose client gives up waiting
        with pytest.raises(openai.APITimeoutError):
            impatient.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "long"}],
                                              max_tokens=3000, temperature=0, extra_body={"ignore_eos": True})
        deadline = time.monotonic() + 1.5  # far sooner than its 3,000 tokens take
        while generator.cache.live_sessions > generator.cache.snapshot_count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert generator.cache.live_sessions == generator.cache.snapshot_count, "an abandoned request kept decoding"


def streamed_reply(stream) -> tuple[str, list[tuple[str, str, str]], str, object]:
    content, calls, finish, usage = [], {}, None, None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            content.append(choice.delta.content or "")
            for call in choice.delta.tool_calls or []:
                slot = calls.setdefault(call.index, ["", "", ""])
                slot[0] += call.id or ""
                slot[1] += call.function.name or ""
                slot[2] += call.function.arguments or ""
            finish = choice.finish_reason or finish
    return "".join(content), [tuple(calls[i]) for i in sorted(calls)], finish, usage


def test_the_default_model_calls_tools_whole_and_streamed_alike(default_model):
    url, _ = default_model
    api = client(url)
    specs = [prompts.SPAWN_TOOL] + [as_tool(t).spec for t in trained_tools(Web())]
    tools = [spec.openai_schema() for spec in specs]
    messages = [{"role": m.role, "content": m.content} for m in prompts.orchestrator_messages(README_TASK)]
    request = dict(model=DEFAULT_MODEL_NAME, messages=messages, tools=tools, max_tokens=200, temperature=0)
    whole = api.chat.completions.create(**request)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and "<|" not in choice.message.content
    (call,) = choice.message.tool_calls
    assert (call.id, call.function.name) == ("functions.spawn_agents:0", "spawn_agents")
    assert "Riton" in json.dumps(json.loads(call.function.arguments))

    stream = api.chat.completions.create(**request, stream=True, stream_options={"include_usage": True})
    content, calls, finish, usage = streamed_reply(stream)
    assert (content, finish) == (choice.message.content, "tool_calls")
    assert calls == [(call.id, call.function.name, call.function.arguments)]
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens - 1

    named = api.chat.completions.create(**{**request, "tool_choice": {"type": "function",
                                                                      "function": {"name": "spawn_agents"}}})
    assert [(c.id, c.function.arguments) for c in named.choices[0].message.tool_calls] == [
        (call.id, call.function.arguments)]
    unarmed = api.chat.completions.create(**{**request, "tool_choice": "none", "max_tokens": 30})
    assert unarmed.choices[0].message.tool_calls is None and "<|" not in unarmed.choices[0].message.content

    result = {"role": "tool", "tool_call_id": call.id, "content": "Riton: founded 823. Quun: founded 1789."}
    follow_up = api.chat.completions.create(**{**request, "max_tokens": 1, "messages": [
        *messages, choice.message.model_dump(exclude_none=True), result]})
    computed = follow_up.usage.prompt_tokens - follow_up.usage.prompt_tokens_details.cached_tokens
    new_turn = len(render_turns([Message(**result)], default_system=False)[0].encode())
    assert computed <= new_turn + 1, "the next turn continues from the end of the reply the server generated"


def _answer(result_json: str) -> str:
    """A run's answer with the offline web's address (a free port per run) taken out."""
    return re.sub(r"http://127\.0\.0\.1:\d+/", "http://offline/", json.loads(result_json)["answer"])


@pytest.mark.slow
def test_swarm_run_through_the_server_answers_the_readme_task_as_the_in_process_engine(default_model):
    url, generator = default_model
    runner = CliRunner()
    in_process = runner.invoke(cli_app, ["run", README_TASK, "--json"])
    assert in_process.exit_code == 0, in_process.output
    before = generator.cache.prompt_tokens, generator.cache.cached_tokens
    through = runner.invoke(cli_app, ["run", README_TASK, "--json", "--base-url", url, "--model",
                                      DEFAULT_MODEL_NAME, "--web", "offline"])
    assert through.exit_code == 0, through.output
    assert _answer(through.stdout) == _answer(in_process.stdout) and "Quun" in _answer(in_process.stdout)
    usage = [json.loads(run.stdout)["usage"] for run in (in_process, through)]
    assert [(u["prompt_tokens"], u["completion_tokens"]) for u in usage[:1]] == [
        (u["prompt_tokens"], u["completion_tokens"]) for u in usage[1:]]
    prompt, cached = (now - then for now, then in zip((generator.cache.prompt_tokens, generator.cache.cached_tokens),
                                                       before))
    assert cached > 0.8 * prompt, f"the server computed {prompt - cached} of the run's {prompt} prompt tokens"


def test_swarm_serve_prints_its_url_and_checks_the_api_key(tiny_checkpoint):
    server = subprocess.Popen([SWARM, "serve", "--model", str(tiny_checkpoint), "--port", "0", "--device", "cpu",
                               "--memory", "64MiB", "--api-key", "sesame"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        match = re.fullmatch(r"serving (\S+) at (http://127\.0\.0\.1:\d+/v1)\n", line)
        assert match and match[1] == tiny_checkpoint.name, line + server.stderr.read()
        with pytest.raises(openai.AuthenticationError) as refused:
            client(match[2]).models.list()
        assert refused.value.status_code == 401 and "sesame" not in refused.value.message
        keyed = openai.OpenAI(base_url=match[2], api_key="sesame", max_retries=0)
        assert [model.id for model in keyed.models.list()] == [tiny_checkpoint.name]
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0


async def test_snapshots_are_evicted_least_recently_used_and_give_back_their_slots_and_pages(tiny_checkpoint):
    generator = tiny_generator(tiny_checkpoint, max_sessions=4)
    cache, engine = generator.cache, generator.engine
    try:
        prompts_ = [engine.tokenizer.encode(f"<|im_user|>user<|im_middle|>{document(str(n), 12)}") for n in range(4)]
        for ids in prompts_:
            lease = await cache.open([ids[:100], ids[100:]], max_tokens=8)
            cache.release(lease, keep=True)
            await engine.drain()
            assert cache.live_sessions == engine.stats()["used_slots"] <= 4
        again = await cache.open([prompts_[-1]], max_tokens=8)
        assert again.cached_tokens == len(prompts_[-1]) - 1, "the newest snapshot survived"
        cache.release(again, keep=False)
        oldest = await cache.open([prompts_[0]], max_tokens=8)
        assert oldest.cached_tokens == 0, "the least recently used were evicted"
        cache.release(oldest, keep=False)
        cache.clear()
        await engine.drain()
        assert engine.stats()["used_slots"] == engine.stats()["used_pages"] == cache.live_sessions == 0
    finally:
        generator.shutdown()
