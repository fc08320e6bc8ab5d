"""Pronounceable fictional names from a seeded syllable grammar, unique across the whole world."""

from __future__ import annotations

import random

ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kl", "l", "m", "n", "p", "pr", "r", "s", "st",
          "t", "tr", "v", "z", "th", "sh", "c", "j", "w", "qu"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "io", "ou", "y"]
CODAS = ["", "", "", "n", "r", "l", "s", "th", "m", "nd", "rk", "x"]
PLACE_ENDINGS = ["ia", "ora", "ania", "esh", "mark", "land", "stan", "vale", "ora", "ica"]
CITY_ENDINGS = ["", "", "burg", "ford", "ton", "ville", "grad", "mouth", "haven", "dale", "port", "wick"]
COMPANY_WORDS = ["Systems", "Works", "Dynamics", "Labs", "Industries", "Holdings", "Foods", "Motors",
                 "Energy", "Textiles", "Logistics", "Pharma", "Media", "Robotics", "Mining", "Airways"]
FIRST_NAMES_EXTRA = ["Ana", "Ilse", "Oren", "Tavi", "Mira", "Jonas", "Leda", "Pavel", "Runa", "Elio"]


class NameMaker:
    """Draws names from one Random and never hands out the same name twice."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def _word(self, syllables: int) -> str:
        parts = [self.rng.choice(ONSETS) + self.rng.choice(VOWELS) for _ in range(syllables)]
        return ("".join(parts) + self.rng.choice(CODAS)).capitalize()

    def _unique(self, make) -> str:
        for _ in range(10_000):
            name = make()
            if name not in self.used and 4 <= len(name) <= 24:
                self.used.add(name)
                return name
        raise RuntimeError("name space exhausted; lower the entity counts")

    def reserve(self, name: str) -> bool:
        """Claim a specific name (for near-duplicates); False if it is taken."""
        if name in self.used:
            return False
        self.used.add(name)
        return True

    def country(self) -> str:
        return self._unique(lambda: self._word(self.rng.randint(1, 2)) + self.rng.choice(PLACE_ENDINGS))

    def city(self) -> str:
        return self._unique(lambda: self._word(self.rng.randint(1, 2)) + self.rng.choice(CITY_ENDINGS))

    def company(self) -> str:
        return self._unique(lambda: f"{self._word(self.rng.randint(1, 2))} {self.rng.choice(COMPANY_WORDS)}")

    def person(self) -> str:
        def make() -> str:
            first = self._word(2) if self.rng.random() < 0.8 else self.rng.choice(FIRST_NAMES_EXTRA)
            return f"{first} {self._word(self.rng.randint(1, 2))}"
        return self._unique(make)
