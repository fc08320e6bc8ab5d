"""The question grammar (kimi_swarm.offline_web.phrasings): many wordings, one plan; held-out forms kept apart."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from kimi_swarm.offline_web.phrasings import COMPARE_FRAMES, DIRECTIONS, heldout_texts, yes_no_pairs
from kimi_swarm.offline_web.server import ensure_site
from kimi_swarm.offline_web.tasks import (
    ALL_FAMILIES,
    COMPARISONS,
    NOT_FOUND_CELL,
    grade,
    sample_task,
    subtask_text,
)

BASE = "http://127.0.0.1:1/"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return ensure_site(0, tmp_path_factory.mktemp("cache"))[1]


def _heldout_patterns() -> list[re.Pattern[str]]:
    """Each held-out frame or question as a regex over a whole prompt: slots match any text, the case any case,
    and the decorations (a trailing request for sources, no question mark) are allowed."""
    patterns = []
    for text in heldout_texts():
        body = re.sub(r"\\\{\w+\\\}", ".+", re.escape(text.rstrip("?.")))
        patterns.append(re.compile(rf"^{body}[?.]?( .*)?$", re.IGNORECASE))
    return patterns


def _tasks(manifest, phrasing, split, count=1500, seed=0):
    rng = random.Random(seed)
    return [sample_task(manifest, family, split, rng, {"compare": rng.randint(2, 5), "table": 4}.get(family), phrasing)
            for family in ALL_FAMILIES for _ in range(count // len(ALL_FAMILIES))]


def test_training_forms_never_use_a_heldout_form(manifest):
    """Train wordings never take a held-out frame or question, so the held-out phrasing row measures forms the model
    never saw; held-out wordings take only held-out forms."""
    patterns = _heldout_patterns()
    trained = _tasks(manifest, "train", "train")
    assert not [t.form for t in trained if "heldout" in t.form]
    assert not [t.prompt for t in trained if any(p.match(t.prompt) for p in patterns)]
    heldout = _tasks(manifest, "heldout", "heldout", count=600)
    assert all("heldout" in t.form for t in heldout)
    assert sum(any(p.match(t.prompt) for p in patterns) for t in heldout) >= 0.9 * len(heldout)
    assert {t.family for t in heldout} == set(ALL_FAMILIES)


def test_the_grammar_has_the_newcomers_words(manifest):
    """Synonyms, word orders, imperatives, "between A and B", lower case and requests for sources all occur."""
    prompts = [t.prompt for t in _tasks(manifest, "train", "train", count=3000, seed=1)]
    text = "\n".join(prompts)
    for words in ("is older", "was founded earlier", "was founded first", "is bigger", "is more populous",
                  "has the most inhabitants", "Between ", "Of ", "Is ", "Does ", "True or false:", "Find out which",
                  "Tell me", "How many people live in", "When was", "Who founded", "Where was", "List the"):
        assert words in text, words
    assert any(p == p.lower() and p[0].isalpha() for p in prompts)
    assert sum("source" in p.lower() for p in prompts) > 0.1 * len(prompts)
    assert any(re.search(r", \w[\w ]*, and \w", p) for p in prompts)
    forms = Counter(t.form for t in _tasks(manifest, "train", "train", count=3000, seed=2))
    assert len([f for f in forms if f.startswith("compare/")]) == len([f for f in COMPARE_FRAMES if f.split == "train"])


def test_every_wording_maps_onto_the_same_plan(manifest):
    """Whatever the wording: the sub-agent tasks are "Find the <attribute> of <name>." with each name as the
    prompt spells it, and a comparison's (or yes/no question's) plan states the direction's one Goal word."""
    for task in _tasks(manifest, "train", "train", count=1200, seed=3) + _tasks(manifest, "heldout", "heldout", 600):
        for lookup in task.waves[0]:
            assert lookup.task == subtask_text(lookup.attribute, lookup.named)
            assert lookup.named in task.prompt, (lookup.named, task.prompt)
            assert lookup.named.lower() == lookup.entity.lower()
        if task.family in ("compare", "yes_no"):
            phrase = COMPARISONS[(task.kind, task.attribute)][0 if task.largest else 1]
            assert task.plan_note() == f"Goal: {task.order()}." and task.order() in phrase.split()


@pytest.mark.parametrize(("kind", "attribute"), sorted(COMPARISONS))
def test_synonyms_of_one_direction_share_its_goal(kind, attribute):
    """Every wording of a direction belongs to exactly one (kind, attribute, direction), so it has one Goal."""
    for largest in (True, False):
        direction = DIRECTIONS[(kind, attribute, largest)]
        assert COMPARISONS[(kind, attribute)][0 if largest else 1] == direction.superlatives[0]
        opposite = DIRECTIONS[(kind, attribute, not largest)]
        assert not set(direction.superlatives) & set(opposite.superlatives)
        assert not set(direction.comparatives) & set(opposite.comparatives)
        for question, statement in yes_no_pairs(direction):
            assert question.endswith("?") and "{a}" in question and "{b}" in statement


def test_yes_no_answers_follow_the_values(manifest):
    rng = random.Random(4)
    answers = Counter()
    for _ in range(200):
        task = sample_task(manifest, "yes_no", "train", rng, phrasing="train")
        first, second = (manifest.entity(lk.entity).number(task.attribute) for lk in task.waves[0])
        asks_larger = task.largest
        assert task.answer == ("Yes" if (first > second) == asks_larger else "No")
        assert task.winner().entity == task.waves[0][0 if task.answer == "Yes" else 1].entity
        answers[task.answer] += 1
    assert min(answers.values()) > 60


def test_unknown_entities_are_in_no_page_of_the_web(manifest):
    names = {e.name.lower() for e in manifest.entities}
    rng = random.Random(5)
    for split in ("train", "heldout"):
        for _ in range(200):
            task = sample_task(manifest, "unknown", split, rng, phrasing="train")
            (lookup,) = task.waves[0]
            assert lookup.url_path is None and lookup.value == "" and lookup.entity.lower() not in names


def test_grade_new_families(manifest):
    rng = random.Random(6)
    lookup = sample_task(manifest, "lookup", "heldout", rng, phrasing="train")
    assert grade(lookup, lookup.final_answer(BASE), BASE).model_dump() == {"correct": 1, "cited": 1, "total": 1}
    yes_no = sample_task(manifest, "yes_no", "heldout", rng, phrasing="train")
    assert grade(yes_no, yes_no.final_answer(BASE), BASE).cited == 1
    flipped = yes_no.final_answer(BASE).replace(f"Answer: {yes_no.answer}.",
                                                f"Answer: {'No' if yes_no.answer == 'Yes' else 'Yes'}.")
    assert grade(yes_no, flipped, BASE).correct == 0
    unknown = sample_task(manifest, "unknown", "heldout", rng, phrasing="train")
    name = unknown.waves[0][0].named
    answer = unknown.final_answer(BASE)
    assert answer.splitlines()[-1] == f"Answer: {NOT_FOUND_CELL}: searched for {name}."
    assert grade(unknown, answer, BASE).correct == 1
    other = manifest.of("city", "heldout")[0]
    invented = f"Answer: {other.facts['Population']} [{BASE}{other.url_path.lstrip('/')}]."
    assert grade(unknown, invented, BASE).correct == 0
    assert grade(unknown, f"Answer: not found: searched for {name}, population 1,234.", BASE).correct == 0


def test_template_wording_is_the_original(manifest):
    """The benchmarks' default wording: the same prompts as before the grammar existed, drawn the same way."""
    rng = random.Random(3)
    task = sample_task(manifest, "compare", "heldout", rng, 3)
    assert task.form == "template"
    assert re.fullmatch(r"(Which of these \w+ .+: .+\?|Compare the .+ of .+\. Which one .+\?)", task.prompt)
    assert sample_task(manifest, "lookup", "heldout", random.Random(1)).form == "template"
