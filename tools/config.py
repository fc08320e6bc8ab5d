"""Settings of the web tools: providers, keys from the environment, limits and the SSRF allow-list."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, Field, SecretStr, field_validator

SearchProvider = Literal["local", "searxng", "duckduckgo", "brave", "tavily"]
SEARCH_PROVIDERS: tuple[str, ...] = get_args(SearchProvider)
LIVE_SEARCH_PROVIDERS = tuple(provider for provider in SEARCH_PROVIDERS if provider != "local")
"""Providers on the live web (keys and URLs from BRAVE_API_KEY, TAVILY_API_KEY, SEARXNG_URL); 'local' searches
files or a site of your own."""


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _env_secret(name: str) -> SecretStr | None:
    value = _env(name)
    return SecretStr(value) if value else None


def _default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kimi-swarm"


class WebConfig(BaseModel):
    """Everything `Web` needs; defaults are safe for untrusted agents on the public web."""

    search_provider: SearchProvider = "duckduckgo"
    corpus_dir: Path | None = Field(default=None, description="Folder of HTML/Markdown/text files for 'local'.")
    corpus_base_url: str | None = Field(
        default=None, description="Where corpus_dir is served; local results then get fetchable http(s) URLs."
    )
    local_site: str | None = Field(default=None, description="Base URL of a site to crawl and index for 'local'.")
    local_site_max_pages: int = Field(default=2000, ge=1)
    index_dir: Path = Field(default_factory=lambda: _default_cache_root() / "search-index")

    searxng_url: str | None = Field(default_factory=lambda: _env("SEARXNG_URL"))
    duckduckgo_url: str = "https://html.duckduckgo.com/html/"
    brave_url: str = "https://api.search.brave.com/res/v1/web/search"
    brave_api_key: SecretStr | None = Field(default_factory=lambda: _env_secret("BRAVE_API_KEY"))
    tavily_url: str = "https://api.tavily.com/search"
    tavily_api_key: SecretStr | None = Field(default_factory=lambda: _env_secret("TAVILY_API_KEY"))

    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Exact hosts (optionally host:port) that may resolve to private or loopback addresses.",
    )
    user_agent: str = "kimi-swarm-web/0.1 (+research agent)"
    max_redirects: int = Field(default=5, ge=0)
    max_bytes: int = Field(default=10 * 1024 * 1024, gt=0, description="Largest body read from one response.")
    timeout_s: float = Field(default=20.0, gt=0, description="Whole-request deadline, body included.")
    connect_timeout_s: float = Field(default=10.0, gt=0)
    page_chars: int = Field(default=12_000, ge=500, description="Characters of text per page of a fetch result.")
    per_host_concurrency: int = Field(default=4, ge=1)
    per_host_rate: float = Field(default=5.0, gt=0, description="Request starts per second to one host.")
    cache_ttl_s: float = Field(default=900.0, ge=0)
    cache_max_entries: int = Field(default=1024, ge=1)

    browser_executable: Path = Path("/usr/bin/chromium")
    browser_max_pages: int = Field(default=8, ge=1, description="Browser contexts open at once, for all agents.")
    browser_timeout_s: float = Field(default=30.0, gt=0, description="Limit for loading a page and for each action.")
    screenshot_dir: Path = Field(default_factory=lambda: Path(tempfile.gettempdir()) / "kimi-swarm-screenshots")

    @field_validator("allowed_hosts")
    @classmethod
    def _lowercase_hosts(cls, hosts: list[str]) -> list[str]:
        return [host.strip().lower() for host in hosts if host.strip()]

    @field_validator("corpus_base_url", "local_site", "searxng_url")
    @classmethod
    def _http_base(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"{url!r} must be an http:// or https:// URL")
        return url
