"""`Web`: the three tools agents call (search, fetch, browse), sharing one cache, limiter and browser."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from pydantic import TypeAdapter, ValidationError

from .browser import BrowserPool
from .config import WebConfig
from .errors import ToolError
from .fetcher import Fetcher
from .models import BrowseAction, BrowseResult, Page, SearchResult
from .paging import page_of
from .search_backends import Searcher
from .untrusted import untrusted_output

_ACTIONS = TypeAdapter(list[BrowseAction])
MAX_SEARCH_RESULTS = 50


def _with_configured_hosts(config: WebConfig) -> WebConfig:
    """Opens the hosts the user configured as local sources (their results must be fetchable)."""
    hosts = [urlsplit(url).netloc.lower() for url in (config.local_site, config.corpus_base_url) if url]
    missing = [host for host in hosts if host not in config.allowed_hosts]
    return config.model_copy(update={"allowed_hosts": [*config.allowed_hosts, *missing]}) if missing else config


class Web:
    """Web tools for agents: safe by default, shared by every agent of a run."""

    def __init__(self, config: WebConfig | None = None) -> None:
        self.config = _with_configured_hosts(config or WebConfig())
        self.fetcher = Fetcher(self.config)
        self.searcher = Searcher(self.config, self.fetcher)
        self.browser = BrowserPool(self.config, self.fetcher.policy)

    def tools(self) -> list[Callable[..., Any]]:
        return [self.search, self.fetch, self.browse]

    @untrusted_output
    async def search(self, query: str, max_results: int = 8) -> list[SearchResult]:
        """Searches the web and returns titles, URLs and snippets of the best matches.

        Args:
            query: What to look for, in plain words (for example "python json dumps indent").
            max_results: How many results to return, 1 to 50.
        """
        if not 1 <= max_results <= MAX_SEARCH_RESULTS:
            raise ToolError(f"max_results must be between 1 and {MAX_SEARCH_RESULTS}, not {max_results}.")
        return await self.searcher.search(query, max_results)

    @untrusted_output
    async def fetch(self, url: str, page: int = 1) -> Page:
        """Downloads a web page, PDF, JSON or text file and returns its main content as text.

        Long documents are split into pages; the result says how many there are.

        Args:
            url: The http:// or https:// address to read.
            page: Which page of a long document to return, starting at 1.
        """
        document = await self.fetcher.document(url)
        text, pages = page_of(document.text, self.config.page_chars, page)
        return Page(
            url=document.url,
            requested_url=url,
            title=document.title,
            text=text,
            content_type=document.content_type,
            status=document.status,
            page=page,
            pages=pages,
            total_chars=len(document.text),
        )

    @untrusted_output
    async def browse(self, url: str, actions: list[BrowseAction] | None = None, page: int = 1) -> BrowseResult:
        """Opens a page in a real browser (JavaScript runs), performs actions, and returns the text.

        Use it when fetch returns little text because the page builds its content with JavaScript, or
        to click, fill forms, scroll or take a screenshot.

        Args:
            url: The http:// or https:// address to open.
            actions: Steps to perform in order after the page loads, each one of: {"action": "click",
                "selector": "..."}, {"action": "fill", "selector": "...", "text": "..."}, {"action":
                "press", "text": "Enter"}, {"action": "scroll", "amount": 2000}, {"action": "wait_for",
                "selector": "..."}, {"action": "wait", "amount": 1000}, {"action": "screenshot"}.
            page: Which page of the resulting text to return, starting at 1.
        """
        try:
            steps = _ACTIONS.validate_python(actions or [])
        except ValidationError as exc:
            raise ToolError(
                f"The actions are not valid: {exc.errors()[0]['msg']} at {exc.errors()[0]['loc']}."
            ) from None
        browsed = await self.browser.browse(url, steps)
        text, pages = page_of(browsed.text, self.config.page_chars, page)
        return BrowseResult(
            url=browsed.url,
            requested_url=url,
            title=browsed.title,
            text=text,
            page=page,
            pages=pages,
            total_chars=len(browsed.text),
            screenshots=browsed.screenshots,
            log=browsed.log,
        )

    async def aclose(self) -> None:
        await self.browser.aclose()
        await self.searcher.aclose()
        await self.fetcher.aclose()

    async def __aenter__(self) -> Web:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()
