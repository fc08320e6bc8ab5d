"""Splits long text into pages at paragraph or line boundaries, so nothing is ever silently cut."""

from __future__ import annotations

from .errors import ToolError


def split_pages(text: str, page_chars: int) -> list[str]:
    """Pages of at most `page_chars` characters whose concatenation is exactly `text`."""
    pages: list[str] = []
    start = 0
    while len(text) - start > page_chars:
        window = text[start : start + page_chars]
        cut = max(window.rfind("\n\n"), window.rfind("\n"))
        if cut < page_chars // 2:
            cut = window.rfind(" ")
        end = start + (cut + 1 if cut >= page_chars // 2 else page_chars)
        pages.append(text[start:end])
        start = end
    pages.append(text[start:])
    return pages


def page_of(text: str, page_chars: int, page: int) -> tuple[str, int]:
    """(text of page `page`, number of pages); a page past the end is an error the agent can fix."""
    pages = split_pages(text, page_chars)
    if page < 1 or page > len(pages):
        raise ToolError(f"page={page} does not exist: the text has {len(pages)} page(s) of {page_chars} characters.")
    return pages[page - 1], len(pages)
