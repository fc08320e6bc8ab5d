"""Search providers on the network: SearXNG's JSON API, DuckDuckGo's HTML page, Brave and Tavily.

Their endpoints come from the user's configuration, not from agents, so they are reached with an
ordinary client; keys come from the environment (BRAVE_API_KEY, TAVILY_API_KEY, SEARXNG_URL).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import lxml.html

from ..config import WebConfig
from ..errors import ToolError
from ..models import SearchResult


def plain(fragment: str) -> str:
    """Text of an HTML snippet (providers mark matches with <strong>/<b>)."""
    if not fragment.strip():
        return ""
    return " ".join(lxml.html.fragment_fromstring(fragment, create_parent="div").text_content().split())


class RemoteSearch:
    def __init__(self, config: WebConfig) -> None:
        self._config = config
        self._client = httpx.AsyncClient(
            trust_env=False, timeout=config.timeout_s, headers={"User-Agent": config.user_agent}, follow_redirects=True
        )

    async def search(self, query: str, max_results: int) -> list[SearchResult]:
        provider = self._config.search_provider
        handler = {
            "searxng": self._searxng,
            "duckduckgo": self._duckduckgo,
            "brave": self._brave,
            "tavily": self._tavily,
        }[provider]
        try:
            results = await handler(query, max_results)
        except httpx.HTTPStatusError as exc:
            raise ToolError(
                f"The {provider} search service answered HTTP {exc.response.status_code}; try again later."
            ) from None
        except httpx.HTTPError as exc:
            raise ToolError(
                f"The {provider} search service could not be reached: {exc or type(exc).__name__}."
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ToolError(f"The {provider} search service sent an answer that could not be read: {exc}.") from None
        return results[:max_results]

    async def _searxng(self, query: str, max_results: int) -> list[SearchResult]:
        if not self._config.searxng_url:
            raise ToolError("search_provider 'searxng' needs searxng_url (or the SEARXNG_URL environment variable).")
        url = urljoin(self._config.searxng_url.rstrip("/") + "/", "search")
        response = await self._client.get(url, params={"q": query, "format": "json"})
        response.raise_for_status()
        return [
            SearchResult(
                title=item.get("title") or item["url"],
                url=item["url"],
                snippet=plain(item.get("content") or ""),
                provider="searxng",
            )
            for item in response.json()["results"]
        ]

    async def _duckduckgo(self, query: str, max_results: int) -> list[SearchResult]:
        response = await self._client.post(self._config.duckduckgo_url, data={"q": query})
        response.raise_for_status()
        page = lxml.html.fromstring(response.text)
        results = []
        for item in page.xpath(_has_class("div", "result")):
            links = item.xpath("." + _has_class("a", "result__a"))
            if not links or "result--ad" in (item.get("class") or ""):
                continue
            snippets = item.xpath("." + _has_class("*", "result__snippet"))
            results.append(
                SearchResult(
                    title=" ".join(links[0].text_content().split()),
                    url=_duckduckgo_target(links[0].get("href", "")),
                    snippet=" ".join(snippets[0].text_content().split()) if snippets else "",
                    provider="duckduckgo",
                )
            )
        return results

    async def _brave(self, query: str, max_results: int) -> list[SearchResult]:
        key = self._config.brave_api_key
        if key is None:
            raise ToolError("search_provider 'brave' needs an API key in the BRAVE_API_KEY environment variable.")
        response = await self._client.get(
            self._config.brave_url,
            params={"q": query, "count": min(max_results, 20)},
            headers={"X-Subscription-Token": key.get_secret_value(), "Accept": "application/json"},
        )
        response.raise_for_status()
        items: list[dict[str, Any]] = response.json().get("web", {}).get("results", [])
        return [
            SearchResult(
                title=plain(item["title"]),
                url=item["url"],
                snippet=plain(item.get("description", "")),
                provider="brave",
            )
            for item in items
        ]

    async def _tavily(self, query: str, max_results: int) -> list[SearchResult]:
        key = self._config.tavily_api_key
        if key is None:
            raise ToolError("search_provider 'tavily' needs an API key in the TAVILY_API_KEY environment variable.")
        response = await self._client.post(
            self._config.tavily_url,
            json={"query": query, "max_results": max_results},
            headers={"Authorization": f"Bearer {key.get_secret_value()}"},
        )
        response.raise_for_status()
        return [
            SearchResult(
                title=item.get("title") or item["url"],
                url=item["url"],
                snippet=item.get("content", ""),
                provider="tavily",
            )
            for item in response.json()["results"]
        ]

    async def aclose(self) -> None:
        await self._client.aclose()


def _has_class(tag: str, name: str) -> str:
    return f"//{tag}[contains(concat(' ', normalize-space(@class), ' '), ' {name} ')]"


def _duckduckgo_target(href: str) -> str:
    """DuckDuckGo links go through /l/?uddg=<target>; agents need the target itself."""
    parts = urlsplit(href)
    if parts.path.startswith("/l/"):
        target = parse_qs(parts.query).get("uddg")
        if target:
            return target[0]
    return urljoin("https://duckduckgo.com/", href)
