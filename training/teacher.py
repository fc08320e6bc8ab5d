"""A programmatic teacher that plays the model inside a real Swarm run, to record training trajectories.

`TeacherBackend` is a ChatBackend: the real `Swarm` drives it exactly as it drives the engine
(same prompts, tool specs, forks, spawn results), runs the real web tools against the served
offline web and appends their real output. Only the assistant turns come from the teacher, which
knows the task's plan and checks every fact it cites against the text the tools returned. A comparison's
orchestrator ranks the findings with the `rank` tool before it answers, so the run needs that tool; so does a
yes/no question's ("Is A bigger than B?": yes when A comes first). A question about an entity the web does not have
is searched for, found missing, and answered "not found" with what was searched.
"""

from __future__ import annotations

import json
import re

from kimi_swarm import prompts
from kimi_swarm.backend.chat.conversation import ChatBackend, Conversation, Reply, ReplyOptions
from kimi_swarm.backend.chat.messages import Message, ToolCall, ToolSpec
from kimi_swarm.offline_web.site import SiteManifest
from kimi_swarm.offline_web.tasks import Lookup, ResearchTask
from kimi_swarm.tools import rank

SEARCH_RESULTS = 3
SUBTASK = re.compile(r"using the tools: Find the (?P<attribute>.+?) of (?P<name>.+?)\.\n")


class TeacherError(RuntimeError):
    """The tools did not show what the teacher needs (a page missing from results, a fact not on the page)."""


def call_id(messages: list[Message], name: str) -> str:
    """Kimi's tool-call id: functions.NAME:K with K counting every earlier call of the conversation."""
    count = sum(len(m.tool_calls) for m in messages if m.role == "assistant")
    return f"functions.{name}:{count}"


def calls_named(messages: list[Message], name: str) -> int:
    """How many calls of the tool `name` the assistant has made in the conversation."""
    return sum(c.name == name for m in messages if m.role == "assistant" for c in m.tool_calls)


class Teacher:
    """Decides the next assistant turn of any conversation of one task's run."""

    def __init__(self, task: ResearchTask, manifest: SiteManifest, base_url: str):
        self.task = task
        self.manifest = manifest
        self.base_url = base_url.rstrip("/")
        self.lookups = {(lk.attribute.lower(), lk.named): lk for wave in task.waves for lk in wave}

    def next_turn(self, messages: list[Message]) -> Reply:
        start = next((i for i, m in enumerate(messages) if m.role == "tool"
                      and m.content.startswith("You are sub-agent ")), None)
        if start is None:
            return self._orchestrator_turn(messages)
        return self._subagent_turn(messages, start)

    def _orchestrator_turn(self, messages: list[Message]) -> Reply:
        waves_done = calls_named(messages, prompts.SPAWN_TOOL_NAME)
        results = "\n".join(m.content for m in messages if m.role == "tool")
        for wave in self.task.waves[:waves_done]:
            for lk in wave:
                if lk.finding(self.base_url) not in results:
                    raise TeacherError(f"the spawn results lack the finding for {lk.task!r}")
        if waves_done < len(self.task.waves):
            note = self.task.plan_note() if waves_done == 0 else ""
            return self._call(messages, prompts.SPAWN_TOOL_NAME, self.task.spawn_arguments(waves_done), content=note)
        if self.task.family in ("compare", "yes_no"):
            if not calls_named(messages, rank.__name__):
                return self._call(messages, rank.__name__, self.task.rank_arguments())
            lines = messages[-1].content.splitlines()
            first = f"1. {self.task.winner().entity}: {self.task.winner().value}"
            if first not in lines:
                raise TeacherError(f"the rank result does not start with {first!r}: {messages[-1].content!r}")
            if self.task.family == "yes_no" and not lines[-1].endswith(f"? {self.task.answer}."):
                raise TeacherError(f"the rank result does not answer {self.task.answer}: {messages[-1].content!r}")
        return Reply(content=self.task.final_answer(self.base_url), finish_reason="stop")

    def _subagent_turn(self, messages: list[Message], start: int) -> Reply:
        match = SUBTASK.search(messages[start].content + "\n")
        if match is None:
            raise TeacherError(f"cannot read the sub-agent task in {messages[start].content!r}")
        lookup = self.lookups.get((match["attribute"], match["name"]))
        if lookup is None:
            raise TeacherError(f"the task {match[0]!r} is not in the plan")
        own_turns = sum(1 for m in messages[start:] if m.role == "assistant")
        last = messages[-1].content
        if own_turns == 0:
            return self._call(messages, "search", {"query": lookup.named, "max_results": SEARCH_RESULTS})
        if lookup.url_path is None:
            return self._missing_page_turn(messages, lookup, own_turns)
        url = self.url(lookup)
        if own_turns == 1:
            if url not in last:
                raise TeacherError(f"searching {lookup.entity!r} did not return {url}")
            return self._call(messages, "fetch", {"url": url})
        if lookup.value not in last or lookup.entity not in last:
            raise TeacherError(f"the page {url} does not show {lookup.attribute} {lookup.value!r}")
        return Reply(content=self.task.subagent_answer(lookup, self.base_url), finish_reason="stop")

    def _missing_page_turn(self, messages: list[Message], lookup: Lookup, own_turns: int) -> Reply:
        """After the search, a lookup without a page fetches its guessed page (if it has one), then reports."""
        last = messages[-1].content
        if own_turns == 1:
            if re.search(rf"^(\[\d+\] )?{re.escape(lookup.named)}$", last, re.MULTILINE | re.IGNORECASE):
                raise TeacherError(f"searching the misnamed {lookup.named!r} found a page titled so")
            if lookup.guessed_path:
                return self._call(messages, "fetch", {"url": self.base_url + lookup.guessed_path})
        elif "404" not in last:
            raise TeacherError(f"fetching the guessed page {lookup.guessed_path} of {lookup.entity!r} did not fail")
        return Reply(content=self.task.subagent_answer(lookup, self.base_url), finish_reason="stop")

    def url(self, lookup: Lookup) -> str:
        return self.base_url + lookup.url_path

    @staticmethod
    def _call(messages: list[Message], name: str, arguments: dict, content: str = "") -> Reply:
        call = ToolCall(id=call_id(messages, name), name=name, arguments=json.dumps(arguments, ensure_ascii=False))
        return Reply(content=content, tool_calls=[call], finish_reason="tool_calls")


class TeacherConversation(Conversation):
    def __init__(self, backend: TeacherBackend, messages: list[Message], tools: list[ToolSpec], fork_point: int):
        self._backend = backend
        self._messages = list(messages)
        self.tools = tools
        self.fork_point = fork_point
        backend.conversations.append(self)

    @property
    def messages(self) -> list[Message]:
        return list(self._messages)

    async def add(self, messages: list[Message]) -> None:
        self._messages.extend(messages)

    async def reply(self, options: ReplyOptions) -> Reply:
        try:
            reply = self._backend.teacher.next_turn(self._messages)
        except TeacherError as error:
            self._backend.errors.append(str(error))
            raise
        self._messages.append(reply.as_message())
        return reply

    def fork(self, n: int) -> list[Conversation]:
        return [TeacherConversation(self._backend, self._messages, self.tools, len(self._messages)) for _ in range(n)]

    def close(self) -> None:
        """Nothing to release: the transcript stays readable for the trajectory writer."""


class TeacherBackend(ChatBackend):
    """Records every conversation opened or forked in a run (the orchestrator first) and any teacher error."""

    name = "teacher"

    def __init__(self, teacher: Teacher):
        self.teacher = teacher
        self.conversations: list[TeacherConversation] = []
        self.errors: list[str] = []

    async def open(self, messages: list[Message], tools: list[ToolSpec]) -> Conversation:
        return TeacherConversation(self, messages, tools, fork_point=0)
