"""The offline web: deterministic generation, short linked pages, a closed held-out split, a real server."""

from __future__ import annotations

import random
import re
from pathlib import Path

import httpx
import pytest

from kimi_swarm.offline_web import OfflineWeb, generate_site, load_manifest
from kimi_swarm.offline_web.site import MANIFEST_NAME
from kimi_swarm.offline_web.tasks import compare_task, grade, sample_task, table_rows
from kimi_swarm.tools.rank import DESCENDING, rank

HREF = re.compile(r'href="([^"]+)"')
TAGS = re.compile(r"<[^>]+>")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("site")
    return root, generate_site(root, seed=0)


def test_site_is_deterministic_per_seed(site, tmp_path):
    root, manifest = site
    again = generate_site(tmp_path / "again", seed=0)
    assert again == manifest
    for path in manifest.page_paths[::97]:
        assert (tmp_path / "again" / path.lstrip("/")).read_bytes() == (root / path.lstrip("/")).read_bytes()
    other = generate_site(tmp_path / "other", seed=1)
    assert {e.name for e in other.entities} != {e.name for e in manifest.entities}


def test_site_has_enough_short_pages_of_every_kind(site):
    root, manifest = site
    assert len(manifest.page_paths) >= 2000
    assert {e.kind for e in manifest.entities} == {"country", "city", "company", "person"}
    assert len({e.name for e in manifest.entities}) == len(manifest.entities)
    for entity in manifest.entities:
        html = (root / entity.url_path.lstrip("/")).read_text()
        text = TAGS.sub("", html)
        assert len(text.encode()) < 1500, entity.url_path
        assert html.index('class="infobox"') < html.index("<p>")
        for label, value in entity.facts.items():
            assert f"<th>{label}</th>" in html and value in html


def test_every_link_resolves_to_a_page(site):
    root, manifest = site
    for path in manifest.page_paths:
        for target in HREF.findall((root / path.lstrip("/")).read_text()):
            assert (root / target.lstrip("/")).is_file() or target == "/", (path, target)


def test_links_name_entities_with_the_linked_facts(site):
    _, manifest = site
    for entity in manifest.entities:
        for label, path in entity.links.items():
            assert manifest.by_path(path).name == entity.facts[label]


def test_near_duplicates_and_archived_copies_exist(site):
    root, manifest = site
    names = {e.name for e in manifest.entities}
    prefixed = [n for n in names if n.split(" ", 1)[0] in {"North", "New", "Port", "Upper"} and n.split(" ", 1)[1] in names]
    assert len(prefixed) >= 10
    archived = [p for p in manifest.page_paths if p.startswith("/archive/")]
    assert len(archived) >= 100
    html = (root / archived[0].lstrip("/")).read_text()
    assert "archived" in html and "out of date" in html


def test_heldout_split_is_closed(site):
    root, manifest = site
    heldout = [e for e in manifest.entities if e.split == "heldout"]
    train = [e for e in manifest.entities if e.split == "train"]
    assert len(heldout) >= 200 and len(train) >= 1500
    heldout_names = re.compile(r"\b(" + "|".join(re.escape(e.name) for e in heldout) + r")\b")
    for entity in train:
        text = (root / entity.url_path.lstrip("/")).read_text()
        assert not heldout_names.search(text), entity.url_path
        assert all(manifest.by_path(p).split == "train" for p in entity.links.values())


def test_entity_numbers_parse_from_facts(site):
    _, manifest = site
    city = manifest.of("city")[0]
    assert city.number("Population") == int(city.facts["Population"].replace(",", ""))
    with pytest.raises(ValueError, match="not numeric"):
        city.number("Mayor")


def test_server_serves_the_site_and_reuses_the_cache(tmp_path):
    with OfflineWeb.start(seed=0, cache_dir=tmp_path) as web:
        assert web.base_url == f"http://{web.host_port}/" and web.host_port.startswith("127.0.0.1:")
        assert (web.site_dir / MANIFEST_NAME).is_file()
        assert load_manifest(web.site_dir) == web.manifest
        entity = web.manifest.of("city", "heldout")[0]
        page = httpx.get(web.url(entity.url_path))
        assert page.status_code == 200 and entity.facts["Population"] in page.text
        assert httpx.get(web.url("/city/no-such-place.html")).status_code == 404
        first_dir, port = web.site_dir, web.host_port
        marker = web.site_dir / "index.html"
        stamp = marker.stat().st_mtime_ns
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{port}/index.html")
    with OfflineWeb.start(seed=0, cache_dir=tmp_path) as again:
        assert again.site_dir == first_dir and marker.stat().st_mtime_ns == stamp


@pytest.mark.parametrize("phrase, pick", [("earliest", min), ("most recently", max), ("largest", max),
                                          ("smallest", min), ("most", max), ("fewest", min)])
def test_comparison_answers_follow_the_wording(site, phrase, pick):
    _, manifest = site
    rng = random.Random(0)
    tasks = [compare_task(manifest, "train", rng, 3) for _ in range(200)]
    matching = [t for t in tasks if re.search(rf"\b{phrase}\b", t.prompt)]
    assert matching
    for task in matching:
        numbers = {lk.entity: manifest.by_path(lk.url_path).number(task.attribute) for lk in task.waves[0]}
        assert task.answer == pick(numbers, key=numbers.get), task.prompt


BASE = "http://127.0.0.1:8000"


@pytest.mark.parametrize("family", ["compare", "table", "two_hop"])
def test_grade_gives_the_teachers_answer_full_marks(site, family):
    _, manifest = site
    task = sample_task(manifest, family, "heldout", random.Random(5), 4)
    score = grade(task, task.final_answer(BASE), BASE)
    assert score.correct == score.cited == score.total == (4 if family == "table" else 1)


def test_grade_wants_the_winners_own_value_and_page(site):
    """A right name with a wrong value, a value inside a longer number, or another page are not full marks."""
    _, manifest = site
    task = sample_task(manifest, "compare", "heldout", random.Random(5), 3)
    answer = task.final_answer(BASE)
    line = next(line for line in answer.splitlines() if line.startswith("Answer:"))
    value = task.winner().value
    other = next(lk for lk in task.waves[0] if lk.entity != task.answer)
    assert grade(task, answer.replace(line, line.replace(value, "9" + value)), BASE).correct == 0
    assert grade(task, answer.replace(line, line.replace(value, value + ",000")), BASE).correct == 0
    assert grade(task, answer.replace(line, line.replace(task.answer, other.entity)), BASE).correct == 0
    moved = grade(task, answer.replace(line, line.replace(task.answer_url_path, other.url_path)), BASE)
    assert (moved.correct, moved.cited) == (1, 0)


def test_grade_counts_table_cells_one_by_one(site):
    _, manifest = site
    task = sample_task(manifest, "table", "heldout", random.Random(5), 4)
    first = task.waves[0][0]
    lines = task.final_answer(BASE).splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith(f"| {first.entity} |"))
    assert lines[row] == f"| {first.entity} | {first.value} | [{BASE}{first.url_path}] |"
    lines[row] = lines[row].replace(f" | {first.value} |", f" | 1{first.value} |")
    assert grade(task, "\n".join(lines), BASE).correct == 3


def test_table_rows_read_the_value_column_by_its_header():
    """A layout that quotes a finding before the value and a large model's usual one read alike."""
    ours = ("| City | Finding | Population |\n| --- | --- | --- |\n"
            "| Oslo | The population of Oslo is 709,037 [http://h/city/oslo.html]. | 709,037 |")
    usual = "Here it is:\n\n| City | Population | Source |\n|:--|--:|---|\n| Oslo | 709,037 | http://h/city/oslo.html |"
    for answer in (ours, usual):
        assert table_rows(answer, "population") == {"Oslo": ("709,037", "http://h/city/oslo.html")}


def test_teachers_comparison_ranks_the_findings_and_names_the_first(site):
    """The rank call carries every compared value as found and the task's direction; the tool's first line
    is the winner, whom the answer names with its finding, before listing every finding."""
    _, manifest = site
    for seed in range(8):
        task = sample_task(manifest, "compare", "heldout", random.Random(seed), 4)
        arguments = task.rank_arguments()
        assert arguments["values"] == {lk.entity: lk.value for lk in task.waves[0]}
        assert re.search(rf"\b{arguments['order']}\b", task.prompt) and (arguments["order"] in DESCENDING) == task.largest
        first = rank(**arguments).splitlines()[1]
        assert first == f"1. {task.answer}: {task.winner().value}"
        lines = task.final_answer(BASE).splitlines()
        assert lines[0] == f"Answer: {task.answer}. {task.winner().finding(BASE)}"
        assert lines[1:] == [lk.finding(BASE) for lk in task.waves[0]]
        assert grade(task, task.final_answer(BASE), BASE).correct == 1


def test_teachers_yes_no_rank_call_asks_about_the_first_entity_and_its_last_line_is_the_answer(site):
    """A yes/no question ranks like a comparison and asks about its first entity: the result's last line says
    the task's own Yes or No, which the answer copies."""
    _, manifest = site
    answers = set()
    for seed in range(12):
        task = sample_task(manifest, "yes_no", "heldout", random.Random(seed))
        arguments = task.rank_arguments()
        assert arguments["ask"] == task.waves[0][0].entity
        assert rank(**arguments).splitlines()[-1] == f"Is {arguments['ask']} first? {task.answer}."
        assert task.final_answer(BASE).startswith(f"Answer: {task.answer}. ")
        answers.add(task.answer)
    assert answers == {"Yes", "No"}
