"""`rank`: order named quantities exactly, so an agent never compares numbers in its head.

Language models misjudge numbers of different lengths or formats (9,858,587 against 46,802,699; 9.11
against 9.9). A comparison answer is only as good as that judgement, so agents hand it to this tool:
they copy each name and value as found, say which end they want, and read the winner off the first line.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Literal

from .errors import ToolError

NUMBER = re.compile(r"(?<![\w.])([-−]?)(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?:\s*(thousand|million|billion|trillion|"
                    r"[kKMB]|bn)\b)?")
SCALES = {"thousand": 3, "k": 3, "K": 3, "million": 6, "M": 6, "billion": 9, "B": 9, "bn": 9, "trillion": 12}


def quantity(value: str) -> Decimal:
    """The first number in `value`, with thousands separators and a scale word: "1.5 million" is 1500000."""
    match = NUMBER.search(value)
    if match is None:
        raise ValueError(f"no number in {value!r}")
    sign, digits, fraction, scale = match.groups()
    number = Decimal(digits.replace(",", "") + (fraction or ""))
    return (-number if sign else number).scaleb(SCALES.get(scale or "", 0))


Order = Literal["largest", "highest", "most", "latest", "smallest", "lowest", "fewest", "least", "earliest"]
DESCENDING = ("largest", "highest", "most", "latest")
"""Orders that put the largest number first; the others put the smallest first. Several words per direction, so
an agent can pass the superlative of the question it answers ("the fewest employees", "founded most recently")."""


def rank(values: dict[str, str], order: Order = "largest", ask: str | None = None) -> str:
    """Orders named values by their numbers; use it to find the largest or smallest of several values.

    Args:
        values: Each name with its value as found, e.g. {"Oslo": "709,037", "Bergen": "291,940"}.
        order: Which comes first, in the question's own word: largest, highest, most or latest (the largest
            number first), smallest, lowest, fewest, least or earliest (the smallest first).
        ask: For a yes/no question ("Is Oslo larger than Bergen?"), the name it asks about (Oslo); the last
            line then answers it: Yes if that name alone comes first, else No.
    """
    if len(values) < 2:
        raise ToolError("values needs at least two names to rank")
    if ask is not None and ask not in values:
        raise ToolError(f"ask: {ask!r} is not one of the names in values")
    numbers: dict[str, Decimal] = {}
    for name, value in values.items():
        try:
            numbers[name] = quantity(value)
        except ValueError as error:
            raise ToolError(f"values[{name!r}]: {error}") from None
    descending = order in DESCENDING
    ordered = sorted(values, key=numbers.__getitem__, reverse=descending)
    lines = ["Largest first:" if descending else "Smallest first:"]
    for place, name in enumerate(ordered, start=1):
        ties = [other for other in ordered if other != name and numbers[other] == numbers[name]]
        tied = f" (tied with {', '.join(ties)})" if ties else ""
        lines.append(f"{place}. {name}: {values[name]}{tied}")
    if ask is not None:
        alone_first = all(numbers[ask] > numbers[other] if descending else numbers[ask] < numbers[other]
                          for other in values if other != ask)
        lines.append(f"Is {ask} first? {'Yes' if alone_first else 'No'}.")
    return "\n".join(lines)

