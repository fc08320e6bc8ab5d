"""Downloads one URL safely: checked hosts on every hop, bounded redirects, size and time caps.

Bodies are streamed and abandoned as soon as they pass `max_bytes` (decoded size, so compression
bombs stop too); the whole request, redirects and body included, runs under one deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.message
import hashlib
from urllib.parse import urljoin, urlsplit

import httpx

from .addresses import HostPolicy
from .cache import ContentCache
from .config import WebConfig
from .errors import ToolError
from .extract import body_to_text
from .limits import HostLimiter
from .models import Document
from .transport import guarded_client


def cache_key(url: str) -> str:
    """The URL without its fragment, in httpx's normal form, so spellings of one URL share an entry."""
    try:
        return str(httpx.URL(url).copy_with(fragment=None))
    except (httpx.InvalidURL, TypeError) as exc:
        raise ToolError(f"{url!r} is not a valid URL: {exc}.") from None


def _charset(content_type: str) -> str | None:
    message = email.message.Message()
    message["content-type"] = content_type
    charset = message.get_param("charset")
    return charset if isinstance(charset, str) else None


class RawResponse:
    def __init__(self, url: str, status: int, headers: httpx.Headers, body: bytes) -> None:
        self.url = url
        self.status = status
        self.headers = headers
        self.content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        self.charset = _charset(headers.get("content-type", ""))
        self.body = body


class Fetcher:
    def __init__(self, config: WebConfig) -> None:
        self.config = config
        self.policy = HostPolicy(config.allowed_hosts)
        self._client = guarded_client(self.policy, config.user_agent, config.connect_timeout_s)
        self._limiter = HostLimiter(config.per_host_concurrency, config.per_host_rate)
        self._documents: ContentCache[Document] = ContentCache(config.cache_ttl_s, config.cache_max_entries)

    async def document(self, url: str) -> Document:
        """The readable text of `url`, from the shared cache or from one download."""
        self.policy.check_url(url)
        return await self._documents.get_or_fetch(cache_key(url), lambda: self._download_document(url))

    async def _download_document(self, url: str) -> tuple[str, Document]:
        raw = await self.download(url)
        title, text, media_type = await asyncio.to_thread(
            body_to_text, raw.body, raw.content_type, raw.charset, raw.url
        )
        document = Document(url=raw.url, title=title, text=text, content_type=media_type, status=raw.status)
        return hashlib.sha256(raw.body).hexdigest(), document

    async def download(self, url: str, polite: bool = True) -> RawResponse:
        """GETs `url`, following at most `max_redirects` redirects, each hop checked like the first.

        `polite=False` skips the per-host rate limit, for crawling the user's own local site.
        """
        try:
            async with asyncio.timeout(self.config.timeout_s):
                return await self._follow(url, polite)
        except TimeoutError:
            raise ToolError(
                f"Fetching {url} took longer than {self.config.timeout_s:g} s and was stopped; the server is "
                "slow or the response is endless. Try again later or another source."
            ) from None
        except httpx.HTTPError as exc:
            raise ToolError(f"Could not fetch {url}: {type(exc).__name__}: {exc or 'connection failed'}.") from None

    async def _follow(self, url: str, polite: bool) -> RawResponse:
        current = url
        for _ in range(self.config.max_redirects + 1):
            self.policy.check_url(current)
            host = urlsplit(current).netloc.lower()
            async with self._limiter.slot(host) if polite else contextlib.nullcontext():
                async with self._client.stream("GET", current) as response:
                    if response.is_redirect:
                        current = urljoin(current, response.headers["location"])
                        continue
                    if response.status_code >= 400:
                        raise ToolError(f"{current} answered HTTP {response.status_code} {response.reason_phrase}.")
                    body = await self._read_capped(response, current)
                    return RawResponse(str(response.url), response.status_code, response.headers, body)
        raise ToolError(f"{url} redirected more than {self.config.max_redirects} times; stopped following.")

    async def _read_capped(self, response: httpx.Response, url: str) -> bytes:
        limit = self.config.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ToolError(f"{url} is {int(declared)} bytes, over the {limit}-byte limit; it was not downloaded.")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise ToolError(f"{url} is larger than the {limit}-byte limit; the download was stopped.")
            chunks.append(chunk)
        return b"".join(chunks)

    async def aclose(self) -> None:
        await self._documents.aclose()
        await self._client.aclose()
