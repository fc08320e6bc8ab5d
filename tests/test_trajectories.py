"""Teacher trajectories: real Swarm runs over the served offline web, rendered exactly as the engine sees them."""

from __future__ import annotations

import asyncio
import json
import lzma
import random
import re
from collections import Counter

import pytest
from teacher import TeacherError
from trajectories import (
    conversation_segments,
    generate,
    generate_plans,
    heldout_pattern,
    plan_trajectory,
    record_run,
    run_trajectories,
    task_stream,
)

from kimi_swarm import prompts
from kimi_swarm.backend.chat.chat_format import IM_END, render
from kimi_swarm.backend.chat.messages import Message, ToolCall
from kimi_swarm.function_tools import as_tool
from kimi_swarm.launch import offline_web_tools, trained_tools
from kimi_swarm.offline_web import OfflineWeb
from kimi_swarm.offline_web.phrasings import heldout_texts
from kimi_swarm.offline_web.server import ensure_site
from kimi_swarm.offline_web.tasks import ALL_FAMILIES, COLUMN_TITLES, NOT_FOUND_CELL, grade, misnamed, sample_task
from kimi_swarm.tools import Web, wrap_untrusted
from kimi_swarm.tools.rank import rank

CALL_ID = re.compile(r"functions\.(\w+):(\d+)")


class Recorded:
    """One recorded run per family (train-split entities), plus direct tool outputs to compare with."""

    def __init__(self, offline: OfflineWeb):
        self.offline = offline
        self.runs = {}
        self.tool_specs = {}
        self.direct: dict[str, str] = {}

    async def record(self, web) -> None:
        rng = random.Random(7)
        self.tool_specs = {t.name: t for t in map(as_tool, trained_tools(web))}
        for family, size in (("compare", 3), ("table", 4), ("two_hop", None)):
            task = sample_task(self.offline.manifest, family, "train", rng, size)
            self.runs[family] = (task, await record_run(task, self.offline.manifest, self.offline.base_url,
                                                        trained_tools(web)))
        child = self.runs["table"][1].conversations[1]
        calls = [c for m in child.messages[child.fork_point:] if m.role == "assistant" for c in m.tool_calls]
        query = json.loads(calls[0].arguments)
        found = await web.search(query["query"], query["max_results"])
        self.direct["search"] = wrap_untrusted("\n\n".join(r.to_text() for r in found), "search")
        page = await web.fetch(json.loads(calls[1].arguments)["url"])
        self.direct["fetch"] = wrap_untrusted(page.to_text(), page.url)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Recorded:
    cache = tmp_path_factory.mktemp("cache")
    with OfflineWeb.start(seed=0, cache_dir=cache) as offline:
        result = Recorded(offline)

        async def go() -> None:
            web = offline_web_tools(offline, index_dir=cache / "index")
            try:
                await result.record(web)
            finally:
                await web.aclose()

        asyncio.run(go())
        return result


@pytest.mark.parametrize("family", ["compare", "table", "two_hop"])
def test_teacher_runs_finish_with_the_expected_answer(recorded, family):
    offline = recorded.offline
    task, backend = recorded.runs[family]
    assert backend.errors == []
    orchestrator = backend.conversations[0]
    assert orchestrator.messages[-1].content == task.final_answer(offline.base_url)
    assert orchestrator.messages[-1].role == ("tool" if family == "table" else "assistant")
    lookups = sum(len(wave) for wave in task.waves)
    assert len(backend.conversations) == 1 + lookups


def test_a_table_plan_asks_for_rows_and_its_table_is_the_answer(recorded):
    """The table's one orchestrator turn spawns with the columns and final; each sub-agent answers its row."""
    task, backend = recorded.runs["table"]
    orchestrator, *children = backend.conversations
    turns = [m for m in orchestrator.messages if m.role == "assistant"]
    assert len(turns) == 1 and json.loads(turns[0].tool_calls[0].arguments) == {
        "tasks": [lk.task for lk in task.waves[0]], "columns": [COLUMN_TITLES[task.kind], task.attribute, "Source"],
        "final": True}
    page = recorded.offline.base_url.rstrip("/")
    for child, lookup in zip(children, task.waves[0]):
        assert child.messages[-1].content == f"| {lookup.entity} | {lookup.value} | [{page}{lookup.url_path}] |"


def test_comparison_orchestrator_ranks_the_findings_with_the_real_tool(recorded):
    """The plan turn states the direction, then spawn_agents; rank over what the sub-agents found, in that
    direction; the answer names the tool's first entry."""
    task, backend = recorded.runs["compare"]
    orchestrator = backend.conversations[0]
    calls = [c for m in orchestrator.messages if m.role == "assistant" for c in m.tool_calls]
    assert [c.name for c in calls] == [prompts.SPAWN_TOOL_NAME, "rank"]
    plan = next(m for m in orchestrator.messages if m.role == "assistant")
    assert plan.content == f"Goal: {task.order()}." and task.order() in task.prompt
    assert json.loads(calls[1].arguments) == task.rank_arguments()
    ranked = orchestrator.messages[-2]
    assert ranked.role == "tool" and ranked.content == rank(**task.rank_arguments())
    assert ranked.content.splitlines()[1].startswith(f"1. {task.answer}: ")


def test_segments_add_up_and_targets_are_own_assistant_turns(recorded):
    _, backend = recorded.runs["two_hop"]
    for conversation in backend.conversations:
        segments = conversation_segments(conversation.messages, conversation.tools, conversation.fork_point)
        assert "".join(text for text, _ in segments) == render(conversation.messages, conversation.tools,
                                                               add_generation_prompt=False)
        targets = [text for text, target in segments if target]
        own = [m for m in conversation.messages[conversation.fork_point:] if m.role == "assistant"]
        assert len(targets) == len(own) >= 1
        assert all(text.endswith(IM_END) for text in targets)
        for text, target in zip(segments, segments[1:]):
            if target[1]:
                assert text[0].endswith("<|im_assistant|>assistant<|im_middle|>")


def test_subagents_are_forks_whose_inherited_turns_are_context(recorded):
    _, backend = recorded.runs["compare"]
    orchestrator, *children = backend.conversations
    spawn_turn = orchestrator.messages[children[0].fork_point - 1]
    assert spawn_turn.tool_calls[0].name == prompts.SPAWN_TOOL_NAME
    for index, child in enumerate(children, start=1):
        assert child.messages[: child.fork_point] == orchestrator.messages[: child.fork_point]
        task_message = child.messages[child.fork_point]
        assert task_message == prompts.subagent_task_message(spawn_turn.tool_calls[0].id, index, len(children),
                                                             json.loads(spawn_turn.tool_calls[0].arguments)["tasks"][index - 1])
        segments = conversation_segments(child.messages, child.tools, child.fork_point)
        assert not any(target and prompts.SPAWN_TOOL_NAME in text for text, target in segments)


def test_tool_results_are_the_real_tools_output(recorded):
    _, backend = recorded.runs["table"]
    child = backend.conversations[1]
    calls = [c for m in child.messages[child.fork_point:] if m.role == "assistant" for c in m.tool_calls]
    assert [c.name for c in calls] == ["search", "fetch"]
    results = {m.tool_call_id: m.content for m in child.messages if m.role == "tool"}
    assert results[calls[0].id] == recorded.direct["search"]
    assert results[calls[1].id] == recorded.direct["fetch"]
    assert json.loads(calls[1].arguments)["url"] in results[calls[0].id]


def test_tool_call_arguments_fit_the_schemas_and_ids_count_up(recorded):
    tools = recorded.tool_specs
    for _, backend in recorded.runs.values():
        for conversation in backend.conversations:
            calls = [c for m in conversation.messages if m.role == "assistant" for c in m.tool_calls]
            assert [int(CALL_ID.fullmatch(c.id)[2]) for c in calls] == list(range(len(calls)))
            for call in calls:
                assert CALL_ID.fullmatch(call.id)[1] == call.name
                if call.name != prompts.SPAWN_TOOL_NAME:
                    tools[call.name].validate(call.arguments)


def test_trajectories_sample_subagents_and_avoid_heldout_entities(recorded):
    offline = recorded.offline
    task, backend = recorded.runs["table"]
    trajectories = run_trajectories(task, backend, random.Random(0), subagents_per_wave=2)
    assert [t.role for t in trajectories] == ["orchestrator", "subagent", "subagent"]
    heldout = heldout_pattern(offline.manifest)
    heldout_name = offline.manifest.of("city", "heldout")[0].name
    assert heldout.search(f"about {heldout_name}.")
    assert not any(heldout.search(t.text) for t in trajectories)


def test_teacher_refuses_a_page_that_lacks_the_fact(recorded):
    _, backend = recorded.runs["compare"]
    child = backend.conversations[1]
    messages = child.messages[: child.fork_point + 4]  # task, search call, search result, fetch call
    fetch_call = messages[-1].tool_calls[0]
    forged = messages + [Message(role="tool", tool_call_id=fetch_call.id, content="No such fact here.")]
    with pytest.raises(TeacherError, match="does not show"):
        backend.teacher.next_turn(forged)
    assert isinstance(fetch_call, ToolCall)


def _written(path) -> list[dict]:
    with lzma.open(path, "rt", encoding="utf-8") as source:
        return [json.loads(line) for line in source]


def test_generate_spreads_runs_over_seeded_webs_and_keeps_evaluated_heldout_out(tmp_path):
    cache = tmp_path / "cache"
    asyncio.run(generate(tmp_path / "train.jsonl.xz", tasks=6, shards=2, seed=0, subagents_per_wave=1,
                         cache_dir=cache, web_seeds=(0, 1)))
    texts = ["".join(text for text, _ in t["segments"]) for t in _written(tmp_path / "train.jsonl.xz")]
    _, evaluated = ensure_site(0, cache)
    _, other = ensure_site(1, cache)
    only_other = {e.name for e in other.entities if e.split == "train"} - {e.name for e in evaluated.entities}
    assert any(re.search(rf"\b{re.escape(name)}\b", text) for name in only_other for text in texts)
    assert not any(heldout_pattern(evaluated).search(text) for text in texts)


def test_heldout_split_writes_validation_runs_of_the_evaluated_web_only(tmp_path):
    cache = tmp_path / "cache"
    out = tmp_path / "heldout.jsonl.xz"
    asyncio.run(generate(out, tasks=3, shards=1, seed=0, subagents_per_wave=1, cache_dir=cache, split="heldout"))
    _, evaluated = ensure_site(0, cache)
    assert all(heldout_pattern(evaluated).search("".join(text for text, _ in t["segments"])) for t in _written(out))
    with pytest.raises(ValueError, match="evaluated web, seed 0"):
        asyncio.run(generate(out, tasks=3, shards=1, seed=0, subagents_per_wave=1, cache_dir=cache,
                             web_seeds=(1,), split="heldout"))


def test_families_weight_the_task_mix_and_no_subagents_leaves_orchestrators(tmp_path):
    out = tmp_path / "orchestrators.jsonl.xz"
    asyncio.run(generate(out, tasks=3, shards=1, seed=0, subagents_per_wave=0, cache_dir=tmp_path / "cache",
                         split="heldout", families=("compare", "compare", "two_hop")))
    written = _written(out)
    assert [t["family"] for t in written] == ["compare", "compare", "two_hop"]
    assert {t["role"] for t in written} == {"orchestrator"}


def test_a_misnamed_plan_teaches_subagents_to_report_the_missing_page(tmp_path):
    """The plan misspells two names: those sub-agents search and see no page titled so; one says so at once,
    the other first fetches the page its name would have and sees the fetch fail. Only their trajectories are
    written (the orchestrator's plan is wrong on purpose)."""
    with OfflineWeb.start(seed=0, cache_dir=tmp_path / "cache") as offline:
        rng = random.Random(4)
        task = misnamed(sample_task(offline.manifest, "table", "train", rng, 4), offline.manifest, rng, 2)
        missing = [lk for lk in task.waves[0] if lk.url_path is None]
        assert len(missing) == 2 and not {lk.entity for lk in missing} & {e.name for e in offline.manifest.entities}
        assert sorted(lk.guessed_path is None for lk in missing) == [False, True]

        async def go():
            web = offline_web_tools(offline)
            try:
                return await record_run(task, offline.manifest, offline.base_url, trained_tools(web))
            finally:
                await web.aclose()

        backend = asyncio.run(go())
    assert backend.errors == []
    trajectories = run_trajectories(task, backend, random.Random(0), subagents_per_wave=5)
    assert [t.role for t in trajectories] == ["subagent", "subagent"]
    reported = set()
    for trajectory in trajectories:
        targets = [text for text, target in trajectory.segments if target]
        context = "".join(text for text, target in trajectory.segments if not target)
        lookup = next(lk for lk in missing if f"| {lk.entity} | {NOT_FOUND_CELL} |  |" + IM_END == targets[-1])
        assert "functions.search:" in targets[0]
        if lookup.guessed_path:
            assert len(targets) == 3 and lookup.guessed_path in targets[1] and "functions.fetch:" in targets[1]
            assert "HTTP 404" in context
        else:
            assert len(targets) == 2 and "HTTP 404" not in context
        reported.add(lookup.entity)
    assert reported == {lk.entity for lk in missing}


def test_generate_writes_misnamed_runs_as_subagents_only(tmp_path):
    out = tmp_path / "misnamed.jsonl.xz"
    stats = asyncio.run(generate(out, tasks=2, shards=1, seed=0, subagents_per_wave=2, cache_dir=tmp_path / "cache",
                                 families=("table",), misnamed_rate=1.0))
    written = _written(out)
    assert stats["misnamed_runs"] == 2 and written and {t["role"] for t in written} == {"subagent"}
    assert all(f"| {NOT_FOUND_CELL} |" in "".join(text for text, target in t["segments"] if target) for t in written)


def test_a_plan_trajectory_is_the_runs_own_start(recorded, tmp_path):
    """Plan-only trajectories (made without a web) render exactly as a recorded run's orchestrator does up to its
    plan, with the plan its one target; `--plans-only` writes them for train tasks only."""
    task, backend = recorded.runs["table"]
    orchestrator = backend.conversations[0]
    assert [as_tool(t).spec for t in trained_tools(Web())] == orchestrator.tools[1:]
    plan = plan_trajectory(task, recorded.offline.manifest, orchestrator.tools)
    run = conversation_segments(orchestrator.messages, orchestrator.tools, 0)
    assert run[: len(plan.segments)] == plan.segments and [t for t, target in plan.segments if target] == [run[1][0]]

    out = tmp_path / "plans.jsonl.xz"
    stats = asyncio.run(generate_plans(out, tasks=6, seed=0, cache_dir=tmp_path / "cache", web_seeds=(0, 1),
                                       families=("table",)))
    written = _written(out)
    assert stats["table/plan"] == len(written) == 6 - stats["dropped_heldout"] >= 1
    assert all(sum(target for _, target in t["segments"]) == 1 and '"final": true' in t["segments"][-1][0]
               for t in written)


# Issue 31: the newcomer families and the question grammar.


@pytest.fixture(scope="module")
def newcomer_runs(tmp_path_factory):
    """Recorded runs of look-ups, yes/no questions and unknown entities, worded with the grammar's train forms,
    among them lower-cased names."""
    cache = tmp_path_factory.mktemp("cache31")
    runs = []
    with OfflineWeb.start(seed=0, cache_dir=cache) as offline:
        async def go():
            web = offline_web_tools(offline, index_dir=cache / "index")
            rng = random.Random(31)
            try:
                for family in ("lookup", "yes_no", "unknown") * 6:
                    task = sample_task(offline.manifest, family, "train", rng, phrasing="train")
                    runs.append((task, await record_run(task, offline.manifest, offline.base_url,
                                                        trained_tools(web))))
                lowered = next(t for t in (sample_task(offline.manifest, "lookup", "train", rng, phrasing="train")
                                           for _ in range(400)) if t.waves[0][0].typed)
                runs.append((lowered, await record_run(lowered, offline.manifest, offline.base_url,
                                                       trained_tools(web))))
            finally:
                await web.aclose()

        asyncio.run(go())
        return offline.base_url, runs


def test_newcomer_runs_end_with_the_graded_answer(newcomer_runs):
    base_url, runs = newcomer_runs
    assert {task.family for task, _ in runs} == {"lookup", "yes_no", "unknown"}
    for task, backend in runs:
        assert backend.errors == [], task.prompt
        answer = backend.conversations[0].messages[-1].content
        assert answer == task.final_answer(base_url)
        assert grade(task, answer, base_url).model_dump() == {"correct": 1, "cited": 1, "total": 1}, task.prompt
        trajectories = run_trajectories(task, backend, random.Random(0), subagents_per_wave=2)
        assert trajectories[0].role == "orchestrator" and trajectories[0].family == task.family


def test_a_lower_cased_name_is_searched_as_typed_and_reported_as_the_page_spells_it(newcomer_runs):
    base_url, runs = newcomer_runs
    task, backend = runs[-1]
    (lookup,) = task.waves[0]
    assert lookup.typed == lookup.entity.lower() != lookup.entity and lookup.typed in task.prompt
    orchestrator, child = backend.conversations
    plan = next(m for m in orchestrator.messages if m.role == "assistant").tool_calls[0]
    assert json.loads(plan.arguments) == {"tasks": [f"Find the {lookup.attribute.lower()} of {lookup.typed}."]}
    search = next(m for m in child.messages[child.fork_point:] if m.role == "assistant").tool_calls[0]
    assert json.loads(search.arguments)["query"] == lookup.typed
    assert child.messages[-1].content == lookup.finding(base_url) and lookup.entity in child.messages[-1].content


def test_a_yes_no_question_ranks_then_answers_yes_when_its_first_entity_comes_first(newcomer_runs):
    _, runs = newcomer_runs
    for task, backend in (run for run in runs if run[0].family == "yes_no"):
        orchestrator = backend.conversations[0]
        calls = [c for m in orchestrator.messages if m.role == "assistant" for c in m.tool_calls]
        assert [c.name for c in calls] == [prompts.SPAWN_TOOL_NAME, "rank"]
        first = orchestrator.messages[-2].content.splitlines()[1]
        assert first.startswith(f"1. {task.winner().entity}: ")
        assert (task.answer == "Yes") == (task.winner().entity == task.waves[0][0].entity)
        assert orchestrator.messages[-1].content.startswith(f"Answer: {task.answer}. ")


def test_an_unknown_entity_is_searched_found_missing_and_answered_not_found(newcomer_runs):
    """The sub-agent searches the name (some also fetch the page it would have, which fails) and reports no page;
    the run's answer is "not found" naming what was searched, with no value, no number and no URL."""
    base_url, runs = newcomer_runs
    unknown = [run for run in runs if run[0].family == "unknown"]
    assert sorted({lk.guessed_path is None for task, _ in unknown for lk in task.waves[0]}) == [False, True]
    for task, backend in unknown:
        (lookup,) = task.waves[0]
        orchestrator, child = backend.conversations
        calls = [c for m in child.messages[child.fork_point:] if m.role == "assistant" for c in m.tool_calls]
        assert json.loads(calls[0].arguments) == {"query": lookup.named, "max_results": 3}
        assert [c.name for c in calls] == ["search"] + ["fetch"] * (lookup.guessed_path is not None)
        assert child.messages[-1].content == f"No page about {lookup.named} was found."
        answer = orchestrator.messages[-1].content
        assert answer.splitlines()[-1] == f"Answer: {NOT_FOUND_CELL}: searched for {lookup.named}."
        assert not re.search(r"\d", answer) and base_url not in answer
        trajectories = run_trajectories(task, backend, random.Random(0), subagents_per_wave=2)
        assert [t.role for t in trajectories] == ["orchestrator", "subagent"]
        targets = [text for text, target in trajectories[0].segments if target]
        assert targets[-1] == answer + IM_END


def test_generated_training_data_uses_train_forms_only(tmp_path):
    """--phrasing train writes the grammar's train forms (a template share in the original wording) and every
    family; held-out forms are refused for training data."""
    out = tmp_path / "phrased.jsonl.xz"
    families = ("lookup", "yes_no", "unknown", "compare", "two_hop", "table")
    stats = asyncio.run(generate(out, tasks=12, shards=1, seed=0, subagents_per_wave=1, cache_dir=tmp_path / "cache",
                                 families=families, phrasing="train", template_rate=0.2))
    written = _written(out)
    assert {t["family"] for t in written} == set(families)
    assert stats["phrased"] > stats["templated"]
    patterns = [re.compile("^" + re.sub(r"\\\{\w+\\\}", ".+", re.escape(text.rstrip("?."))), re.IGNORECASE)
                for text in heldout_texts()]
    user_turns = [re.search(r"<\|im_user\|>user<\|im_middle\|>(.*?)<\|im_end\|>", "".join(s for s, _ in t["segments"]),
                            re.DOTALL).group(1) for t in written]
    assert user_turns and not [u for u in user_turns if any(p.match(u) for p in patterns)]
    with pytest.raises(ValueError, match="never for training"):
        asyncio.run(generate(out, tasks=2, shards=1, seed=0, subagents_per_wave=1, cache_dir=tmp_path / "cache",
                             phrasing="heldout"))


def test_task_stream_words_tasks_by_phrasing(tmp_path):
    _, manifest = ensure_site(0, tmp_path / "cache")
    tasks = list(task_stream(manifest, random.Random(0), 300, "train", ALL_FAMILIES, "train", template_rate=0.25))
    forms = Counter(t.form == "template" for t in tasks)
    assert 40 < forms[True] < 110 and not [t for t in tasks if "heldout" in t.form]
    assert all(t.form == "template" for t in task_stream(manifest, random.Random(0), 30, "train", ALL_FAMILIES))
