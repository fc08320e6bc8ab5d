"""Web search: a local full-text index or a network provider, chosen by WebConfig.search_provider."""

from __future__ import annotations

import asyncio

from ..config import WebConfig
from ..errors import ToolError
from ..fetcher import Fetcher
from ..models import SearchResult
from .local import LocalIndex
from .remote import RemoteSearch
from .site import crawl_site


class Searcher:
    def __init__(self, config: WebConfig, fetcher: Fetcher) -> None:
        self._config = config
        self._fetcher = fetcher
        self._remote = RemoteSearch(config)
        self._local: LocalIndex | None = None
        self._local_lock = asyncio.Lock()

    async def search(self, query: str, max_results: int) -> list[SearchResult]:
        if not query.strip():
            raise ToolError("The search query is empty; say what to look for.")
        if self._config.search_provider == "local":
            index = await self.local_index()
            return await asyncio.to_thread(index.search, query, max_results)
        return await self._remote.search(query, max_results)

    async def local_index(self) -> LocalIndex:
        """The local index, built (or opened from the on-disk cache) on first use."""
        async with self._local_lock:
            if self._local is None:
                self._local = await self._build_local()
            return self._local

    async def _build_local(self) -> LocalIndex:
        config = self._config
        if config.corpus_dir is not None:
            try:
                return await asyncio.to_thread(
                    LocalIndex.for_folder, config.corpus_dir, config.index_dir, config.corpus_base_url
                )
            except FileNotFoundError as exc:
                raise ToolError(f"The local search corpus is missing: {exc}.") from None
        if config.local_site is not None:
            entries = await crawl_site(self._fetcher, config.local_site, config.local_site_max_pages)
            if not entries:
                raise ToolError(f"Nothing could be crawled from local_site {config.local_site}.")
            return await asyncio.to_thread(LocalIndex.for_entries, entries, config.index_dir)
        raise ToolError("search_provider 'local' needs corpus_dir or local_site in WebConfig.")

    async def aclose(self) -> None:
        await self._remote.aclose()
