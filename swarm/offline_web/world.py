"""A seeded fictional world: countries, cities, companies and people with linked facts.

Entities are grouped by country and split train/held-out by whole country, so every cross-link
(capital, mayor, founder, employer, headquarters, birthplace) stays inside one split: training
pages never name a held-out entity.
"""

from __future__ import annotations

import random
import re
from typing import Literal

from pydantic import BaseModel, Field

from .names import NameMaker

Kind = Literal["country", "city", "company", "person"]
Split = Literal["train", "heldout"]

COUNTRIES = 40
HELDOUT_COUNTRIES = 6
CITIES_PER_COUNTRY = 15
PEOPLE_PER_COUNTRY = 18
COMPANIES_PER_COUNTRY = 16
CONTINENTS = ["Norvania", "Sudera", "Estmar", "Westhold", "Meridia"]
CURRENCY_WORDS = ["crown", "mark", "dinar", "florin", "peso", "lira", "thaler", "real"]
INDUSTRIES = ["software", "shipping", "mining", "textiles", "food processing", "aerospace", "banking",
              "pharmaceuticals", "energy", "telecommunications", "automotive", "publishing"]
OCCUPATIONS = ["engineer", "architect", "novelist", "economist", "physician", "composer", "chemist",
               "entrepreneur", "historian", "painter", "diplomat", "mathematician"]
NEAR_DUPLICATE_PATTERNS = ["North {}", "New {}", "{} Heights", "Port {}", "Upper {}"]


def leading_number(text: str, what: str) -> int:
    """The integer a numeric fact shows ("1,234,567", "12,345 km²", "1843"); `what` names it in the error."""
    digits = re.match(r"[\d,]+", text)
    if digits is None:
        raise ValueError(f"{what} is not numeric: {text!r}")
    return int(digits.group().replace(",", ""))


class Entity(BaseModel):
    """One entity page: `facts` are the infobox rows in order, `links` the rows that name another entity."""

    kind: Kind
    name: str
    url_path: str
    split: Split
    country: str
    facts: dict[str, str]
    links: dict[str, str] = Field(default_factory=dict)

    def number(self, label: str) -> int:
        return leading_number(self.facts[label], f"fact {label!r} of {self.name}")


class ArchivedPage(BaseModel):
    """An outdated near-duplicate of an entity page (same name, older numbers): a distractor."""

    name: str
    year: int
    url_path: str
    entity_path: str
    split: Split
    facts: dict[str, str]


def slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def entity_path(kind: Kind, name: str) -> str:
    """The site path of the page about the entity `name` of `kind` (one page per entity)."""
    return f"/{kind}/{slugify(name)}.html"


def thousands(n: int) -> str:
    return f"{n:,}"


def log_uniform(rng: random.Random, low: int, high: int) -> int:
    return int(round(low * (high / low) ** rng.random()))


class World(BaseModel):
    seed: int
    entities: list[Entity]
    archived: list[ArchivedPage]


class _Builder:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.names = NameMaker(self.rng)
        self.entities: list[Entity] = []

    def add(self, kind: Kind, name: str, split: Split, country: str) -> Entity:
        entity = Entity(kind=kind, name=name, url_path=entity_path(kind, name), split=split,
                        country=country, facts={})
        self.entities.append(entity)
        return entity

    def city_names(self, count: int) -> list[str]:
        names: list[str] = []
        while len(names) < count:
            base = self.names.city()
            names.append(base)
            if len(names) < count and self.rng.random() < 0.15:
                variant = self.rng.choice(NEAR_DUPLICATE_PATTERNS).format(base)
                if self.names.reserve(variant):
                    names.append(variant)
        return names

    def company_name(self, hq_city: str) -> str:
        if self.rng.random() < 0.2 and " " not in hq_city:
            name = f"{hq_city} {self.rng.choice(['Energy', 'Foods', 'Motors', 'Media', 'Systems', 'Airways'])}"
            if self.names.reserve(name):
                return name
        return self.names.company()

    def build_country(self, split: Split) -> None:
        rng = self.rng
        name = self.names.country()
        country = self.add("country", name, split, name)
        cities = [self.add("city", n, split, name) for n in self.city_names(CITIES_PER_COUNTRY)]
        people = [self.add("person", self.names.person(), split, name) for _ in range(PEOPLE_PER_COUNTRY)]
        companies = []
        for _ in range(COMPANIES_PER_COUNTRY):
            hq = rng.choice(cities)
            companies.append((self.add("company", self.company_name(hq.name), split, name), hq))
        capital = max(cities[:5], key=lambda c: len(c.name))
        country.facts = {
            "Capital": capital.name,
            "Continent": rng.choice(CONTINENTS),
            "Population": thousands(log_uniform(rng, 200_000, 180_000_000)),
            "Area": f"{thousands(log_uniform(rng, 2_000, 2_500_000))} km²",
            "Currency": f"{name + 'n' if name.endswith('a') else name + 'ian'} {rng.choice(CURRENCY_WORDS)}",
        }
        country.links = {"Capital": capital.url_path}
        for city in cities:
            mayor = rng.choice(people)
            city.facts = {
                "Country": name,
                "Population": thousands(log_uniform(rng, 4_000, 6_000_000)),
                "Founding year": str(rng.randint(760, 1905)),
                "Mayor": mayor.name,
                "Elevation": f"{rng.randint(2, 2400)} m",
            }
            city.links = {"Country": country.url_path, "Mayor": mayor.url_path}
        for person in people:
            birthplace = rng.choice(cities)
            person.facts = {
                "Birth year": str(rng.randint(1921, 2001)),
                "Birthplace": birthplace.name,
                "Occupation": rng.choice(OCCUPATIONS),
            }
            person.links = {"Birthplace": birthplace.url_path}
        for company, hq in companies:
            founder = rng.choice(people)
            company.facts = {
                "Headquarters": hq.name,
                "Founding year": str(rng.randint(1830, 2019)),
                "Founder": founder.name,
                "Industry": rng.choice(INDUSTRIES),
                "Employees": thousands(log_uniform(rng, 15, 350_000)),
            }
            company.links = {"Headquarters": hq.url_path, "Founder": founder.url_path}
        for person in people:
            if rng.random() < 0.6:
                employer, _ = rng.choice(companies)
                person.facts["Employer"] = employer.name
                person.links["Employer"] = employer.url_path

    def archived_copies(self) -> list[ArchivedPage]:
        pages = []
        for entity in self.entities:
            if entity.kind not in ("city", "company", "country") or self.rng.random() >= 0.2:
                continue
            year = self.rng.randint(1995, 2015)
            facts = dict(entity.facts)
            for label in ("Population", "Employees"):
                if label in facts:
                    facts[label] = thousands(max(1, int(entity.number(label) * self.rng.uniform(0.55, 0.92))))
            pages.append(ArchivedPage(name=entity.name, year=year, split=entity.split, facts=facts,
                                      url_path=f"/archive/{entity.kind}/{slugify(entity.name)}-{year}.html",
                                      entity_path=entity.url_path))
        return pages


def build_world(seed: int) -> World:
    """The same seed always gives the same world, byte for byte."""
    builder = _Builder(seed)
    heldout = set(builder.rng.sample(range(COUNTRIES), HELDOUT_COUNTRIES))
    for index in range(COUNTRIES):
        builder.build_country("heldout" if index in heldout else "train")
    return World(seed=seed, entities=builder.entities, archived=builder.archived_copies())
