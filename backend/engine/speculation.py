"""Prompt-lookup drafts for speculative greedy decoding.

Agents copy a lot: a URL from a search result into a fetch call, a value from a page into an
answer, every sub-agent's finding into the synthesis. When the last few tokens of a session also
occur earlier in it, the tokens that followed them there are a cheap guess at what comes next. The
engine checks the whole guess in one forward pass and keeps what the model would have chosen anyway,
so greedy output is unchanged; where a step is dispatch-bound (CPU), checking several tokens costs
little more than generating one.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

MIN_MATCH = 4
"""Tokens the session's ending must share with an earlier place for that place to be trusted."""

MAX_MATCH = 16
"""Longest ending tried: the longest match is the most specific guess."""


def lookup_draft(history: Sequence[int], max_draft: int, min_match: int = MIN_MATCH,
                 max_match: int = MAX_MATCH) -> list[int]:
    """Up to `max_draft` tokens that followed the latest earlier occurrence of `history`'s ending.

    Tries the longest ending first (`max_match` tokens down to `min_match`); an empty list means no
    ending of at least `min_match` tokens occurs earlier.
    """
    if max_draft < 1 or len(history) <= min_match:
        return []
    data = array("I", history).tobytes()
    width = array("I").itemsize
    total = len(history)
    for size in range(min(max_match, total - 1), min_match - 1, -1):
        pattern = data[(total - size) * width:]
        end = (total - 1) * width  # an occurrence must end before the session's last token
        while True:
            found = data.rfind(pattern, 0, end)
            if found < 0:
                break
            if found % width == 0:
                start = found // width + size
                return list(history[start:start + max_draft])
            end = found + len(pattern) - 1
    return []
