"""Web tools for agents: search, fetch and a real browser, safe by default.

    async with Web(WebConfig(search_provider="local", corpus_dir=Path("docs"))) as web:
        results = await web.search("json dumps indent")
        page = await web.fetch(results[0].url)

Module-level `search`, `fetch` and `browse` use a lazily created default `Web()`, one per event loop
(its connections, locks and browser belong to the loop that made them).
"""

from __future__ import annotations

import asyncio
import weakref

from pydantic import BaseModel

from tools.config import WebConfig
from tools.errors import ToolError
from tools.models import BrowseAction, BrowseResult, Page, SearchResult, search_results_text
from tools.untrusted import wrap_untrusted
from tools.web import Web

_default_webs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Web] = weakref.WeakKeyDictionary()


def default_web() -> Web:
    """The running event loop's default `Web()`, created on first use."""
    loop = asyncio.get_running_loop()
    web = _default_webs.get(loop)
    if web is None:
        web = _default_webs[loop] = Web()
    return web


async def search(query: str, max_results: int = 8) -> list[SearchResult]:
    return await default_web().search(query, max_results)


async def fetch(url: str, page: int = 1) -> Page:
    return await default_web().fetch(url, page)


async def browse(url: str, actions: list[BrowseAction] | None = None, page: int = 1) -> BrowseResult:
    return await default_web().browse(url, actions, page)


search.__doc__ = Web.search.__doc__
fetch.__doc__ = Web.fetch.__doc__
browse.__doc__ = Web.browse.__doc__


def agent_text(result: BaseModel | list[SearchResult], source: str) -> str:
    """A tool result as the text placed in an agent's context, wrapped as untrusted web content."""
    if isinstance(result, list):
        return wrap_untrusted(search_results_text(result), source)
    if isinstance(result, (Page, BrowseResult)):
        return wrap_untrusted(result.to_text(), result.url)
    return wrap_untrusted(result.model_dump_json(indent=2), source)


__all__ = [
    "BrowseAction",
    "BrowseResult",
    "Page",
    "SearchResult",
    "ToolError",
    "Web",
    "WebConfig",
    "agent_text",
    "browse",
    "default_web",
    "fetch",
    "search",
    "search_results_text",
    "wrap_untrusted",
]
