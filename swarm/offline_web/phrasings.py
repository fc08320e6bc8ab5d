"""How users word research tasks: a grammar of question forms per task family, split like the entities.

A newcomer does not type the teacher's two templates. Each family here has frames (word order, questions and
imperatives, "between A and B", "of A, B and C"), direction phrases with their synonyms (older, earliest, founded
first; bigger, more populous, most inhabitants), attribute synonyms ("year of founding", "number of employees"), and
decorations applied on top (lower case, a trailing request for sources, no question mark). Whatever the wording,
the teacher's plan is the same: the same sub-agent tasks ("Find the <attribute> of <name>.") and, for a
comparison, the same `Goal:` word, so every form maps onto one sub-agent skill.

Frames are split like entities: `train` frames appear in training data, `heldout` frames never do; the quality
benchmark words tasks with held-out frames to measure how the model does on forms it never saw.
`template` is the original wording of each family (the first train frame, no decoration), kept so the existing
benchmarks sample exactly the tasks they always did.
"""

from __future__ import annotations

import random
import re
from typing import Literal, NamedTuple

from .world import Kind

Phrasing = Literal["template", "train", "heldout"]
PHRASINGS: tuple[Phrasing, ...] = ("template", "train", "heldout")


class Frame(NamedTuple):
    """One question form: `id` names it (stable, for tests and reports), `text` has {slots}, `split` which data
    may use it."""

    id: str
    text: str
    split: Literal["train", "heldout"]


NOUNS = {"country": "country", "city": "city", "company": "company", "person": "person"}
PLURALS_WORDS = {"country": "countries", "city": "cities", "company": "companies", "person": "people"}

ATTRIBUTE_NAMES: dict[str, tuple[str, ...]] = {
    "Population": ("population", "number of inhabitants"),
    "Founding year": ("founding year", "year of founding", "year founded"),
    "Elevation": ("elevation", "altitude"),
    "Area": ("area", "land area"),
    "Employees": ("employees", "number of employees", "headcount"),
    "Birth year": ("birth year", "year of birth"),
    "Capital": ("capital", "capital city"),
    "Continent": ("continent",),
    "Currency": ("currency",),
    "Mayor": ("mayor",),
    "Country": ("country",),
    "Headquarters": ("headquarters", "head office"),
    "Founder": ("founder",),
    "Industry": ("industry", "sector"),
    "Birthplace": ("birthplace", "place of birth"),
    "Occupation": ("occupation", "job"),
    "Employer": ("employer",),
}
"""An attribute's words in a prompt; the first is the canonical one (the sub-agent task and the table column)."""


def attribute_word(attribute: str, rng: random.Random) -> str:
    return rng.choice(ATTRIBUTE_NAMES[attribute])


class Direction(NamedTuple):
    """The ways to say one comparison direction: superlatives (any number of entities), comparatives (two; each
    takes "than"), and extra yes/no (question, statement) pairs with {a} and {b}."""

    superlatives: tuple[str, ...]
    comparatives: tuple[str, ...]
    yes_no: tuple[tuple[str, str], ...] = ()


_FOUNDED_LATEST = Direction(
    ("was founded most recently", "was founded last", "was founded latest", "is the newest", "is the youngest"),
    ("was founded more recently", "was founded later", "is newer", "is younger"),
    (("Was {a} founded after {b}?", "{a} was founded after {b}"),))
_FOUNDED_EARLIEST = Direction(
    ("was founded earliest", "was founded first", "is the oldest"),
    ("was founded earlier", "is older"),
    (("Was {a} founded before {b}?", "{a} was founded before {b}"),))
_PEOPLE_MOST = Direction(
    ("has the largest population", "is the most populous", "has the most inhabitants", "has the most people"),
    ("has a larger population", "is more populous", "has more inhabitants", "has more people"))
_PEOPLE_FEWEST = Direction(
    ("has the smallest population", "is the least populous", "has the fewest inhabitants", "has the fewest people"),
    ("has a smaller population", "is less populous", "has fewer inhabitants", "has fewer people"))

DIRECTIONS: dict[tuple[Kind, str, bool], Direction] = {
    ("city", "Population", True): Direction(_PEOPLE_MOST.superlatives + ("is the biggest", "is the largest"),
                                            _PEOPLE_MOST.comparatives + ("is bigger", "is larger")),
    ("city", "Population", False): Direction(_PEOPLE_FEWEST.superlatives + ("is the smallest",),
                                             _PEOPLE_FEWEST.comparatives + ("is smaller",)),
    ("city", "Founding year", True): _FOUNDED_LATEST,
    ("city", "Founding year", False): _FOUNDED_EARLIEST,
    ("city", "Elevation", True): Direction(
        ("has the highest elevation", "lies highest", "is at the highest altitude", "is the highest"),
        ("has a higher elevation", "lies higher", "is at a higher altitude", "is higher")),
    ("city", "Elevation", False): Direction(
        ("has the lowest elevation", "lies lowest", "is at the lowest altitude", "is the lowest"),
        ("has a lower elevation", "lies lower", "is at a lower altitude", "is lower")),
    ("country", "Population", True): _PEOPLE_MOST,
    ("country", "Population", False): _PEOPLE_FEWEST,
    ("country", "Area", True): Direction(
        ("has the largest area", "covers the most land", "is the largest by area", "is the biggest", "is the largest"),
        ("has a larger area", "covers more land", "is larger by area", "is bigger", "is larger")),
    ("country", "Area", False): Direction(
        ("has the smallest area", "covers the least land", "is the smallest by area", "is the smallest"),
        ("has a smaller area", "covers less land", "is smaller by area", "is smaller")),
    ("company", "Employees", True): Direction(
        ("has the most employees", "employs the most people", "has the largest workforce"),
        ("has more employees", "employs more people", "has a larger workforce")),
    ("company", "Employees", False): Direction(
        ("has the fewest employees", "employs the fewest people", "has the smallest workforce"),
        ("has fewer employees", "employs fewer people", "has a smaller workforce")),
    ("company", "Founding year", True): _FOUNDED_LATEST,
    ("company", "Founding year", False): _FOUNDED_EARLIEST,
    ("person", "Birth year", True): Direction(
        ("was born most recently", "was born last", "was born latest", "is the youngest"),
        ("was born more recently", "was born later", "is younger"),
        (("Was {a} born after {b}?", "{a} was born after {b}"),)),
    ("person", "Birth year", False): Direction(
        ("was born earliest", "was born first", "is the oldest"),
        ("was born earlier", "is older"),
        (("Was {a} born before {b}?", "{a} was born before {b}"),)),
}
"""(kind, numeric attribute, largest first) -> its wordings. A superlative in tasks.COMPARISONS comes first."""

# Comparison frames. {sup}: a superlative, {comp}: a comparative (two entities only), {names}: "A, B and C",
# {or_names}: "A, B or C", {a}/{b}: the two entities, {noun}/{plural}: the kind, {attribute}: an attribute word.
COMPARE_FRAMES: tuple[Frame, ...] = (
    Frame("compare/which-of-these", "Which of these {plural} {sup}: {names}?", "train"),
    Frame("compare/compare-the", "Compare the {attribute} of {names}. Which one {sup}?", "train"),
    Frame("compare/which-noun", "Which {noun} {sup}: {or_names}?", "train"),
    Frame("compare/which-noun-comp", "Which {noun} {comp}: {a} or {b}?", "train"),
    Frame("compare/of-names", "Of {names}, which {sup}?", "train"),
    Frame("compare/between", "Between {a} and {b}, which {noun} {comp}?", "train"),
    Frame("compare/names-which-one", "{names}: which one {sup}?", "train"),
    Frame("compare/find-out", "Find out which of these {plural} {sup}: {names}.", "train"),
    Frame("compare/tell-me", "Tell me which {noun} {sup}: {or_names}.", "train"),
    Frame("compare/which-comma", "Which {comp}, {a} or {b}?", "train"),
    Frame("compare/which-one-of", "Which one of {names} {sup}?", "train"),
    Frame("compare/who", "Who {sup}: {or_names}?", "train"),
    Frame("compare/heldout-out-of", "Out of {names}, which {noun} {sup}?", "heldout"),
    Frame("compare/heldout-please", "Please tell me which of {names} {sup}.", "heldout"),
    Frame("compare/heldout-among", "Which {noun} among {names} {sup}?", "heldout"),
    Frame("compare/heldout-or-which", "{a} or {b}: which {comp}?", "heldout"),
)

YES_NO_FRAMES: tuple[Frame, ...] = (
    Frame("yes_no/question", "{question}", "train"),
    Frame("yes_no/true-or-false", "True or false: {statement}.", "train"),
    Frame("yes_no/check-whether", "Check whether {statement}.", "train"),
    Frame("yes_no/heldout-is-it-true", "Is it true that {statement}?", "heldout"),
    Frame("yes_no/heldout-tell-me-if", "Tell me if {statement}.", "heldout"),
)

TABLE_FRAMES: tuple[Frame, ...] = (
    Frame("table/make-a-table", "Make a table of the {attribute} of these {plural}: {names}.", "train"),
    Frame("table/fill-in", "Fill in a table with the {attribute} of each of these {plural}: {names}.", "train"),
    Frame("table/list", "List the {attribute} of these {plural}: {names}.", "train"),
    Frame("table/give-me", "Give me a table with the {attribute} of these {plural}: {names}.", "train"),
    Frame("table/what-is-each", "What is the {attribute} of each of these {plural}? {names}", "train"),
    Frame("table/for-each", "For each of these {plural}, find the {attribute}: {names}.", "train"),
    Frame("table/their", "{Plural} {names}: make a table of their {attribute}.", "train"),
    Frame("table/heldout-i-need", "I need a table of the {attribute} of the following {plural}: {names}.", "heldout"),
    Frame("table/heldout-look-up", "Look up the {attribute} of each of these {plural} and put it in a table: {names}.",
          "heldout"),
)

LOOKUP_FRAMES: tuple[Frame, ...] = (
    Frame("lookup/what-is", "What is the {attribute} of {name}?", "train"),
    Frame("lookup/find", "Find the {attribute} of {name}.", "train"),
    Frame("lookup/tell-me", "Tell me the {attribute} of {name}.", "train"),
    Frame("lookup/whats", "What's the {attribute} of {name}?", "train"),
    Frame("lookup/look-up", "Look up the {attribute} of {name}.", "train"),
    Frame("lookup/its", "{name}: what is its {attribute}?", "train"),
    Frame("lookup/heldout-id-like", "I'd like to know the {attribute} of {name}.", "heldout"),
    Frame("lookup/heldout-can-you", "Can you find the {attribute} of {name}?", "heldout"),
)
"""Frames for any attribute; LOOKUP_QUESTIONS adds the natural questions of each attribute."""

_FOUNDED = (("When was {name} founded?", "In which year was {name} founded?", "What year was {name} founded?"),
            ("{name} was founded in which year?",))
_PEOPLE = (("How many people live in {name}?", "How many inhabitants does {name} have?"),
           ("What is the number of people living in {name}?",))
LOOKUP_QUESTIONS: dict[tuple[Kind, str], tuple[tuple[str, ...], tuple[str, ...]]] = {
    ("country", "Capital"): (("Which city is the capital of {name}?", "Name the capital of {name}."),
                             ("{name} has which city as its capital?",)),
    ("country", "Continent"): (("On which continent is {name}?", "Which continent is {name} in?"),
                               ("{name} is on which continent?",)),
    ("country", "Population"): _PEOPLE,
    ("country", "Area"): (("How large is {name}?", "How much land does {name} cover?"),
                          ("How big is {name} in area?",)),
    ("country", "Currency"): (("What currency does {name} use?", "What money is used in {name}?"),
                              ("Which currency is used in {name}?",)),
    ("city", "Population"): _PEOPLE,
    ("city", "Founding year"): _FOUNDED,
    ("city", "Mayor"): (("Who is the mayor of {name}?", "Who is {name}'s mayor?"), ("Who runs {name} as mayor?",)),
    ("city", "Country"): (("In which country is {name}?", "Which country is {name} in?"),
                          ("{name} lies in which country?",)),
    ("city", "Elevation"): (("How high is {name}?", "At what elevation is {name}?"),
                            ("How high above sea level is {name}?",)),
    ("company", "Headquarters"): (("Where is {name} headquartered?", "In which city is {name} based?"),
                                  ("Where does {name} have its headquarters?",)),
    ("company", "Founding year"): _FOUNDED,
    ("company", "Founder"): (("Who founded {name}?", "Who started {name}?"), ("{name} was founded by whom?",)),
    ("company", "Industry"): (("What industry is {name} in?", "What does {name} do?"),
                              ("In what industry does {name} work?",)),
    ("company", "Employees"): (("How many employees does {name} have?", "How many people work at {name}?"),
                               ("How many people does {name} employ?",)),
    ("person", "Birth year"): (("When was {name} born?", "In which year was {name} born?"),
                               ("{name} was born in which year?",)),
    ("person", "Birthplace"): (("Where was {name} born?", "In which city was {name} born?"),
                               ("Which city was {name} born in?",)),
    ("person", "Occupation"): (("What does {name} do for a living?", "What is {name}'s job?"),
                               ("What kind of work does {name} do?",)),
    ("person", "Employer"): (("Who does {name} work for?", "Which company employs {name}?"),
                             ("{name} works for which company?",)),
}
"""(kind, attribute) -> (train questions, held-out questions) of a single-fact look-up, with {name}."""

TWO_HOP_QUESTIONS: dict[tuple[Kind, str, str], tuple[tuple[str, ...], tuple[str, ...]]] = {
    ("company", "Headquarters", "Population"): (
        ("How many people live in the city where {name} is headquartered?",
         "What is the population of {name}'s headquarters city?"),
        ("How many inhabitants does the city that {name} is based in have?",)),
    ("company", "Headquarters", "Country"): (
        ("Which country is {name} headquartered in?", "In which country are the headquarters of {name}?"),
        ("{name} has its headquarters in which country?",)),
    ("company", "Founder", "Birth year"): (
        ("When was the founder of {name} born?", "What is the birth year of the person who founded {name}?"),
        ("The founder of {name} was born in which year?",)),
    ("company", "Founder", "Birthplace"): (
        ("What is the birthplace of the founder of {name}?", "In which city was the person who founded {name} born?"),
        ("The founder of {name} was born where?",)),
    ("person", "Birthplace", "Country"): (
        ("Which country was {name} born in?", "What country is the birthplace of {name} in?"),
        ("{name} was born in which country?",)),
    ("person", "Birthplace", "Population"): (
        ("How many people live in the city where {name} was born?", "What is the population of {name}'s birthplace?"),
        ("How many inhabitants does {name}'s birthplace have?",)),
    ("person", "Employer", "Founding year"): (
        ("In which year was {name}'s employer founded?", "What is the founding year of the company {name} works for?"),
        ("The company {name} works for was founded in which year?",)),
    ("person", "Employer", "Headquarters"): (
        ("Where is {name}'s employer headquartered?", "In which city is the company {name} works for based?"),
        ("{name} works for a company headquartered where?",)),
    ("country", "Capital", "Mayor"): (
        ("Who is the mayor of {name}'s capital?", "Who is the mayor of the capital city of {name}?"),
        ("Tell me who the mayor of the capital of {name} is.",)),
    ("country", "Capital", "Population"): (
        ("How many people live in the capital of {name}?", "What is the population of {name}'s capital city?"),
        ("How many inhabitants does the capital of {name} have?",)),
    ("city", "Mayor", "Birth year"): (
        ("When was the mayor of {name} born?", "What is the birth year of {name}'s mayor?"),
        ("The mayor of {name} was born in which year?",)),
}
"""(kind, first attribute, second attribute) -> (more train questions, held-out questions); the original question
of tasks.TWO_HOPS is a train question too."""

SOURCE_REQUESTS = (" Cite your sources.", " Include the source.", " Please give sources.", " With sources, please.",
                   " Give me the link to the source.", " (with sources)")
"""Trailing requests for sources, for train and held-out forms alike (the answer always cites)."""

LOWER_CASE_RATE = 0.2
LOWER_NAMES_RATE = 0.5  # of lower-cased prompts, those that lower-case the names too
SOURCE_REQUEST_RATE = 0.25
NO_QUESTION_MARK_RATE = 0.1
OXFORD_COMMA_RATE = 0.3


def frames(frame_list: tuple[Frame, ...], split: Literal["train", "heldout"]) -> list[Frame]:
    return [f for f in frame_list if f.split == split]


def names_list(names: list[str], rng: random.Random, word: str = "and") -> str:
    """"A and B", "A, B and C" or, with an Oxford comma, "A, B, and C"; `word` "or" for a choice."""
    if len(names) == 1:
        return names[0]
    comma = "," if len(names) > 2 and rng.random() < OXFORD_COMMA_RATE else ""
    return ", ".join(names[:-1]) + f"{comma} {word} " + names[-1]


def yes_no_pairs(direction: Direction) -> list[tuple[str, str]]:
    """(question, statement) with {a} and {b} for each comparative of `direction`, plus its extra pairs:
    "is bigger" -> ("Is {a} bigger than {b}?", "{a} is bigger than {b}"); "has more x" -> "Does {a} have more x than
    {b}?"; "lies higher" -> "Does {a} lie higher than {b}?"."""
    pairs = []
    for phrase in direction.comparatives:
        verb, rest = phrase.split(" ", 1)
        statement = f"{{a}} {phrase} than {{b}}"
        if verb in ("is", "was"):
            question = f"{verb.capitalize()} {{a}} {rest} than {{b}}?"
        elif verb == "has":
            question = f"Does {{a}} have {rest} than {{b}}?"
        else:
            question = f"Does {{a}} {verb.removesuffix('s')} {rest} than {{b}}?"
        pairs.append((question, statement))
    return pairs + list(direction.yes_no)


class Worded(NamedTuple):
    """A prompt and the spelling of each name in it (lower case when the prompt's names were lower-cased)."""

    prompt: str
    form: str
    typed: dict[str, str]


_SLOT = re.compile(r"\{(\w+)\}")


def decorate(form: str, text: str, names: list[str], rng: random.Random,
             sentence_case: bool = True) -> Worded:
    """Fill the name slots of `text` (its other slots already filled; names as {n0}, {n1}, ...) and decorate it:
    lower case (sometimes the names too), a trailing request for sources, no final question mark."""
    lower = rng.random() < LOWER_CASE_RATE
    lower_names = lower and rng.random() < LOWER_NAMES_RATE
    typed = {name: name.lower() if lower_names else name for name in names}
    if lower:
        text = text.lower()
    elif sentence_case and text[:1].islower():
        text = text[0].upper() + text[1:]
    if rng.random() < NO_QUESTION_MARK_RATE and text.endswith("?"):
        text = text[:-1]
    if rng.random() < SOURCE_REQUEST_RATE:
        request = rng.choice(SOURCE_REQUESTS)
        text = text + ("" if text[-1:] in ".?!)" else ".") + (request.lower() if lower else request)
    prompt = _SLOT.sub(lambda m: typed[names[int(m.group(1)[1:])]], text)
    return Worded(prompt, form, typed)


def name_slots(names: list[str]) -> list[str]:
    return [f"{{n{i}}}" for i in range(len(names))]


def word_compare(kind: Kind, attribute: str, largest: bool, names: list[str], split: Literal["train", "heldout"],
                 rng: random.Random) -> Worded:
    direction = DIRECTIONS[(kind, attribute, largest)]
    usable = [f for f in frames(COMPARE_FRAMES, split)
              if (len(names) == 2 or "{comp}" not in f.text and "{a}" not in f.text)
              and (kind == "person" or not f.id.endswith("/who"))]
    frame = rng.choice(usable)
    slots = name_slots(names)
    text = frame.text.format(
        sup=rng.choice(direction.superlatives), comp=rng.choice(direction.comparatives),
        names=names_list(slots, rng), or_names=names_list(slots, rng, "or"), a=slots[0], b=slots[-1],
        noun=NOUNS[kind], plural=PLURALS_WORDS[kind], attribute=attribute_word(attribute, rng))
    return decorate(frame.id, text, names, rng)


def word_yes_no(kind: Kind, attribute: str, largest: bool, names: list[str], split: Literal["train", "heldout"],
                rng: random.Random) -> Worded:
    """"Is A bigger than B?" and its kin: `largest` is the direction the question asks about A (True: is A the
    larger), so the answer is yes when A comes first in that direction."""
    question, statement = rng.choice(yes_no_pairs(DIRECTIONS[(kind, attribute, largest)]))
    frame = rng.choice(frames(YES_NO_FRAMES, split))
    a, b = name_slots(names)
    text = frame.text.format(question=question.format(a=a, b=b), statement=statement.format(a=a, b=b))
    return decorate(frame.id, text, names, rng)


def word_table(kind: Kind, attribute: str, names: list[str], split: Literal["train", "heldout"],
               rng: random.Random) -> Worded:
    frame = rng.choice(frames(TABLE_FRAMES, split))
    slots = name_slots(names)
    plural = PLURALS_WORDS[kind]
    text = frame.text.format(attribute=attribute_word(attribute, rng), plural=plural, Plural=plural.capitalize(),
                             names=names_list(slots, rng))
    return decorate(frame.id, text, names, rng)


def word_lookup(kind: Kind, attribute: str, name: str, split: Literal["train", "heldout"],
                rng: random.Random) -> Worded:
    """A single-fact question: half the time a natural question of the attribute, else a generic frame."""
    train_questions, heldout_questions = LOOKUP_QUESTIONS[(kind, attribute)]
    questions = train_questions if split == "train" else heldout_questions
    if rng.random() < 0.5:
        index = rng.randrange(len(questions))
        form, text = f"lookup/{kind}/{attribute}/{split}-{index}", questions[index]
        text = text.replace("{name}", "{n0}")
    else:
        frame = rng.choice(frames(LOOKUP_FRAMES, split))
        form, text = frame.id, frame.text.format(attribute=attribute_word(attribute, rng), name="{n0}")
    return decorate(form, text, [name], rng)


def word_two_hop(key: tuple[Kind, str, str], original: str, name: str, split: Literal["train", "heldout"],
                 rng: random.Random) -> Worded:
    train_questions, heldout_questions = TWO_HOP_QUESTIONS[key]
    questions = (original, *train_questions) if split == "train" else heldout_questions
    index = rng.randrange(len(questions))
    form = f"two_hop/{key[0]}/{key[1]}/{key[2]}/{split}-{index}"
    return decorate(form, questions[index].replace("{name}", "{n0}"), [name], rng)


def heldout_texts() -> list[str]:
    """Every held-out frame and question, with slots: what training prompts must never be worded as."""
    texts = [f.text for group in (COMPARE_FRAMES, YES_NO_FRAMES, TABLE_FRAMES, LOOKUP_FRAMES) for f in group
             if f.split == "heldout"]
    texts += [q for _, held in LOOKUP_QUESTIONS.values() for q in held]
    texts += [q for _, held in TWO_HOP_QUESTIONS.values() for q in held]
    return texts
