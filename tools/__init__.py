"""Tools for agents: web search, fetch and a real browser, safe by default, `rank`, and MCP tool servers.

    async with Web(WebConfig(search_provider="local", corpus_dir=Path("docs"))) as web:
        results = await web.search("json dumps indent")
        page = await web.fetch(results[0].url)

Module-level `search`, `fetch` and `browse` use a lazily created default `Web()`, one per event loop
(its connections, locks and browser belong to the loop that made them). Tools that return web content
are marked `untrusted_output`; the swarm wraps their output as untrusted data for the model.
"""

from __future__ import annotations

import asyncio
import weakref

from .config import LIVE_SEARCH_PROVIDERS, SEARCH_PROVIDERS, SearchProvider, WebConfig
from .errors import ToolError
from .mcp import MCPServer, MCPServerError, MCPTool
from .models import BrowseAction, BrowseResult, Page, SearchResult, search_results_text
from .rank import rank
from .untrusted import has_untrusted_output, untrusted_output, wrap_untrusted
from .web import Web

_default_webs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Web] = weakref.WeakKeyDictionary()


def default_web() -> Web:
    """The running event loop's default `Web()`, created on first use."""
    loop = asyncio.get_running_loop()
    web = _default_webs.get(loop)
    if web is None:
        web = _default_webs[loop] = Web()
    return web


@untrusted_output
async def search(query: str, max_results: int = 8) -> list[SearchResult]:
    return await default_web().search(query, max_results)


@untrusted_output
async def fetch(url: str, page: int = 1) -> Page:
    return await default_web().fetch(url, page)


@untrusted_output
async def browse(url: str, actions: list[BrowseAction] | None = None, page: int = 1) -> BrowseResult:
    return await default_web().browse(url, actions, page)


search.__doc__ = Web.search.__doc__
fetch.__doc__ = Web.fetch.__doc__
browse.__doc__ = Web.browse.__doc__

__all__ = [
    "LIVE_SEARCH_PROVIDERS",
    "SEARCH_PROVIDERS",
    "BrowseAction",
    "BrowseResult",
    "MCPServer",
    "MCPServerError",
    "MCPTool",
    "Page",
    "SearchProvider",
    "SearchResult",
    "ToolError",
    "Web",
    "WebConfig",
    "browse",
    "default_web",
    "fetch",
    "has_untrusted_output",
    "rank",
    "search",
    "search_results_text",
    "untrusted_output",
    "wrap_untrusted",
]
