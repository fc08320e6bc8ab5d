"""A real browser for pages that need JavaScript: Playwright driving Debian's Chromium.

One browser is shared by all agents; each browse gets a fresh context (no cookies shared between
agents), at most `browser_max_pages` at once. Chromium reaches the network only through the
GuardProxy, so the SSRF policy applies to every request a page makes, redirects and subresources
included. A browse that is cancelled or times out still closes its context.
"""

from __future__ import annotations

import asyncio
import uuid
from types import ModuleType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .addresses import HostPolicy
from .config import WebConfig
from .errors import ToolError
from .extract import html_to_text
from .models import BrowseAction
from .proxy import REFUSAL_HEADER, GuardProxy

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page, Playwright

_MAX_WAIT_MS = 10_000


def playwright_api() -> ModuleType:
    """playwright.async_api, imported at the first browse: Playwright is the optional `browser` extra, and the
    other tools work without it."""
    try:
        from playwright import async_api
    except ImportError:
        raise ToolError(
            "The browser is not available: the playwright package is not installed "
            "(pip install 'kimi-swarm[browser]'). Use fetch instead."
        ) from None
    return async_api


class BrowsedPage:
    def __init__(self, url: str, title: str, text: str, log: list[str], screenshots: list[str]) -> None:
        self.url = url
        self.title = title
        self.text = text
        self.log = log
        self.screenshots = screenshots


class BrowserPool:
    def __init__(self, config: WebConfig, policy: HostPolicy) -> None:
        self._config = config
        self._policy = policy
        self._slots = asyncio.Semaphore(config.browser_max_pages)
        self._launch_lock = asyncio.Lock()
        self._proxy = GuardProxy(policy, config.connect_timeout_s)
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
            api = playwright_api()
            proxy_url = await self._proxy.start()
            if self._playwright is None:
                self._playwright = await api.async_playwright().start()
            self._browser = await self._playwright.chromium.launch(
                executable_path=str(executable),
                headless=True,
                args=[f"--proxy-server={proxy_url}", "--proxy-bypass-list=<-loopback>", "--disable-dev-shm-usage"],
            )
            return self._browser

    async def browse(self, url: str, actions: list[BrowseAction]) -> BrowsedPage:
        self._policy.check_url(url)
        parts = urlsplit(url)
        await self._policy.resolve(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
        step_timeout_s = self._config.browser_timeout_s
        async with self._slots:
            browser = await self._ensure_browser()
            api = playwright_api()
            context = await browser.new_context(
                user_agent=self._config.user_agent, service_workers="block", accept_downloads=False
            )
            self.open_contexts += 1
            try:
                page = await context.new_page()
                page.set_default_timeout(step_timeout_s * 1000)
                async with asyncio.timeout(step_timeout_s * (1 + len(actions)) + 1):
                    return await self._run(page, url, actions)
            except (TimeoutError, api.TimeoutError):
                raise ToolError(
                    f"Browsing {url} took longer than {step_timeout_s:g} s and was stopped; the site is slow "
                    "or unreachable. Try again later or use another source."
                ) from None
            except api.Error as exc:
                reason = exc.message.splitlines()[0]
                if "ERR_TUNNEL_CONNECTION_FAILED" in reason or "ERR_PROXY" in reason:
                    reason += " (the page or one of its redirects leads to a host the web tools refuse or cannot reach)"
                elif "Download is starting" in reason:
                    reason += " (the URL is a file, not a page: use fetch to read it)"
                elif not browser.is_connected():
                    reason += " (the browser process ended; browse again and a new browser starts)"
                raise ToolError(f"The browser failed on {url}: {reason}") from None
            finally:
                try:
                    await asyncio.shield(context.close())
                finally:
                    self.open_contexts -= 1

    async def _run(self, page: Page, url: str, actions: list[BrowseAction]) -> BrowsedPage:
        response = await page.goto(url, wait_until="load")
        if response is not None and response.headers.get(REFUSAL_HEADER.lower()):
            raise ToolError(await response.text())
        if response is None or response.status >= 400:
            status = f"HTTP {response.status}" if response is not None else "no response"
            raise ToolError(f"{page.url} answered {status} in the browser.")
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
        if action.action in ("click", "fill", "wait_for") and not action.selector:
            raise ToolError(f"The {action.action} action needs a selector.")
        selector = action.selector or ""
        try:
            if action.action == "click":
                await page.click(selector)
                await page.wait_for_load_state("load")
                return f"clicked {selector}"
            if action.action == "fill":
                await page.fill(selector, action.text or "")
                return f"filled {selector}"
            if action.action == "press":
                await page.press(action.selector or "body", action.text or "Enter")
                await page.wait_for_load_state("load")
                return f"pressed {action.text or 'Enter'}"
            if action.action == "scroll":
                await page.mouse.wheel(0, action.amount or 2000)
                return f"scrolled {action.amount or 2000} px"
            if action.action == "wait_for":
                await page.wait_for_selector(selector)
                return f"{selector} appeared"
            if action.action == "wait":
                wait_ms = min(action.amount or 1000, _MAX_WAIT_MS)
                await page.wait_for_timeout(wait_ms)
                return f"waited {wait_ms} ms"
            path = self._config.screenshot_dir / f"{uuid.uuid4().hex}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(path), full_page=True)
            screenshots.append(str(path))
            return f"screenshot saved to {path}"
        except playwright_api().Error as exc:
            raise ToolError(f"The {action.action} action failed: {exc.message.splitlines()[0]}") from None

    async def aclose(self) -> None:
        if self._browser is not None:
            await self._browser.close()
            self._browser = None
        if self._playwright is not None:
            await self._playwright.stop()
            self._playwright = None
        await self._proxy.aclose()
