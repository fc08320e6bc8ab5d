"""Writes the offline web for a seed: entity pages, archived near-duplicates, list pages and a manifest."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

from pydantic import BaseModel

from .render import SITE_NAME, archived_page, entity_page, list_page
from .world import Entity, Kind, Split, build_world, slugify

SITE_VERSION = 1
MANIFEST_NAME = "manifest.json"
LIST_CHUNK = 60


class SiteManifest(BaseModel):
    """What a generated site holds: every entity with its facts, URL path and split, and all page paths."""

    seed: int
    version: int = SITE_VERSION
    entities: list[Entity]
    page_paths: list[str]

    def entity(self, name: str) -> Entity:
        for entity in self.entities:
            if entity.name == name:
                return entity
        raise KeyError(f"no entity named {name!r} in the offline web (seed {self.seed})")

    def of(self, kind: Kind, split: Split | None = None) -> list[Entity]:
        return [e for e in self.entities if e.kind == kind and (split is None or e.split == split)]

    def by_path(self, url_path: str) -> Entity:
        for entity in self.entities:
            if entity.url_path == url_path:
                return entity
        raise KeyError(f"no entity page at {url_path!r}")


def _write(root: Path, url_path: str, html: str, written: list[str]) -> None:
    file = root / url_path.lstrip("/")
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(html, encoding="utf-8")
    written.append(url_path)


def _list_pages(entities: list[Entity]) -> list[tuple[str, str, str, list[tuple[str, str]]]]:
    """(url path, title, intro, items): per-country city and company lists, and A-Z indexes per kind."""
    pages = []
    by_country: dict[tuple[str, str], list[Entity]] = defaultdict(list)
    for e in entities:
        if e.kind != "country":
            by_country[(e.country, e.kind)].append(e)
    plural = {"city": "Cities", "company": "Companies", "person": "People"}
    for (country, kind), members in sorted(by_country.items()):
        items = [(e.url_path, e.name) for e in sorted(members, key=lambda e: e.name)]
        pages.append((f"/lists/{kind}/{slugify(country)}.html", f"{plural[kind]} of {country}",
                      f"{plural[kind]} with an article in {SITE_NAME} that belong to {country}.", items))
    for kind in ("country", "city", "company", "person"):
        members = sorted((e for e in entities if e.kind == kind), key=lambda e: e.name)
        for start in range(0, len(members), LIST_CHUNK):
            chunk = members[start:start + LIST_CHUNK]
            title = f"Index of {kind} articles: {chunk[0].name} to {chunk[-1].name}"
            pages.append((f"/lists/index/{kind}-{start // LIST_CHUNK + 1}.html", title,
                          f"Alphabetical index of {kind} articles.", [(e.url_path, e.name) for e in chunk]))
    return pages


def generate_site(out_dir: Path, seed: int = 0) -> SiteManifest:
    """Write the whole site for `seed` under out_dir (deterministic: same seed, same bytes)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    world = build_world(seed)
    rng = random.Random(seed + 1)
    written: list[str] = []
    by_country: dict[str, list[Entity]] = defaultdict(list)
    for entity in world.entities:
        by_country[entity.country].append(entity)
    for entity in world.entities:
        neighbours = [e for e in by_country[entity.country] if e is not entity and e.kind == entity.kind]
        related = rng.sample(neighbours, min(3, len(neighbours)))
        _write(out_dir, entity.url_path, entity_page(entity, related, rng), written)
    for page in world.archived:
        _write(out_dir, page.url_path, archived_page(page), written)
    lists = _list_pages(world.entities)
    for path, title, intro, items in lists:
        _write(out_dir, path, list_page(title, intro, items), written)
    home_items = [(path, title) for path, title, _, _ in lists if path.startswith("/lists/index/")]
    _write(out_dir, "/index.html", list_page(SITE_NAME, f"{SITE_NAME} is an encyclopedia of "
                                             f"{len(world.entities)} places, companies and people.", home_items),
           written)
    manifest = SiteManifest(seed=seed, entities=world.entities, page_paths=written)
    (out_dir / MANIFEST_NAME).write_text(manifest.model_dump_json(), encoding="utf-8")
    return manifest


def load_manifest(site_dir: Path) -> SiteManifest:
    return SiteManifest.model_validate_json((Path(site_dir) / MANIFEST_NAME).read_text(encoding="utf-8"))
