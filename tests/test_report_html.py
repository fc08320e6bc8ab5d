"""The HTML page of a real run against the loopback fake server, opened in Debian's Chromium through Playwright:
from the RunResult, from `swarm report TRACE`, and from `swarm run --report`."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_openai import FakeOpenAI, FakeReply, swarm_script
from playwright.sync_api import Browser, Page, sync_playwright
from typer.testing import CliRunner

from kimi_swarm import AgentFinished, Swarm, tool
from kimi_swarm.backend.chat.openai_backend import OpenAIBackend
from kimi_swarm.cli import app
from kimi_swarm.tools import ToolError

CHROMIUM = Path("/usr/bin/chromium")
PAGE_URL = "http://report.test/run.html"
PAYLOAD = "<script>window.pwned=1</script>"
ANSWER = "Alpha comes first [http://facts.test/alpha-1]. <img src=x onerror=\"window.pwned=2\">"
runner = CliRunner(env={"COLUMNS": "200"})


@tool
async def lookup(query: str) -> str:
    """Looks a query up; its pages carry a script, as web pages do.

    Args:
        query: What to look up.
    """
    if "broken" in query:
        raise ToolError(f"the site is down {PAYLOAD}")
    return f"Fact about {query}. {PAYLOAD} Source: http://facts.test/{query.replace(' ', '-')}"


def three_calls(request, task, results):
    """Two calls, then one more (gamma's second call fails), then an answer: 3 agents ask for 9 calls."""
    if not results:
        second = f"{task} broken" if task == "gamma" else f"{task} 2"
        return FakeReply(tool_calls=[("lookup", {"query": f"{task} 1"}), ("lookup", {"query": second})])
    if len(results) == 2:
        return FakeReply(tool_calls=[("lookup", {"query": f"{task} 3"})], prompt_tokens=17)
    return FakeReply(content=f"{task}: {results[0][:40]}", completion_tokens=9)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run with 3 sub-agents, a failing tool call and a budget refusal; its trace file beside it."""
    folder = tmp_path_factory.mktemp("run")
    with FakeOpenAI(swarm_script([["alpha", "beta", "gamma"]], three_calls, answer=ANSWER), delay=0.02) as server:
        swarm = Swarm(OpenAIBackend(server.base_url, "fake-model"), [lookup], max_tool_calls=8,
                      trace_path=folder / "trace.jsonl")
        result = swarm.run_sync("Research <em>the</em> facts.")
    assert [c.url for c in result.citations] == ["http://facts.test/alpha-1"]
    return result, folder


@pytest.fixture
def browser():
    """Per test: while Playwright's sync API is open, asyncio.run (a swarm run, the CLI) cannot run."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield launched
        launched.close()


class Opened:
    """A page served at PAGE_URL through request interception: any other request is recorded and refused."""

    def __init__(self, browser: Browser, html: str) -> None:
        self.others: list[str] = []
        self.errors: list[str] = []
        self.page: Page = browser.new_page()
        self.page.route("**/*", self._route)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("dialog", lambda dialog: (self.errors.append(f"dialog: {dialog.message}"), dialog.dismiss()))
        self._html = html
        self.page.goto(PAGE_URL)
        self.page.wait_for_load_state("load")

    def _route(self, route) -> None:
        if route.request.url == PAGE_URL:
            route.fulfill(status=200, content_type="text/html; charset=utf-8", body=self._html)
        else:
            self.others.append(route.request.url)
            route.abort()

    def text(self, selector: str) -> str:
        return self.page.locator(selector).inner_text().strip()

    def count(self, selector: str) -> int:
        return self.page.locator(selector).count()


def assert_self_contained_and_inert(opened: Opened) -> None:
    page = opened.page
    assert opened.others == [] and opened.errors == []
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page.evaluate("document.querySelectorAll('script').length") == 0
    assert PAYLOAD in page.evaluate("document.body.textContent")  # shown as text, not run
    # Nothing that a browser would fetch, even one that ignored the page's Content-Security-Policy: only links
    # (<a>) may point away, everything else is a fragment or data.
    outside = page.evaluate(r"""() => {
        const found = [...document.querySelectorAll('[src], [href], [srcset], [poster], [data], [style*="url("]')]
            .filter(e => e.localName !== 'a' || !/^(#|https?:)/.test(e.getAttribute('href') || ''))
            .filter(e => !(e.getAttribute('href') || e.getAttribute('src') || '').startsWith('data:'))
            .map(e => e.outerHTML.slice(0, 120));
        const css = [...document.querySelectorAll('style')].map(s => s.textContent).join('');
        return /url\(|@import/.test(css) ? [...found, 'stylesheet url'] : found;
    }""")
    assert outside == []


def assert_numbers_match(opened: Opened, result) -> None:
    usage = result.usage
    assert opened.text("#stat-agents") == str(usage.agents) == "3"
    assert opened.text("#stat-tool-calls") == str(usage.tool_calls) == "8"
    assert opened.text("#stat-model-calls") == str(usage.model_calls) == "11"
    assert opened.text("#stat-prompt-tokens") == str(usage.prompt_tokens)
    assert opened.text("#stat-completion-tokens") == str(usage.completion_tokens)
    assert usage.prompt_tokens == 11 * 10 + 3 * 7 and usage.completion_tokens == 11 * 5 + 3 * 4
    assert opened.text("#stat-refused-calls") == "1" and opened.text("#stat-failed-calls") == "1"
    rows = opened.page.locator("#timeline g.row")
    assert rows.count() == 1 + len(result.agents)
    assert [rows.nth(i).get_attribute("data-agent") for i in range(rows.count())] == ["0", "1", "2", "3"]
    assert opened.count("#timeline .mark.model") == usage.model_calls
    assert opened.count("#timeline .mark.tool") == 7
    assert opened.count("#timeline .mark.failed") == 1 and opened.count("#timeline .mark.refused") == 1
    failed_row = opened.page.locator("#timeline g.row:has(.mark.failed)").get_attribute("data-agent")
    assert failed_row == "3"
    colours = {kind: opened.page.eval_on_selector(f"#timeline .mark.{kind}", "e => getComputedStyle(e).fill")
               for kind in ("model", "tool", "failed", "refused")}
    assert len(set(colours.values())) == 4
    last = max((e for e in result.trace if isinstance(e, AgentFinished) and e.agent_id), key=lambda e: e.t)
    critical = opened.page.locator("#timeline g.row.critical")
    assert {critical.nth(i).get_attribute("data-agent") for i in range(critical.count())} == {"0", str(last.agent_id)}
    # Every mark sits on its agent's bar: at the times the agent was running.
    inside = opened.page.evaluate("""() => [...document.querySelectorAll('#timeline g.row')].every(row => {
        const bar = row.querySelector('.bar').getBBox();
        return [...row.querySelectorAll('.mark')].every(m => {
            const box = m.getBBox();
            return box.x >= bar.x - 0.5 && box.x <= bar.x + bar.width + 0.5; });
    })""")
    assert inside


def test_the_page_of_a_run_shows_its_timeline_numbers_sources_and_transcripts(run, browser):
    result, folder = run
    written = folder / "run.html"
    page_html = result.report_html(written)
    assert written.read_text(encoding="utf-8") == page_html
    opened = Opened(browser, page_html)

    assert_self_contained_and_inert(opened)
    assert_numbers_match(opened, result)
    assert opened.text("h1") == "Research <em>the</em> facts."
    assert opened.page.locator("#sources a.source").get_attribute("href") == "http://facts.test/alpha-1"
    assert opened.page.locator("#answer a[href='http://facts.test/alpha-1']").count() == 1
    assert "<img src=x" in opened.text("#answer") and opened.count("#answer img") == 0

    details = opened.page.locator("details#agent-2")
    assert not details.evaluate("d => d.open")
    assert not opened.page.get_by_text("Fact about beta 1.").first.is_visible()
    details.locator("summary").click()
    assert details.evaluate("d => d.open")
    assert opened.page.locator("details#agent-2 .message.tool").first.is_visible()
    assert "Fact about beta 1." in details.inner_text()
    opened.page.close()


def test_swarm_report_makes_the_page_of_the_same_run_from_its_trace(run, browser):
    result, folder = run
    outcome = runner.invoke(app, ["report", str(folder / "trace.jsonl"), "--out", str(folder / "from-trace.html")])
    assert outcome.exit_code == 0, outcome.output
    opened = Opened(browser, (folder / "from-trace.html").read_text(encoding="utf-8"))

    assert_self_contained_and_inert(opened)
    assert_numbers_match(opened, result)
    assert "transcripts" in opened.text("#trace-only")
    assert opened.text("#run-status") == f"partial ({result.stop_reason})"
    assert opened.text("#answer") == result.answer
    opened.page.locator("details#agent-3 summary").click()
    assert "the site is down" in opened.page.locator("details#agent-3").inner_text()
    opened.page.close()


def test_swarm_report_refuses_a_file_that_is_not_a_trace(tmp_path):
    bogus = tmp_path / "notes.jsonl"
    bogus.write_text('{"hello": "world"}\n')
    outcome = runner.invoke(app, ["report", str(bogus)])
    assert outcome.exit_code == 1 and "is not a swarm trace" in outcome.stderr
    assert not (tmp_path / "notes.html").exists()


def test_swarm_run_report_writes_the_page(tmp_path):
    def answering(request, task, results):
        if not results:
            return FakeReply(tool_calls=[("lookup", {"query": task})])
        return FakeReply(content=f"{results[0]} [http://facts.test/{task}]")

    with FakeOpenAI(swarm_script([["alpha", "beta"]], answering, answer="Done [http://facts.test/alpha].")) as server:
        outcome = runner.invoke(app, ["run", "Find the facts.", "--base-url", server.base_url, "--model", "fake",
                                      "--web", "none", "--tools-from", "fake_openai:CLI_TOOLS",
                                      "--report", str(tmp_path / "run.html")])
    assert outcome.exit_code == 0, outcome.output
    page = (tmp_path / "run.html").read_text(encoding="utf-8")
    assert 'id="stat-tool-calls">2<' in page and 'id="stat-agents">2<' in page
    assert page.count('class="row') == 3 and 'href="http://facts.test/alpha"' in page
