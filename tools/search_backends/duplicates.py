"""Groups near-identical documents, so search shows one of them instead of filling its results with copies.

Documentation ships each page twice (Sphinx's `library/json.html` and its source `_sources/library/json.rst.txt`)
and sites answer one page at several URLs. Two documents are near-identical when their sets of words overlap by
`THRESHOLD` (Jaccard). On Python's docs 461 of 496 pages score 0.7 or more against their source (most of the
rest are index pages, whose source is a bare list of includes), distinct pages compared scored at most 0.4, and
on the offline web an archived copy of an article with older facts scores at most 0.5.

Candidate pairs come from MinHash banding (locality-sensitive hashing), so thousands of documents are not
compared pair by pair; every candidate pair is then checked exactly.
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np

from .corpus import Entry

THRESHOLD = 0.7
MIN_WORDS = 20  # in shorter texts a word or two is the whole difference (two stubs naming different pages)
_BANDS, _ROWS = 32, 4  # a pair at THRESHOLD shares a band with probability 1 - (1 - 0.7**4)**32 > 0.9998
_PRIME = (1 << 31) - 1  # keeps (a * id + b) below 2**63, inside int64
_WORD = re.compile(r"\w+")


def _jaccard(first: frozenset[str], second: frozenset[str]) -> float:
    return len(first & second) / len(first | second)


def near_duplicate_groups(entries: list[Entry]) -> list[str]:
    """For each entry, the URL of its group's representative: of near-identical entries, the first HTML one (the
    rendered page is what an agent should open, not its source), else the first; first in URL order."""
    words = [frozenset(_WORD.findall(entry.text.lower())) for entry in entries]
    rng = np.random.default_rng(0)  # fixed: the same corpus always groups the same way
    multipliers = rng.integers(1, _PRIME, size=(_BANDS * _ROWS, 1), dtype=np.int64)
    offsets = rng.integers(0, _PRIME, size=(_BANDS * _ROWS, 1), dtype=np.int64)
    vocabulary: dict[str, int] = {}
    buckets: dict[tuple[int, bytes], list[int]] = defaultdict(list)  # representatives, in order of preference
    groups = [entry.url for entry in entries]
    preferred = sorted(range(len(entries)), key=lambda i: (not entries[i].is_html, entries[i].url))
    rank = {index: position for position, index in enumerate(preferred)}
    for i in preferred:
        if len(words[i]) < MIN_WORDS:
            continue
        ids = np.fromiter((vocabulary.setdefault(word, len(vocabulary)) for word in words[i]), np.int64)
        signature = ((multipliers * ids + offsets) % _PRIME).min(axis=1).reshape(_BANDS, _ROWS)
        keys = [(band, row.tobytes()) for band, row in enumerate(signature)]
        candidates = sorted({j for key in keys for j in buckets.get(key, ())}, key=rank.__getitem__)
        representative = next((j for j in candidates if _jaccard(words[i], words[j]) >= THRESHOLD), None)
        if representative is None:
            for key in keys:
                buckets[key].append(i)
        else:
            groups[i] = entries[representative].url
    return groups
