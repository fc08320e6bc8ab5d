"""Record every model exchange of a run to JSONL, and replay it deterministically.

Each reply is filed under a hash of everything that produced it: the declared tools, the whole
transcript and the reply options. Replay looks the request up by that hash, so it does not depend
on the order in which concurrent agents ask, and any change in a prompt, a tool result or an option
is caught as a ReplayMismatch instead of silently giving a different run. The hash is kept
incrementally (a fork copies it), so replay costs no more per turn as transcripts grow.
"""

from __future__ import annotations

import collections
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from .conversation import ChatBackend, Conversation, Reply, ReplyOptions
from .messages import Message, ToolSpec


class ReplayMismatch(LookupError):
    """The run asked for a reply the recording does not have: prompts, tools or tool results differ."""


class RequestHash:
    """A running SHA-256 of a request (tools, then messages): each turn's key costs only what is new since the
    last. Replays key replies by it; a resumed run checks each served reply against it."""

    def __init__(self, tools: Sequence[ToolSpec] = (), messages: Sequence[Message] = ()) -> None:
        self._hash = hashlib.sha256()
        for spec in tools:
            self._update("tool", spec.model_dump_json())
        self.add(messages)

    def _update(self, kind: str, text: str) -> None:
        self._hash.update(f"{kind}\0{len(text)}\0{text}".encode())

    def add(self, messages: Sequence[Message]) -> None:
        for message in messages:
            self._update("message", message.model_dump_json())

    def key(self, options: ReplyOptions) -> str:
        final = self._hash.copy()
        text = options.model_dump_json()
        final.update(f"options\0{len(text)}\0{text}".encode())
        return final.hexdigest()

    def digest(self) -> str:
        """The hash of everything added so far."""
        return self._hash.hexdigest()

    def copy(self) -> RequestHash:
        clone = object.__new__(RequestHash)
        clone._hash = self._hash.copy()
        return clone


class _HashedConversation(Conversation):
    """A message list plus its running request hash; subclasses decide where replies come from."""

    def __init__(self, messages: list[Message], request_hash: RequestHash) -> None:
        self._messages = messages
        self._hash = request_hash

    async def add(self, messages: list[Message]) -> None:
        self._messages.extend(messages)
        self._hash.add(messages)

    def _append_reply(self, reply: Reply) -> None:
        message = reply.as_message()
        self._messages.append(message)
        self._hash.add([message])

    @property
    def messages(self) -> list[Message]:
        return list(self._messages)


class RecordingBackend(ChatBackend):
    """Wraps a backend and appends each exchange to a JSONL file (one line per reply, flushed)."""

    name = "recording"

    def __init__(self, inner: ChatBackend, path: str | Path) -> None:
        self.inner = inner
        self.path = Path(path)
        self._file: IO[str] = self.path.open("w", encoding="utf-8")

    async def open(self, messages: list[Message], tools: list[ToolSpec]) -> Conversation:
        inner = await self.inner.open(messages, tools)
        return _RecordingConversation(self, inner, list(messages), RequestHash(tools, messages))

    def write(self, key: str, reply: Reply) -> None:
        self._file.write(json.dumps({"key": key, "reply": reply.model_dump()}) + "\n")
        self._file.flush()

    async def aclose(self) -> None:
        self._file.close()
        await self.inner.aclose()


class _RecordingConversation(_HashedConversation):
    def __init__(self, backend: RecordingBackend, inner: Conversation, messages: list[Message],
                 request_hash: RequestHash) -> None:
        super().__init__(messages, request_hash)
        self._backend = backend
        self._inner = inner

    async def add(self, messages: list[Message]) -> None:
        await self._inner.add(messages)
        await super().add(messages)

    async def reply(self, options: ReplyOptions) -> Reply:
        key = self._hash.key(options)
        reply = await self._inner.reply(options)
        self._backend.write(key, reply)
        self._append_reply(reply)
        return reply

    def fork(self, n: int) -> list[Conversation]:
        return [_RecordingConversation(self._backend, child, list(self._messages), self._hash.copy())
                for child in self._inner.fork(n)]

    def close(self) -> None:
        self._inner.close()


class ReplayBackend(ChatBackend):
    """Serves the replies of a recording; identical requests get their replies in recorded order."""

    name = "replay"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._replies: dict[str, collections.deque[Reply]] = collections.defaultdict(collections.deque)
        with self.path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    self._replies[record["key"]].append(Reply.model_validate(record["reply"]))
                except (ValueError, KeyError, TypeError) as error:
                    raise ValueError(f"{self.path}:{number}: not a recorded exchange ({error})") from error

    @property
    def unused(self) -> int:
        """Recorded replies not served yet (0 after replaying the same run)."""
        return sum(len(queue) for queue in self._replies.values())

    async def open(self, messages: list[Message], tools: list[ToolSpec]) -> Conversation:
        return _ReplayConversation(self, list(messages), RequestHash(tools, messages))

    def take(self, key: str, messages: list[Message]) -> Reply:
        queue = self._replies.get(key)
        if not queue:
            last = messages[-1] if messages else None
            where = f"after a {last.role} turn starting {last.content[:80]!r}" if last else "at the start"
            raise ReplayMismatch(f"{self.path}: no recorded reply for this request ({len(messages)} messages, {where})")
        return queue.popleft()


class _ReplayConversation(_HashedConversation):
    def __init__(self, backend: ReplayBackend, messages: list[Message], request_hash: RequestHash) -> None:
        super().__init__(messages, request_hash)
        self._backend = backend

    async def reply(self, options: ReplyOptions) -> Reply:
        reply = self._backend.take(self._hash.key(options), self._messages)
        self._append_reply(reply)
        return reply

    def fork(self, n: int) -> list[Conversation]:
        return [_ReplayConversation(self._backend, list(self._messages), self._hash.copy()) for _ in range(n)]

    def close(self) -> None:
        """Nothing to release."""
