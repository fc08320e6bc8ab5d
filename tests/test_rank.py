"""The rank tool: numbers read as a person writes them, ordered exactly, bad input named."""

from __future__ import annotations

from decimal import Decimal

import pytest

from kimi_swarm import Tool
from kimi_swarm.tools.errors import ToolError
from kimi_swarm.tools.rank import quantity, rank


@pytest.mark.parametrize("text, number", [
    ("1843", 1843), ("9,858,587", 9858587), ("1,765,697 km²", 1765697), ("2373 m", 2373),
    ("$4.5 billion", 4_500_000_000), ("1.5 million people", 1_500_000), ("12k", 12_000), ("-3.25", Decimal("-3.25")),
    ("about 800 (est.)", 800), ("9.11", Decimal("9.11")),
])
def test_quantity_reads_separators_decimals_and_scale_words(text, number):
    assert quantity(text) == number


def test_rank_orders_numbers_not_strings():
    """9,858,587 sorts above 46,802,699 as text and below it as a number; 9.11 is smaller than 9.9."""
    ranked = rank({"Preaxora": "9,858,587", "Quoundland": "46,802,699", "Riland": "138,382,486"}, "largest")
    assert ranked.splitlines() == ["Largest first:", "1. Riland: 138,382,486", "2. Quoundland: 46,802,699",
                                   "3. Preaxora: 9,858,587"]
    assert rank({"a": "9.11", "b": "9.9"}, "smallest").splitlines()[1] == "1. a: 9.11"


@pytest.mark.parametrize("order, first", [("largest", "b"), ("most", "b"), ("latest", "b"), ("highest", "b"),
                                          ("smallest", "a"), ("fewest", "a"), ("earliest", "a"), ("lowest", "a")])
def test_rank_takes_the_questions_superlative_as_the_order(order, first):
    assert rank({"a": "1889", "b": "1902"}, order).splitlines()[1].startswith(f"1. {first}: ")


def test_rank_keeps_input_order_among_ties_and_says_so():
    ranked = rank({"X": "1,200 m", "Y": "900 m", "Z": "1200 m"}).splitlines()
    assert ranked[1:] == ["1. X: 1,200 m (tied with Z)", "2. Z: 1200 m (tied with X)", "3. Y: 900 m"]


@pytest.mark.parametrize("ask, order, answer", [("Oslo", "largest", "Yes"), ("Oslo", "smallest", "No"),
                                                 ("Bergen", "fewest", "Yes"), ("Bergen", "most", "No")])
def test_rank_answers_a_yes_no_question_about_one_name(ask, order, answer):
    ranked = rank({"Oslo": "709,037", "Bergen": "291,940"}, order, ask=ask).splitlines()
    assert ranked[-1] == f"Is {ask} first? {answer}." and len(ranked) == 4


def test_rank_says_no_when_the_asked_name_only_ties_for_first():
    assert rank({"X": "1,200 m", "Z": "1200 m"}, ask="X").splitlines()[-1] == "Is X first? No."


@pytest.mark.parametrize("values, ask, message", [
    ({"only": "5"}, None, "at least two"),
    ({"a": "5", "b": "unknown"}, None, "values['b']: no number in 'unknown'"),
    ({"a": "5", "b": "6"}, "c", "ask: 'c' is not one of the names in values"),
])
def test_rank_names_the_bad_input(values, ask, message):
    with pytest.raises(ToolError, match=message.replace("[", r"\[").replace("]", r"\]")):
        rank(values, ask=ask)


def test_rank_tool_spec_and_validation():
    """A model sees `values` (name -> value text) and `order`; anything else is refused before it runs."""
    rank_tool = Tool(rank)
    assert rank_tool.name == "rank" and not rank_tool.untrusted
    assert set(rank_tool.parameters["properties"]["order"]["enum"]) >= {"largest", "smallest", "most", "fewest",
                                                                        "earliest", "latest", "highest", "lowest"}
    assert rank_tool.validate('{"values": {"a": "1", "b": "2"}, "order": "smallest"}')["order"] == "smallest"
    with pytest.raises(ValueError, match="order"):
        rank_tool.validate('{"values": {"a": "1", "b": "2"}, "order": "biggest"}')
