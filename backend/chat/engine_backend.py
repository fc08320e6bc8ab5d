"""The in-process engine as a ChatBackend: conversations are engine sessions in the Kimi chat format.

A conversation's session holds exactly the rendered transcript, so `fork` is a session fork: the
children continue from the same KDA state and share the parent's latent-cache pages, and the
shared context is never prefilled twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..engine.engine import Engine
from ..engine.sampling import SamplingParams
from ..engine.session import Session
from .chat_format import END_OF_TURN, GENERATION_PROMPT, ToolSchemas, parse_assistant, render
from .conversation import ChatBackend, Conversation, Reply, ReplyOptions
from .messages import Message, ToolSpec


class EngineConversation(Conversation):
    def __init__(self, session: Session, messages: list[Message], tools: ToolSchemas):
        self._session = session
        self._messages = messages
        self._tools = tools
        self._end_id = session.engine.tokenizer.special_ids[END_OF_TURN]

    @property
    def messages(self) -> list[Message]:
        return list(self._messages)

    @property
    def session(self) -> Session:
        return self._session

    async def add(self, messages: list[Message]) -> None:
        if messages:
            await self._session.extend(render(messages, add_generation_prompt=False, default_system=False))
            self._messages.extend(messages)

    async def reply(self, options: ReplyOptions) -> Reply:
        await self._session.extend(GENERATION_PROMPT)
        prompt_tokens = self._session.num_tokens
        completion = await self._session.generate(SamplingParams(
            max_tokens=options.max_tokens, temperature=options.temperature, top_p=options.top_p,
            seed=options.seed))
        if completion.token_ids[-1:] != [self._end_id]:
            await self._session.extend(END_OF_TURN)  # keep the transcript well-formed for the next turn
        parsed = parse_assistant(completion.text, self._tools)
        finish = "tool_calls" if parsed.tool_calls else completion.finish_reason
        reply = Reply(content=parsed.content, tool_calls=parsed.tool_calls, finish_reason=finish,
                      prompt_tokens=prompt_tokens, completion_tokens=len(completion.token_ids),
                      malformed=parsed.malformed)
        self._messages.append(reply.as_message())
        return reply

    def fork(self, n: int) -> list[Conversation]:
        return [EngineConversation(child, list(self._messages), self._tools)
                for child in self._session.fork(n)]

    def close(self) -> None:
        self._session.close()



class EngineBackend(ChatBackend):
    name = "engine"

    def __init__(self, engine: Engine):
        if engine.tokenizer is None:
            raise ValueError("the engine has no tokenizer; a chat backend needs one (tiktoken.model or "
                             "a byte-level tokenizer_config.json beside the weights)")
        self.engine = engine

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "auto",
                        dtype: torch.dtype | str | None = "auto", **options: Any) -> EngineBackend:
        """`Engine.from_pretrained` with the same defaults: a GPU when there is one, bfloat16 there and float32 on
        the CPU."""
        return cls(Engine.from_pretrained(path, device=device, dtype=dtype, **options))

    async def open(self, messages: list[Message], tools: list[ToolSpec]) -> Conversation:
        session = await self.engine.session(render(messages, tools or None, add_generation_prompt=False))
        return EngineConversation(session, list(messages), {tool.name: tool.parameters for tool in tools})

    async def aclose(self) -> None:
        self.engine.shutdown()
