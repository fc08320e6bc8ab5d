"""A real browser for pages that need JavaScript: Playwright driving Debian's Chromium.

One browser is shared by all agents; each browse gets a fresh context (no cookies shared between
agents), at most `browser_max_pages` at once. Every request the page makes, subresources included,
is intercepted and carried out by the guarded fetcher, so the SSRF policy and its pinned addresses
apply to the browser too; Chromium itself is pointed at a dead proxy, so anything that escaped
interception fails instead of reaching the network. WebSockets are refused.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from playwright.async_api import Browser, Error as PlaywrightError, Page, Playwright, Route, WebSocketRoute
from playwright.async_api import async_playwright

from tools.config import WebConfig
from tools.errors import ToolError
from tools.extract import html_to_text
from tools.fetcher import Fetcher
from tools.models import BrowseAction

# Chromium sends anything not intercepted here: port 9 (discard) on loopback, where nothing answers.
_DEAD_PROXY = "http://127.0.0.1:9"
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-encoding", "content-length", "host"}
_MAX_WAIT_MS = 10_000


class BrowsedPage:
    def __init__(self, url: str, title: str, text: str, log: list[str], screenshots: list[str]) -> None:
        self.url = url
        self.title = title
        self.text = text
        self.log = log
        self.screenshots = screenshots


class BrowserPool:
    def __init__(self, config: WebConfig, fetcher: Fetcher) -> None:
        self._config = config
        self._fetcher = fetcher
        self._slots = asyncio.Semaphore(config.browser_max_pages)
        self._launch_lock = asyncio.Lock()
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self.open_contexts = 0

    async def _ensure_browser(self) -> Browser:
        async with self._launch_lock:
            if self._browser is not None and self._browser.is_connected():
                return self._browser
            executable = self._config.browser_executable
            if not executable.exists():
                raise ToolError(
                    f"The browser is not available: {executable} does not exist (install Debian's chromium). "
                    "Use fetch instead."
                )
            if self._playwright is None:
                self._playwright = await async_playwright().start()
            self._browser = await self._playwright.chromium.launch(
                executable_path=str(executable),
                headless=True,
                args=[f"--proxy-server={_DEAD_PROXY}", "--proxy-bypass-list=<-loopback>", "--disable-dev-shm-usage"],
            )
            return self._browser

    async def browse(self, url: str, actions: list[BrowseAction]) -> BrowsedPage:
        self._fetcher.policy.check_url(url)
        async with self._slots:
            browser = await self._ensure_browser()
            context = await browser.new_context(
                user_agent=self._config.user_agent, service_workers="block", accept_downloads=False
            )
            self.open_contexts += 1
            try:
                await context.route("**/*", self._forward)
                await context.route_web_socket("**/*", self._refuse_websocket)
                page = await context.new_page()
                page.set_default_timeout(self._config.browser_timeout_s * 1000 / 2)
                async with asyncio.timeout(self._config.browser_timeout_s):
                    return await self._run(page, url, actions)
            except TimeoutError:
                raise ToolError(
                    f"Browsing {url} took longer than {self._config.browser_timeout_s:g} s and was stopped."
                ) from None
            except PlaywrightError as exc:
                raise ToolError(f"The browser failed on {url}: {exc.message.splitlines()[0]}") from None
            finally:
                await asyncio.shield(context.close())
                self.open_contexts -= 1

    async def _run(self, page: Page, url: str, actions: list[BrowseAction]) -> BrowsedPage:
        response = await page.goto(url, wait_until="load")
        if response is None or response.status >= 400:
            status = f"HTTP {response.status}" if response is not None else "no response"
            raise ToolError(f"{url} answered {status} in the browser.")
        log: list[str] = []
        screenshots: list[str] = []
        for number, action in enumerate(actions, 1):
            log.append(f"Action {number}: " + await self._perform(page, action, screenshots))
        html = await page.content()
        title, text = await asyncio.to_thread(html_to_text, html, page.url)
        if not text:
            text = await page.inner_text("body")
        return BrowsedPage(page.url, title or await page.title(), text, log, screenshots)

    async def _perform(self, page: Page, action: BrowseAction, screenshots: list[str]) -> str:
        needs_selector = action.action in ("click", "fill", "wait_for")
        if needs_selector and not action.selector:
            raise ToolError(f"The {action.action} action needs a selector.")
        try:
            if action.action == "click":
                await page.click(action.selector)
                await page.wait_for_load_state("load")
                return f"clicked {action.selector}"
            if action.action == "fill":
                await page.fill(action.selector, action.text or "")
                return f"filled {action.selector}"
            if action.action == "press":
                await page.press(action.selector or "body", action.text or "Enter")
                await page.wait_for_load_state("load")
                return f"pressed {action.text or 'Enter'}"
            if action.action == "scroll":
                await page.mouse.wheel(0, action.amount or 2000)
                return f"scrolled {action.amount or 2000} px"
            if action.action == "wait_for":
                await page.wait_for_selector(action.selector)
                return f"{action.selector} appeared"
            if action.action == "wait":
                wait_ms = min(action.amount or 1000, _MAX_WAIT_MS)
                await page.wait_for_timeout(wait_ms)
                return f"waited {wait_ms} ms"
            path = self._config.screenshot_dir / f"{uuid.uuid4().hex}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(path), full_page=True)
            screenshots.append(str(path))
            return f"screenshot saved to {path}"
        except PlaywrightError as exc:
            raise ToolError(f"The {action.action} action failed: {exc.message.splitlines()[0]}") from None

    async def _forward(self, route: Route) -> None:
        """Carries out one browser request through the guarded fetcher, or aborts it."""
        request = route.request
        if not request.url.startswith(("http://", "https://")):
            await route.abort("blockedbyclient")
            return
        headers = {name: value for name, value in (await request.all_headers()).items() if name.lower() not in _HOP_HEADERS and not name.startswith(":")}
        try:
            raw = await self._fetcher.forward(
                request.method, request.url, headers, request.post_data_buffer, polite=request.is_navigation_request()
            )
        except ToolError:
            await route.abort("blockedbyclient")
            return
        response_headers: dict[str, str] = {}
        for name, value in raw.headers.multi_items():
            if name.lower() not in _HOP_HEADERS:
                key = name.lower()
                response_headers[key] = f"{response_headers[key]}\n{value}" if key in response_headers else value
        await route.fulfill(status=raw.status, headers=response_headers, body=raw.body)

    @staticmethod
    async def _refuse_websocket(websocket: WebSocketRoute) -> None:
        await websocket.close(code=1008, reason="WebSockets are not available to the web tools")

    async def aclose(self) -> None:
        if self._browser is not None:
            await self._browser.close()
            self._browser = None
        if self._playwright is not None:
            await self._playwright.stop()
            self._playwright = None

