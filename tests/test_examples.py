"""The example workflows as a user runs them: each script in its own process, against the offline web it
serves itself, with the offline web's programmatic teacher playing the model behind a loopback fake
OpenAI server (--base-url). Checks what they print (answer, citations, usage) and the CSV they write."""

from __future__ import annotations

import csv
import os
import random
import re
import subprocess
import sys
from pathlib import Path

from fake_openai import FakeOpenAI, teacher_script

from kimi_swarm.offline_web import ensure_site
from kimi_swarm.offline_web.tasks import Family, ResearchTask, sample_task

REPO = Path(__file__).resolve().parent.parent
SERVED = r"http://127\.0\.0\.1:\d+"


def run_example(script: str, task: ResearchTask, *args: str) -> subprocess.CompletedProcess[str]:
    manifest = ensure_site()[1]
    with FakeOpenAI(teacher_script(task, manifest)) as server:
        return subprocess.run(
            [sys.executable, str(REPO / "examples" / script), "--base-url", server.base_url, "--model", "teacher",
             "--web", "offline", *args],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120,
        )


def held_out(family: Family, size: int | None, seed: int = 0) -> ResearchTask:
    """The task the example asks by default: the same seeded draw of held-out entities."""
    return sample_task(ensure_site()[1], family, "heldout", random.Random(seed), size)


def cited_urls(stdout: str) -> list[str]:
    return re.findall(rf"^  \[\d+\] ({SERVED}/\S+)$", stdout, re.MULTILINE)


def test_comparison_prints_the_cited_answer_and_usage():
    task = held_out("compare", 4, seed=2)
    done = run_example("compare_entities.py", task, "--count", "4", "--seed", "2")

    assert done.returncode == 0, done.stderr
    assert f"Task: {task.prompt}" in done.stdout
    assert re.search(rf"^Answer: {task.answer}\. The .* of {task.answer} is .* \[{SERVED}{task.answer_url_path}\]\.$", done.stdout,
                     re.MULTILINE)
    assert sorted(url.split("/", 3)[3] for url in cited_urls(done.stdout)) == sorted(
        lookup.url_path.lstrip("/") for lookup in task.waves[0])
    assert "Usage: complete; 4 sub-agents in 1 wave(s), 9 tool calls" in done.stdout  # 4 searches, 4 fetches, 1 rank
    assert f"Expected (the offline web's facts): {task.answer}" in done.stdout


def test_wide_table_is_written_to_csv_one_cited_row_per_entity(tmp_path):
    task = held_out("table", 20, seed=1)
    out = tmp_path / "table.csv"
    done = run_example("table_to_csv.py", task, "--rows", "20", "--seed", "1", "--out", str(out))

    assert done.returncode == 0, done.stderr
    with out.open(newline="", encoding="utf-8") as handle:
        header, *rows = list(csv.reader(handle))
    assert header == [task.kind.capitalize(), task.attribute.capitalize(), "Source"]
    assert [row[0] for row in rows] == [lookup.entity for lookup in task.waves[0]]
    for (name, value, source), lookup in zip(rows, task.waves[0]):
        assert value == lookup.value, name
        assert re.fullmatch(SERVED + re.escape(lookup.url_path), source), source
    assert len(cited_urls(done.stdout)) == 20
    assert f"Wrote {out}: 20 of 20 rows filled" in done.stdout
    assert "Cells matching the offline web's facts: 20/20" in done.stdout
    assert "Usage: complete; 20 sub-agents in 1 wave(s), 40 tool calls" in done.stdout


def test_two_hop_research_runs_two_waves_and_cites_both_pages():
    task = held_out("two_hop", None, seed=4)
    done = run_example("two_hop.py", task, "--seed", "4")

    assert done.returncode == 0, done.stderr
    assert f"Task: {task.prompt}" in done.stdout
    assert re.search(rf"^Answer: {re.escape(task.answer)} \[{SERVED}{task.answer_url_path}\]\.$", done.stdout,
                     re.MULTILINE)
    hops = [wave[0].url_path for wave in task.waves]
    assert [url.split("/", 3)[3] for url in cited_urls(done.stdout)] == [path.lstrip("/") for path in hops]
    assert "Usage: complete; 2 sub-agents in 2 wave(s), 4 tool calls" in done.stdout


def test_live_web_needs_named_entities():
    done = subprocess.run([sys.executable, str(REPO / "examples" / "compare_entities.py"), "--base-url",
                           "http://127.0.0.1:9/v1", "--model", "m"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert done.returncode == 1 and "name what to compare with --entities" in done.stderr
