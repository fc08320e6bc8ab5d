"""Research tasks over the offline web, the teacher's plan for each, and how to grade an answer.

Three original families: comparison across N entities, wide table filling (one sub-agent per row) and
two-hop questions (two waves: the second asks about what the first found). Three more are what a newcomer
types first: a single-fact look-up, a yes/no comparison of two entities, and a question about an entity the
web does not have (answered "not found" with what was searched). Every sub-agent task has the single form
"Find the <attribute> of <name>." so one sub-agent skill serves them all.

`phrasing` words a task: "template" is each family's original wording (what the benchmarks always sampled),
"train" and "heldout" draw from the question grammar of `phrasings`, split like the entities.
"""

from __future__ import annotations

import random
import re
from typing import Literal, get_args

from pydantic import BaseModel

from kimi_swarm.tools.rank import Order

from .. import prompts
from . import phrasings
from .names import COMPANY_WORDS, NameMaker
from .phrasings import Phrasing
from .site import SiteManifest
from .world import Entity, Kind, Split, entity_path

Family = Literal["compare", "table", "two_hop", "lookup", "yes_no", "unknown"]
FAMILIES: tuple[Family, ...] = ("compare", "table", "two_hop")
NEWCOMER_FAMILIES: tuple[Family, ...] = ("lookup", "yes_no", "unknown")
ALL_FAMILIES: tuple[Family, ...] = FAMILIES + NEWCOMER_FAMILIES

PLURALS = {"country": "countries", "city": "cities", "company": "companies", "person": "people"}
COLUMN_TITLES = {"country": "Country", "city": "City", "company": "Company", "person": "Person"}

COMPARISONS: dict[tuple[Kind, str], tuple[str, str]] = {
    ("city", "Population"): ("has the largest population", "has the smallest population"),
    ("city", "Founding year"): ("was founded most recently", "was founded earliest"),
    ("city", "Elevation"): ("has the highest elevation", "has the lowest elevation"),
    ("country", "Population"): ("has the largest population", "has the smallest population"),
    ("country", "Area"): ("has the largest area", "has the smallest area"),
    ("company", "Employees"): ("has the most employees", "has the fewest employees"),
    ("company", "Founding year"): ("was founded most recently", "was founded earliest"),
    ("person", "Birth year"): ("was born most recently", "was born earliest"),
}
"""(kind, numeric attribute) -> (phrase for the maximum, phrase for the minimum); the largest year is the latest."""

TABLE_ATTRIBUTES: dict[Kind, tuple[str, ...]] = {
    "country": ("Capital", "Population", "Area", "Currency", "Continent"),
    "city": ("Population", "Founding year", "Mayor", "Country", "Elevation"),
    "company": ("Founding year", "Headquarters", "Founder", "Industry", "Employees"),
    "person": ("Birth year", "Birthplace", "Occupation"),
}

TWO_HOPS: tuple[tuple[Kind, str, str, str], ...] = (
    ("company", "Headquarters", "Population", "What is the population of the city where {name} is headquartered?"),
    ("company", "Headquarters", "Country", "In which country is {name} headquartered?"),
    ("company", "Founder", "Birth year", "In which year was the founder of {name} born?"),
    ("company", "Founder", "Birthplace", "Where was the founder of {name} born?"),
    ("person", "Birthplace", "Country", "In which country was {name} born?"),
    ("person", "Birthplace", "Population", "What is the population of the city where {name} was born?"),
    ("person", "Employer", "Founding year", "When was the company that {name} works for founded?"),
    ("person", "Employer", "Headquarters", "Where is the company that {name} works for headquartered?"),
    ("country", "Capital", "Mayor", "Who is the mayor of the capital of {name}?"),
    ("country", "Capital", "Population", "What is the population of the capital of {name}?"),
    ("city", "Mayor", "Birth year", "In which year was the mayor of {name} born?"),
)
"""(kind of the named entity, first attribute, second attribute, question)."""

COMPARE_TEMPLATES = ("Which of these {plural} {phrase}: {names}?",
                     "Compare the {attribute} of {names}. Which one {phrase}?")
TABLE_TEMPLATES = ("Make a table of the {attribute} of these {plural}: {names}.",
                   "Fill in a table with the {attribute} of each of these {plural}: {names}.")


def subtask_text(attribute: str, name: str) -> str:
    return f"Find the {attribute.lower()} of {name}."


def finding_text(attribute: str, name: str, value: str, url: str) -> str:
    """A sub-agent's answer, and the line the orchestrator builds its answer from."""
    return f"The {attribute.lower()} of {name} is {value} [{url}]."


def not_found_text(name: str) -> str:
    """A sub-agent's answer when no page is about the entity its task names (the plan misspelled it)."""
    return f"No page about {name} was found."


NOT_FOUND_CELL = "not found"


def not_found_answer(searched: str) -> str:
    """The run's Answer line when no page is about the entity the question names: what was searched, no value."""
    return f"Answer: not found: searched for {searched}."


def join_names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


class Lookup(BaseModel):
    """One sub-agent's job and the fact it should find; `url_path` None: no page is about `entity`."""

    entity: str
    attribute: str
    value: str
    url_path: str | None
    guessed_path: str | None = None
    """Of a lookup without a page: the path its sub-agent fetches anyway, as a small model guesses one from the
    name; the fetch fails and the sub-agent reports the missing page."""
    typed: str | None = None
    """The name as the user's prompt spells it, when not as the page does (lower case): the plan copies it, the
    sub-agent searches it, and reports the fact under the page's own spelling."""

    @property
    def named(self) -> str:
        """The name as the prompt, the plan and the sub-agent's search spell it."""
        return self.typed or self.entity

    @property
    def task(self) -> str:
        return subtask_text(self.attribute, self.named)

    def finding(self, base_url: str) -> str:
        """The sub-agent's report of this fact, citing its page on the site served at `base_url`."""
        if self.url_path is None:
            return not_found_text(self.named)
        return finding_text(self.attribute, self.entity, self.value, base_url.rstrip("/") + self.url_path)

    def row(self, base_url: str) -> str:
        """The sub-agent's report as its table row (entity, value, cited page), for a wave that asked for rows."""
        if self.url_path is None:
            return prompts.table_row([self.named, NOT_FOUND_CELL, ""])
        return prompts.table_row([self.entity, self.value, f"[{base_url.rstrip('/')}{self.url_path}]"])


class ResearchTask(BaseModel):
    """A user task, the teacher's waves of lookups, and the expected answer."""

    family: Family
    prompt: str
    kind: Kind
    attribute: str
    waves: list[list[Lookup]]
    answer: str
    answer_url_path: str | None = None
    largest: bool | None = None
    """A comparison's direction: the answer has the largest value (True) or the smallest (False); of a yes/no
    question, the direction it asks about its first entity ("Is A bigger than B?": True)."""
    form: str = "template"
    """The question form (phrasings) the prompt was worded with; "template": the family's original wording."""

    def final_answer(self, base_url: str) -> str:
        """The run's cited answer, as the teacher's run ends.

        A table is the one its spawn_agents call made final: the sub-agents' rows under its columns, laid out by
        the swarm, so no row is retyped. Every value another answer states is a copy of text above it: a small
        model copies a value reliably after the words that precede it in the report, not after its name in
        another layout. A comparison names the first entity of its `rank` result (the tool compares, not the
        model), restates that entity's finding, then lists every finding."""
        url = base_url.rstrip("/")
        if self.family == "table":
            outcomes = [prompts.SubagentOutcome(task=lk.task, status="done", result=lk.row(url))
                        for lk in self.waves[0]]
            return prompts.spawn_result_text(outcomes, self.columns())
        findings = [lk.finding(url) for wave in self.waves for lk in wave]
        if self.family in ("compare", "yes_no"):
            return "\n".join([f"Answer: {self.answer}. {self.winner().finding(url)}", *findings])
        if self.family == "unknown":
            return "\n".join([*findings, not_found_answer(self.waves[0][0].named)])
        return "\n".join([*findings, f"Answer: {self.answer} [{url}{self.answer_url_path}]."])

    def columns(self) -> list[str] | None:
        """A table's columns (entity, attribute, source), which its sub-agents answer in; None for other families."""
        return [COLUMN_TITLES[self.kind], self.attribute, "Source"] if self.family == "table" else None

    def spawn_arguments(self, wave: int) -> dict[str, object]:
        """The plan's spawn_agents call for wave `wave`: its tasks; a table's also asks for rows in its columns
        and makes their table the answer."""
        arguments: dict[str, object] = {"tasks": [lk.task for lk in self.waves[wave]]}
        if self.family == "table":
            arguments |= {"columns": self.columns(), "final": True}
        return arguments

    def subagent_answer(self, lookup: Lookup, base_url: str) -> str:
        """What the sub-agent of `lookup` answers: its table row in a table, else its finding."""
        return lookup.row(base_url) if self.family == "table" else lookup.finding(base_url)

    def order(self) -> str:
        """A comparison's direction as the prompt words it: its superlative (most, fewest, earliest, ...)."""
        phrase = COMPARISONS[(self.kind, self.attribute)][0 if self.largest else 1]
        return next(word for word in phrase.split() if word in get_args(Order))

    def plan_note(self) -> str:
        """Text of the plan turn before its spawn_agents call: a comparison states its direction ("Goal: fewest."),
        a copy made next to the prompt, so the rank call, kilobytes later, copies it from a fixed anchor."""
        return f"Goal: {self.order()}." if self.family in ("compare", "yes_no") else ""

    def rank_arguments(self) -> dict[str, object]:
        """A comparison's `rank` call (kimi_swarm.tools.rank): the direction as the plan turn stated it, then each
        entity's value as its sub-agent found it; a yes/no question's also asks about its first entity, so the
        answer's Yes or No is a copy of the result's last line, not a judgement of the model's."""
        arguments: dict[str, object] = {"order": self.order(), "values": {lk.entity: lk.value for lk in self.waves[0]}}
        if self.family == "yes_no":
            arguments["ask"] = self.waves[0][0].entity
        return arguments

    def winner(self) -> Lookup:
        """The compared entity that the answer names; of a yes/no question, the first entity if yes, else the
        second."""
        if self.family == "yes_no":
            return self.waves[0][0 if self.answer == "Yes" else 1]
        return next(lk for lk in self.waves[0] if lk.entity == self.answer)


def _lookup(entity: Entity, attribute: str) -> Lookup:
    return Lookup(entity=entity.name, attribute=attribute, value=entity.facts[attribute], url_path=entity.url_path)


def _typed(lookups: list[Lookup], worded: phrasings.Worded) -> list[Lookup]:
    """The lookups with the names as the worded prompt spells them."""
    return [lk.model_copy(update={"typed": worded.typed[lk.entity]}) if worded.typed.get(lk.entity, lk.entity)
            != lk.entity else lk for lk in lookups]


def compare_task(manifest: SiteManifest, split: Split, rng: random.Random, size: int,
                 phrasing: Phrasing = "template") -> ResearchTask:
    kind, attribute = rng.choice(sorted(COMPARISONS))
    largest = rng.random() < 0.5
    pool = manifest.of(kind, split)
    while True:
        chosen = rng.sample(pool, size)
        if len({e.number(attribute) for e in chosen}) == size:
            break
    pick = max if largest else min
    winner = pick(chosen, key=lambda e: e.number(attribute))
    phrase = COMPARISONS[(kind, attribute)][0 if largest else 1]
    lookups = [_lookup(e, attribute) for e in chosen]
    form = "template"
    if phrasing == "template":
        prompt = rng.choice(COMPARE_TEMPLATES).format(plural=PLURALS[kind], phrase=phrase,
                                                     attribute=attribute.lower(),
                                                     names=join_names([e.name for e in chosen]))
    else:
        worded = phrasings.word_compare(kind, attribute, largest, [e.name for e in chosen], phrasing, rng)
        prompt, form, lookups = worded.prompt, worded.form, _typed(lookups, worded)
    return ResearchTask(family="compare", prompt=prompt, kind=kind, attribute=attribute, waves=[lookups],
                        answer=winner.name, answer_url_path=winner.url_path, largest=largest, form=form)


def yes_no_task(manifest: SiteManifest, split: Split, rng: random.Random,
                phrasing: Phrasing = "template") -> ResearchTask:
    """"Is A bigger than B?": two entities with different values; yes when A comes first in the asked direction.
    Half the questions are yes. The plan, the rank call and the answer's finding are a comparison's."""
    kind, attribute = rng.choice(sorted(COMPARISONS))
    largest = rng.random() < 0.5
    pool = manifest.of(kind, split)
    while True:
        first, second = rng.sample(pool, 2)
        if first.number(attribute) != second.number(attribute):
            break
    yes = rng.random() < 0.5
    if (first.number(attribute) > second.number(attribute)) != (largest == yes):
        first, second = second, first
    lookups = [_lookup(first, attribute), _lookup(second, attribute)]
    if phrasing == "template":
        question, _ = phrasings.yes_no_pairs(phrasings.DIRECTIONS[(kind, attribute, largest)])[0]
        prompt, form = question.format(a=first.name, b=second.name), "template"
    else:
        worded = phrasings.word_yes_no(kind, attribute, largest, [first.name, second.name], phrasing, rng)
        prompt, form, lookups = worded.prompt, worded.form, _typed(lookups, worded)
    winner = first if yes else second
    return ResearchTask(family="yes_no", prompt=prompt, kind=kind, attribute=attribute, waves=[lookups],
                        answer="Yes" if yes else "No", answer_url_path=winner.url_path, largest=largest, form=form)


LOOKUP_ATTRIBUTES: tuple[tuple[Kind, str], ...] = tuple(phrasings.LOOKUP_QUESTIONS)
"""(kind, attribute) pairs a single-fact look-up asks about: every infobox fact of the offline web."""


def lookup_template(kind: Kind, attribute: str, name: str) -> str:
    """A look-up's plain wording: the first natural question of its attribute ("How many people live in X?")."""
    return phrasings.LOOKUP_QUESTIONS[(kind, attribute)][0][0].format(name=name)


def lookup_task(manifest: SiteManifest, split: Split, rng: random.Random,
                phrasing: Phrasing = "template") -> ResearchTask:
    """"What is the population of X?": one sub-agent finds the fact; the answer restates it with its page."""
    kind, attribute = rng.choice(LOOKUP_ATTRIBUTES)
    entity = rng.choice([e for e in manifest.of(kind, split) if attribute in e.facts])
    lookups = [_lookup(entity, attribute)]
    if phrasing == "template":
        prompt, form = lookup_template(kind, attribute, entity.name), "template"
    else:
        worded = phrasings.word_lookup(kind, attribute, entity.name, phrasing, rng)
        prompt, form, lookups = worded.prompt, worded.form, _typed(lookups, worded)
    return ResearchTask(family="lookup", prompt=prompt, kind=kind, attribute=attribute, waves=[lookups],
                        answer=entity.facts[attribute], answer_url_path=entity.url_path, form=form)


def unknown_name(manifest: SiteManifest, kind: Kind, split: Split, rng: random.Random) -> str:
    """A name no entity of the web has (in any letter case): half the time a misspelling of an entity of `split`
    (a typo of a real name: search finds the real page, which is not about it), else a fresh name of the kind."""
    taken = {e.name.lower() for e in manifest.entities}
    maker = NameMaker(rng)
    for _ in range(1000):
        if rng.random() < 0.5:
            name = _misspelled(rng.choice(manifest.of(kind, split)).name, rng)
        else:
            name = {"country": maker.country, "city": maker.city, "company": maker.company,
                    "person": maker.person}[kind]()
        if name.lower() not in taken:
            return name
    raise RuntimeError(f"no unknown {kind} name found")


def unknown_task(manifest: SiteManifest, split: Split, rng: random.Random, phrasing: Phrasing = "template",
                 guess_rate: float = 0.5) -> ResearchTask:
    """A look-up about an entity the web does not have. The sub-agent searches the name, sees no page about it
    (half the time also fetches the page the name would have, which fails) and says so; the answer is "not
    found" with what was searched, never another entity's value."""
    kind, attribute = rng.choice(LOOKUP_ATTRIBUTES)
    name = unknown_name(manifest, kind, split, rng)
    guess = entity_path(kind, name) if rng.random() < guess_rate else None
    lookups = [Lookup(entity=name, attribute=attribute, value="", url_path=None, guessed_path=guess)]
    if phrasing == "template":
        prompt, form = lookup_template(kind, attribute, name), "template"
    else:
        worded = phrasings.word_lookup(kind, attribute, name, phrasing, rng)
        prompt, form, lookups = worded.prompt, worded.form, _typed(lookups, worded)
    return ResearchTask(family="unknown", prompt=prompt, kind=kind, attribute=attribute, waves=[lookups],
                        answer=NOT_FOUND_CELL, form=form)


def table_task(manifest: SiteManifest, split: Split, rng: random.Random, size: int,
               phrasing: Phrasing = "template") -> ResearchTask:
    kind = rng.choice(sorted(TABLE_ATTRIBUTES))
    attribute = rng.choice(TABLE_ATTRIBUTES[kind])
    chosen = rng.sample(manifest.of(kind, split), min(size, len(manifest.of(kind, split))))
    lookups = [_lookup(e, attribute) for e in chosen]
    form = "template"
    if phrasing == "template":
        prompt = rng.choice(TABLE_TEMPLATES).format(attribute=attribute.lower(), plural=PLURALS[kind],
                                                   names=join_names([e.name for e in chosen]))
    else:
        worded = phrasings.word_table(kind, attribute, [e.name for e in chosen], phrasing, rng)
        prompt, form, lookups = worded.prompt, worded.form, _typed(lookups, worded)
    return ResearchTask(family="table", prompt=prompt, kind=kind, attribute=attribute, waves=[lookups], answer="",
                        form=form)


def misnamed(task: ResearchTask, manifest: SiteManifest, rng: random.Random, count: int,
             guess_rate: float = 0.5) -> ResearchTask:
    """`task` with `count` of its first wave's lookups renamed to names no page is about, as a small model's plan
    misspells them (one letter changed, or a company's last word swapped); the prompt keeps the real names.
    Such runs teach sub-agents to report a missing page; their orchestrator, whose plan is wrong, is no example.
    A `guess_rate` share of them first fetch the page the name would have and see the fetch fail, which is what
    the small model does after such a search."""
    taken = {e.name for e in manifest.entities}
    wave = list(task.waves[0])
    for index in rng.sample(range(len(wave)), min(count, len(wave))):
        name = wave[index].entity
        for _ in range(100):
            wrong = _misspelled(name, rng)
            if wrong not in taken:
                guess = entity_path(task.kind, wrong) if rng.random() < guess_rate else None
                wave[index] = Lookup(entity=wrong, attribute=wave[index].attribute, value="", url_path=None,
                                     guessed_path=guess)
                taken.add(wrong)
                break
    return task.model_copy(update={"waves": [wave, *task.waves[1:]]})


def _misspelled(name: str, rng: random.Random) -> str:
    words = name.split(" ")
    if len(words) > 1 and words[-1] in COMPANY_WORDS and rng.random() < 0.5:
        return " ".join(words[:-1] + [rng.choice([w for w in COMPANY_WORDS if w != words[-1]])])
    first = words[0]
    at = rng.randrange(1, len(first))
    letter = rng.choice([c for c in "aeioulnrstk" if c != first[at]])
    return " ".join([first[:at] + letter + first[at + 1:], *words[1:]])


def two_hop_task(manifest: SiteManifest, split: Split, rng: random.Random,
                 phrasing: Phrasing = "template") -> ResearchTask:
    kind, first, second, question = rng.choice(TWO_HOPS)
    start = rng.choice([e for e in manifest.of(kind, split) if first in e.links])
    middle = manifest.by_path(start.links[first])
    lookups = [_lookup(start, first)]
    prompt, form = question.format(name=start.name), "template"
    if phrasing != "template":
        worded = phrasings.word_two_hop((kind, first, second), question, start.name, phrasing, rng)
        prompt, form, lookups = worded.prompt, worded.form, _typed(lookups, worded)
    return ResearchTask(family="two_hop", prompt=prompt, kind=kind, attribute=second,
                        waves=[lookups, [_lookup(middle, second)]],
                        answer=middle.facts[second], answer_url_path=middle.url_path, form=form)


def sample_task(manifest: SiteManifest, family: Family, split: Split, rng: random.Random,
                size: int | None = None, phrasing: Phrasing = "template") -> ResearchTask:
    """One task of `family` about entities of `split`, worded by `phrasing`; `size` is the entity count (compare,
    table). The "template" wording draws from `rng` exactly as before the grammar existed, so a seed gives the same
    tasks it always gave."""
    if family == "compare":
        return compare_task(manifest, split, rng, size or rng.randint(2, 4), phrasing)
    if family == "table":
        return table_task(manifest, split, rng, size or rng.randint(3, 24), phrasing)
    if family == "lookup":
        return lookup_task(manifest, split, rng, phrasing)
    if family == "yes_no":
        return yes_no_task(manifest, split, rng, phrasing)
    if family == "unknown":
        return unknown_task(manifest, split, rng, phrasing)
    return two_hop_task(manifest, split, rng, phrasing)


class Grade(BaseModel):
    """How one answer scored: `correct`/`total` answers or cells, and how many carried the right source."""

    correct: int
    cited: int
    total: int


ANSWER_LINE = re.compile(r"^Answer:(.*)$", re.MULTILINE)
URL = re.compile(r"https?://[^\s|\])>]+")


def table_rows(answer: str, attribute: str) -> dict[str, tuple[str, str]]:
    """A Markdown table's rows: first cell -> (the cell under the header that names `attribute`, else the
    second cell; the row's first URL). Tables of any column order, ours or a large model's, read alike."""
    rows: dict[str, tuple[str, str]] = {}
    column, previous = 1, None
    for line in answer.splitlines():
        if not line.lstrip().startswith("|"):
            previous = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if set("".join(cells)) <= set("-: "):
            if previous:  # the line above is the header
                rows.pop(previous[0], None)
                titles = [title.lower() for title in previous]
                column = titles.index(attribute.lower()) if attribute.lower() in titles else 1
            continue
        previous = cells
        if len(cells) > column:
            source = URL.search(line)
            rows[cells[0]] = (cells[column], source.group(0) if source else "")
    return rows


def grade(task: ResearchTask, answer: str, base_url: str) -> Grade:
    """Score an orchestrator's final text against the task; the URL must be the fact's own page.

    A comparison is correct when its Answer line names the winner alone and states the winner's value; a yes/no
    question when its Answer line starts with the right yes or no and states the winner's value; a question about
    an unknown entity when its Answer line says "not found", names what was searched and states no value (no digit,
    no URL); a look-up or two-hop question when its Answer line states the value.
    """
    url = base_url.rstrip("/")
    if task.family == "table":
        rows = table_rows(answer, task.attribute)
        correct = cited = 0
        for lk in task.waves[0]:
            value, source = rows.get(lk.entity, ("", ""))
            if value == lk.value:
                correct += 1
                cited += source == f"{url}{lk.url_path}"
        return Grade(correct=correct, cited=cited, total=len(task.waves[0]))
    match = ANSWER_LINE.search(answer)
    line = match.group(1) if match else ""
    if task.family == "compare":
        named = [lk.entity for lk in task.waves[0] if re.search(rf"\b{re.escape(lk.entity)}\b", line)]
        named = [n for n in named if not any(n != other and n in other for other in named)]
        ok = named == [task.answer] and _states(line, task.winner().value)
    elif task.family == "yes_no":
        said = re.match(r"\s*\**\s*(yes|no)\b", line, re.IGNORECASE)
        ok = bool(said) and said.group(1).lower() == task.answer.lower() and _states(line, task.winner().value)
    elif task.family == "unknown":
        searched = task.waves[0][0].named
        ok = (NOT_FOUND_CELL in line.lower() and searched.lower() in line.lower()
              and not re.search(r"\d", line) and not URL.search(line))
        return Grade(correct=int(ok), cited=int(ok), total=1)
    else:
        ok = _states(line, task.answer)
    return Grade(correct=int(ok), cited=int(ok and f"{url}{task.answer_url_path}" in line), total=1)


def _states(line: str, value: str) -> bool:
    """`value` appears in `line` as a whole (1,382 is not in 21,382 or 1,382,449)."""
    return re.search(rf"(?<![\w.])(?<!\d,){re.escape(value)}(?!\w|[.,]\d)", line) is not None
