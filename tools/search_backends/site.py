"""Crawls a local site (same origin, under the base path) into entries for the local index."""

from __future__ import annotations

import asyncio
from urllib.parse import urldefrag, urljoin, urlsplit

import lxml.html

from ..errors import ToolError
from ..extract import decode_text, sniff_type
from ..fetcher import Fetcher
from .corpus import Entry, html_title_and_text

_CRAWLERS = 4


def _in_scope(url: str, base_url: str) -> bool:
    target, base = urlsplit(url), urlsplit(base_url)
    base_path = base.path if base.path.endswith("/") else base.path.rsplit("/", 1)[0] + "/"
    return (target.scheme, target.netloc) == (base.scheme, base.netloc) and target.path.startswith(base_path)


def _links(html: str, page_url: str) -> list[str]:
    try:
        tree = lxml.html.fromstring(html)
    except (ValueError, lxml.etree.ParserError):
        return []
    return [urldefrag(urljoin(page_url, href)).url for href in tree.xpath("//a/@href")]


async def crawl_site(fetcher: Fetcher, base_url: str, max_pages: int) -> list[Entry]:
    """Breadth-first crawl of up to `max_pages` HTML/text pages; pages that fail to load are skipped."""
    seen = {urldefrag(base_url).url}
    queue: asyncio.Queue[str] = asyncio.Queue()
    queue.put_nowait(urldefrag(base_url).url)
    entries: list[Entry] = []

    async def crawl_one(url: str) -> None:
        try:
            raw = await fetcher.download(url, polite=False)
        except ToolError:
            return
        media_type = sniff_type(raw.body, raw.content_type)
        if media_type not in ("text/html", "application/xhtml+xml", "text/plain", "text/markdown"):
            return
        text = decode_text(raw.body, raw.charset)
        is_html = media_type in ("text/html", "application/xhtml+xml")
        if is_html:
            title, content = await asyncio.to_thread(html_title_and_text, text)
            for link in _links(text, raw.url):
                if link not in seen and _in_scope(link, base_url) and len(seen) < max_pages:
                    seen.add(link)
                    queue.put_nowait(link)
        else:
            title, content = "", text
        entries.append(Entry(url=raw.url, title=title or raw.url, text=content, is_html=is_html))

    async def worker() -> None:
        while True:
            url = await queue.get()
            try:
                await crawl_one(url)
            finally:
                queue.task_done()

    workers = [asyncio.create_task(worker()) for _ in range(_CRAWLERS)]
    try:
        await queue.join()
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    return sorted(entries, key=lambda entry: entry.url)
