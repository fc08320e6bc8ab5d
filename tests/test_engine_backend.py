"""EngineBackend: conversations as engine sessions in the Kimi chat format, forks that share state."""

from __future__ import annotations

import asyncio

import pytest
import torch
from model_support import write_chat_checkpoint, write_tiny_checkpoint

from kimi_swarm.backend.chat.chat_format import GENERATION_PROMPT, render
from kimi_swarm.backend.chat.conversation import ReplyOptions
from kimi_swarm.backend.chat.engine_backend import EngineBackend
from kimi_swarm.backend.chat.messages import Message, ToolSpec

TOOLS = [ToolSpec(name="search", description="Search the web.",
                  parameters={"type": "object", "properties": {"query": {"type": "string"}}})]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_chat_checkpoint(tmp_path_factory.mktemp("chat-ckpt"), layers="KKKM", seed=5)


@pytest.fixture
async def backend(checkpoint):
    backend = EngineBackend.from_pretrained(checkpoint, device="cpu", max_sessions=16, memory=32 << 20,
                                            page_size=32)
    yield backend
    await backend.aclose()


async def test_session_holds_exactly_the_rendered_transcript(backend):
    tokenizer = backend.engine.tokenizer
    messages = [Message(role="system", content="Be brief."), Message(role="user", content="Find <|im_end|> X")]
    conv = await backend.open(messages, TOOLS)
    opening = render(messages, TOOLS, add_generation_prompt=False)
    assert conv.session.token_ids == tokenizer.encode(opening)
    # untrusted text that spells a special token stays plain text
    user_turn = tokenizer.encode(render(messages[1:], add_generation_prompt=False, default_system=False))
    assert user_turn.count(tokenizer.special_ids["<|im_end|>"]) == 1

    reply = await conv.reply(ReplyOptions(max_tokens=6))
    assert reply.completion_tokens >= 1 and reply.prompt_tokens == len(tokenizer.encode(opening + GENERATION_PROMPT))
    assert reply.finish_reason in ("stop", "length", "tool_calls")
    assert conv.session.token_ids[-1] == tokenizer.special_ids["<|im_end|>"]

    result = Message(role="tool", tool_call_id="functions.search:0", content="nothing found")
    before = conv.session.token_ids
    await conv.add([result])
    added = tokenizer.encode(render([result], add_generation_prompt=False, default_system=False))
    assert conv.session.token_ids == before + added
    assert [m.role for m in conv.messages] == ["system", "user", "assistant", "tool"]
    conv.close()


async def test_forks_continue_from_the_same_point(backend):
    conv = await backend.open([Message(role="user", content="Compare A and B.")], TOOLS)
    children = conv.fork(3)
    tasks = [Message(role="tool", tool_call_id="functions.spawn_agents:0", content=f"task {i}") for i in range(3)]
    await asyncio.gather(*(c.add([t]) for c, t in zip(children, tasks)))
    replies = await asyncio.gather(*(c.reply(ReplyOptions(max_tokens=5)) for c in children))
    fresh = await backend.open([Message(role="user", content="Compare A and B."), tasks[1]], TOOLS)
    assert (await fresh.reply(ReplyOptions(max_tokens=5))).content == replies[1].content
    assert all(len(c.messages) == 3 for c in children) and len(conv.messages) == 1
    for c in [conv, fresh, *children]:
        c.close()
    await backend.engine.drain()
    assert backend.engine.stats()["used_slots"] == 0


def test_engine_without_tokenizer_is_refused(tmp_path):
    from kimi_swarm.backend import Engine
    write_tiny_checkpoint(tmp_path, layers="KM", vocab=300)
    engine = Engine.from_pretrained(tmp_path, max_sessions=2, memory=8 << 20)
    with pytest.raises(ValueError, match="no tokenizer"):
        EngineBackend(engine)


async def test_bfloat16_on_the_cpu_keeps_the_greedy_reply_of_float32(checkpoint):
    """`dtype='bfloat16'` runs the engine's weights in bf16 on the CPU (the checkpoint's own precision; the
    few the model keeps in fp32 stay so); a short greedy reply of the tiny model stays that of the fp32 run."""
    messages = [Message(role="user", content="Compare A and B.")]
    replies = {}
    for dtype in ("float32", "bfloat16"):
        backend = EngineBackend.from_pretrained(checkpoint, device="cpu", dtype=dtype, max_sessions=4,
                                                memory=32 << 20, page_size=32)
        assert max(backend.engine.model.parameters(), key=torch.Tensor.numel).dtype == getattr(torch, dtype)
        conv = await backend.open(messages, TOOLS)
        replies[dtype] = await conv.reply(ReplyOptions(max_tokens=4))
        conv.close()
        await backend.aclose()
    assert replies["bfloat16"].completion_tokens >= 1
    assert replies["bfloat16"].content == replies["float32"].content


def test_unknown_device_and_dtype_are_named(checkpoint):
    with pytest.raises(ValueError, match="unknown dtype 'float64'; use one of auto, float32, bfloat16, float16"):
        EngineBackend.from_pretrained(checkpoint, device="cpu", dtype="float64")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        EngineBackend.from_pretrained(checkpoint, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is available"):
            EngineBackend.from_pretrained(checkpoint, device="cuda")
