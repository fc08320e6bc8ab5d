"""HTML for the offline web: short entity pages (infobox first, then a few sentences), lists, archives.

Pages stay around 1-2 KB of text because the embedded model reads them byte by byte.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from html import escape

from .world import ArchivedPage, Entity

SITE_NAME = "Open Atlas"


def _page(title: str, body: str) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title></head>\n'
            f'<body>\n<nav><a href="/">{SITE_NAME}</a></nav>\n<main>\n<h1>{escape(title)}</h1>\n{body}</main>\n'
            "</body></html>\n")


def _link(path: str, text: str) -> str:
    return f'<a href="{escape(path)}">{escape(text)}</a>'


def _infobox(facts: dict[str, str], links: dict[str, str]) -> str:
    rows = []
    for label, value in facts.items():
        cell = _link(links[label], value) if label in links else escape(value)
        rows.append(f"<tr><th>{escape(label)}</th><td>{cell}</td></tr>")
    return '<table class="infobox">\n' + "\n".join(rows) + "\n</table>\n"


def _prose(entity: Entity, rng: random.Random) -> list[str]:
    f, n = entity.facts, entity.name
    if entity.kind == "country":
        sentences = [f"{n} is a country in {f['Continent']}.",
                     f"Its capital is {f['Capital']}.",
                     rng.choice([f"{n} has a population of {f['Population']}.",
                                 f"About {f['Population']} people live in {n}."]),
                     f"The country covers {f['Area']}, and its currency is the {f['Currency']}."]
    elif entity.kind == "city":
        sentences = [f"{n} is a city in {f['Country']}.",
                     rng.choice([f"It was founded in {f['Founding year']}.",
                                 f"The city dates from {f['Founding year']}."]),
                     f"{n} has a population of {f['Population']}.",
                     f"The current mayor is {f['Mayor']}.",
                     f"The city lies at an elevation of {f['Elevation']}."]
    elif entity.kind == "company":
        sentences = [f"{n} is a {f['Industry']} company based in {f['Headquarters']}.",
                     f"It was founded in {f['Founding year']} by {f['Founder']}.",
                     rng.choice([f"The company employs {f['Employees']} people.",
                                 f"{n} has {f['Employees']} employees."])]
    else:
        sentences = [f"{n} is a {f['Occupation']} born in {f['Birthplace']} in {f['Birth year']}."]
        if "Employer" in f:
            sentences.append(f"{n.split()[0]} works for {f['Employer']}.")
    head, tail = sentences[:1], sentences[1:]
    rng.shuffle(tail)
    return head + tail


def entity_page(entity: Entity, related: Iterable[Entity], rng: random.Random) -> str:
    see_also = ", ".join(_link(e.url_path, e.name) for e in related)
    body = (_infobox(entity.facts, entity.links)
            + f"<p>{escape(' '.join(_prose(entity, rng)))}</p>\n"
            + (f"<p>See also: {see_also}</p>\n" if see_also else ""))
    return _page(entity.name, body)


def archived_page(page: ArchivedPage) -> str:
    facts = ", ".join(f"{label.lower()} {value}" for label, value in page.facts.items())
    body = (f"<p><em>This is an archived copy of the article as of {page.year}; it may be out of date. "
            f"The current article is {_link(page.entity_path, page.name)}.</em></p>\n"
            + _infobox(page.facts, {})
            + f"<p>In {page.year} the record for {escape(page.name)} listed {escape(facts)}.</p>\n")
    return _page(f"{page.name} (archived {page.year} edition)", body)


def list_page(title: str, intro: str, items: Iterable[tuple[str, str]]) -> str:
    entries = "\n".join(f"<li>{_link(path, text)}</li>" for path, text in items)
    return _page(title, f"<p>{escape(intro)}</p>\n<ul>\n{entries}\n</ul>\n")
