"""browse with real headless Chromium (Debian's, through Playwright) against loopback servers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import pytest_asyncio
from tools_support import LoopbackSite, page, redirect, respond

from kimi_swarm.tools import BrowseAction, ToolError, Web, WebConfig

pytestmark = pytest.mark.asyncio(loop_scope="module")

JS_PAGE = """<html><head><title>Harbour timetable</title></head><body><div id="app">Loading...</div>
<script>setTimeout(() => { document.getElementById('app').innerHTML =
  '<article><h1>Ferry departures</h1><p>' + 'The 07:45 ferry to Ushant leaves from pier 3 every weekday. '.repeat(4)
  + '</p></article>'; }, 200);</script></body></html>"""

FORM_PAGE = """<html><head><title>Echo form</title></head><body>
<input id="name"><button id="go" onclick="document.getElementById('out').textContent =
  'Hello, ' + document.getElementById('name').value + '! Your booking is confirmed.'">Go</button>
<p id="out"></p></body></html>"""


SCROLL_PAGE = """<html><head><title>Feed</title></head><body><div style="height: 3000px">First story.</div>
<div id="more"></div><script>window.addEventListener('scroll', () => {
  if (window.scrollY > 1000) document.getElementById('more').textContent = 'More stories loaded after scrolling.';
});</script></body></html>"""


def leaky_page(port: int) -> str:
    return f"""<html><head><title>Leaky</title></head><body><article><p>{"Visible article text. " * 10}</p></article>
<img src="http://localhost:{port}/secret-image">
<script>fetch('http://localhost:{port}/secret-fetch').catch(() => {{}});
fetch('http://169.254.169.254/latest/meta-data/').catch(() => {{}});</script></body></html>"""


def slow_page(request: BaseHTTPRequestHandler) -> None:
    time.sleep(0.5)
    respond(request, "<html><body><article><p>" + "Slow but complete page. " * 10 + "</p></article></body></html>")


def stalled_page(request: BaseHTTPRequestHandler) -> None:
    time.sleep(6)
    respond(request, "<html><body>too late</body></html>")


@pytest.fixture(scope="module")
def site():
    with LoopbackSite({}) as served:
        served.routes.update(
            {
                "/js": page(JS_PAGE),
                "/form": page(FORM_PAGE),
                "/feed": page(SCROLL_PAGE),
                "/hop": redirect("/js"),
                "/hop-to-localhost": redirect(f"http://localhost:{served.port}/js"),
                "/leaky": page(leaky_page(served.port)),
                "/slow": slow_page,
                "/stalled": stalled_page,
            }
        )
        yield served


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def web(site, tmp_path_factory):
    config = WebConfig(
        allowed_hosts=[site.host],
        browser_max_pages=2,
        browser_timeout_s=2,
        per_host_rate=1000,
        screenshot_dir=tmp_path_factory.mktemp("shots"),
    )
    async with Web(config) as tools:
        yield tools


async def test_content_rendered_by_javascript_is_read(web, site):
    fetched = await web.fetch(site.url("/js"))
    assert "Ushant" not in fetched.text
    browsed = await web.browse(site.url("/js"), [BrowseAction(action="wait_for", selector="article")])
    assert "The 07:45 ferry to Ushant leaves from pier 3" in browsed.text
    assert browsed.title in ("Ferry departures", "Harbour timetable")
    assert "Loading..." not in browsed.text


async def test_fill_click_and_screenshot(web, site):
    result = await web.browse(
        site.url("/form"),
        [
            {"action": "fill", "selector": "#name", "text": "Ada"},
            {"action": "click", "selector": "#go"},
            {"action": "screenshot"},
        ],
    )
    assert "Hello, Ada! Your booking is confirmed." in result.text
    assert len(result.screenshots) == 1
    assert Path(result.screenshots[0]).read_bytes().startswith(b"\x89PNG")
    assert [line.split(": ", 1)[1].split(" ")[0] for line in result.log] == ["filled", "clicked", "screenshot"]


async def test_scroll_and_press(web, site):
    unscrolled = await web.browse(site.url("/feed"))
    assert "More stories loaded" not in unscrolled.text
    scrolled = await web.browse(
        site.url("/feed"),
        [{"action": "scroll", "amount": 2500}, {"action": "wait_for", "selector": "#more:not(:empty)"}],
    )
    assert "More stories loaded after scrolling." in scrolled.text
    pressed = await web.browse(
        site.url("/form"),
        [
            {"action": "fill", "selector": "#name", "text": "Lin"},
            {"action": "press", "selector": "#go", "text": "Enter"},
        ],
    )
    assert "Hello, Lin!" in pressed.text


async def test_redirects_are_followed_in_the_browser(web, site):
    result = await web.browse(site.url("/hop"), [{"action": "wait_for", "selector": "article"}])
    assert result.url == site.url("/js")
    assert "Ushant" in result.text


async def test_browser_redirect_to_a_non_allowed_host_is_refused(web, site):
    with pytest.raises(ToolError, match="localhost .*loopback"):
        await web.browse(site.url("/hop-to-localhost"))


async def test_page_requests_to_non_allowed_hosts_never_leave(web, site):
    result = await web.browse(site.url("/leaky"), [{"action": "wait", "amount": 300}])
    assert "Visible article text." in result.text
    assert site.hits["/secret-image"] == 0
    assert site.hits["/secret-fetch"] == 0


async def test_browser_refuses_private_targets_up_front(web):
    with pytest.raises(ToolError, match="cloud metadata"):
        await web.browse("http://169.254.169.254/latest/meta-data/")
    with pytest.raises(ToolError, match="only http"):
        await web.browse("file:///etc/passwd")


async def test_concurrency_is_capped_by_the_context_pool(web, site):
    site.max_active = 0
    started = time.monotonic()
    results = await asyncio.gather(*(web.browse(site.url(f"/slow?agent={n}")) for n in range(4)))
    assert all("Slow but complete page." in result.text for result in results)
    assert site.max_active <= 2
    assert time.monotonic() - started >= 1.0  # two waves of two 0.5 s pages
    assert web.browser.open_contexts == 0


async def test_cancelled_browse_closes_its_context(web, site):
    task = asyncio.create_task(web.browse(site.url("/stalled")))
    await asyncio.sleep(1.0)
    assert web.browser.open_contexts == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert web.browser.open_contexts == 0
    assert "Ushant" in (await web.browse(site.url("/js"), [{"action": "wait_for", "selector": "article"}])).text


async def test_page_timeout_is_a_tool_error(web, site):
    with pytest.raises(ToolError, match="longer than 2 s"):
        await web.browse(site.url("/stalled"))
    assert web.browser.open_contexts == 0


async def test_failed_action_and_bad_actions_are_tool_errors(web, site):
    with pytest.raises(ToolError, match="click action failed"):
        await web.browse(site.url("/form"), [{"action": "click", "selector": "#missing"}])
    with pytest.raises(ToolError, match="actions are not valid"):
        await web.browse(site.url("/form"), [{"action": "teleport"}])


async def test_missing_chromium_is_reported(site, tmp_path):
    config = WebConfig(allowed_hosts=[site.host], browser_executable=tmp_path / "no-chromium")
    async with Web(config) as web:
        with pytest.raises(ToolError, match="does not exist"):
            await web.browse(site.url("/js"))


async def test_without_playwright_the_tools_load_and_browse_names_the_extra(site):
    """Playwright is the optional `browser` extra: without it search and fetch work, and browse says what to
    install (a subprocess where importing playwright fails)."""
    probe = f"""
import asyncio, sys
sys.modules["playwright"] = None
from kimi_swarm.launch import offline_web_tools
from kimi_swarm.tools import ToolError, Web, WebConfig

async def main():
    async with Web(WebConfig(allowed_hosts=["{site.host}"], browser_executable=sys.executable)) as web:
        assert "Ushant" not in (await web.fetch("{site.url('/js')}")).text
        try:
            await web.browse("{site.url('/js')}")
        except ToolError as error:
            print(error)

asyncio.run(main())
"""
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", probe], capture_output=True, text=True,
                                   timeout=60)
    assert done.returncode == 0, done.stderr
    assert "playwright package is not installed (pip install 'kimi-swarm[browser]')" in done.stdout
