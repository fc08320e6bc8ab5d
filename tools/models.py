"""What the tools return: pydantic models with `.to_text()`, the text an agent reads."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class SearchResult(BaseModel):
    title: str
    url: str
    snippet: str = ""
    provider: str = ""

    @property
    def fetchable(self) -> bool:
        return self.url.startswith(("http://", "https://"))

    def to_text(self) -> str:
        lines = [self.title, self.url]
        if not self.fetchable:
            lines.append("(a local file: fetch cannot open it, only http(s) URLs; the snippet is what there is)")
        if self.snippet:
            lines.append(self.snippet)
        return "\n".join(lines)


def search_results_text(results: list[SearchResult]) -> str:
    if not results:
        return "No results."
    return "\n\n".join(f"[{number}] {result.to_text()}" for number, result in enumerate(results, 1))


class Document(BaseModel):
    """The whole readable text of one fetched URL, before paging; what the cache stores."""

    url: str
    title: str | None = None
    text: str
    content_type: str
    status: int = 200


class Page(BaseModel):
    """One page of a fetched document: `page` of `pages`, at most `page_chars` characters of text."""

    url: str = Field(description="The final URL, after redirects.")
    requested_url: str
    title: str | None = None
    text: str
    content_type: str
    status: int = 200
    page: int = 1
    pages: int = 1
    total_chars: int = 0

    def to_text(self) -> str:
        header = [f"URL: {self.url}"]
        if self.title:
            header.append(f"Title: {self.title}")
        if self.pages > 1:
            more = f"; call fetch with page={self.page + 1} for the next" if self.page < self.pages else ""
            header.append(f"Page {self.page} of {self.pages} ({self.total_chars} characters in all{more})")
        return "\n".join(header) + "\n\n" + self.text


class BrowseAction(BaseModel):
    """One step in the browser: click/fill/press use a CSS or text selector, scroll and wait take amounts."""

    action: Literal["click", "fill", "press", "scroll", "wait_for", "wait", "screenshot"]
    selector: str | None = Field(default=None, description="CSS selector (or text=... ) of the element.")
    text: str | None = Field(default=None, description="Text to type for fill, key name for press.")
    amount: int | None = Field(default=None, description="Pixels for scroll, milliseconds for wait.")


class BrowseResult(BaseModel):
    url: str
    requested_url: str
    title: str | None = None
    text: str
    page: int = 1
    pages: int = 1
    total_chars: int = 0
    screenshots: list[str] = Field(default_factory=list, description="Files the screenshots were written to.")
    log: list[str] = Field(default_factory=list, description="What each action did.")

    def to_text(self) -> str:
        header = [f"URL: {self.url}"]
        if self.title:
            header.append(f"Title: {self.title}")
        header.extend(self.log)
        header.extend(f"Screenshot saved to {path}" for path in self.screenshots)
        if self.pages > 1:
            more = f"; call browse with page={self.page + 1} for the next" if self.page < self.pages else ""
            header.append(f"Page {self.page} of {self.pages} ({self.total_chars} characters in all{more})")
        return "\n".join(header) + "\n\n" + self.text
