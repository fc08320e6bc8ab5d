"""Turns a response body into readable text: HTML main content, JSON, plain text or PDF text.

HTML goes through trafilatura, which keeps the page's main content as Markdown and drops
navigation, sidebars, footers and scripts. Its links are first made absolute against the page's own URL
(or its <base href>), so an agent can fetch any link it reads. Bytes are decoded by declared charset only
when the declaration fits the bytes; a wrong declaration falls back to detection.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from urllib.parse import urljoin, urlsplit

import charset_normalizer
import trafilatura
from lxml.html import HtmlElement
from pypdf import PdfReader
from pypdf.errors import PdfReadError

from .errors import ToolError

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([\w.:-]+)""", re.IGNORECASE)
_TEXT_TYPES = ("text/plain", "text/markdown", "text/x-markdown", "text/csv", "text/x-rst")
_FOLLOWABLE_SCHEMES = frozenset({"http", "https", "ftp", "mailto", "tel"})
_PERMALINK_MARKS = frozenset({"", "¶", "§", "#", "🔗"})
_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")


def decode_text(body: bytes, declared: str | None) -> str:
    """Decodes `body`: valid UTF-8 first, then the declared charset if it fits, then detection."""
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    meta = _META_CHARSET.search(body[:4096])
    for charset in (declared, meta.group(1).decode("ascii", "ignore") if meta else None):
        if not charset:
            continue
        if charset.lower().replace("-", "").replace("_", "") in ("iso88591", "latin1", "usascii", "ascii"):
            charset = "cp1252"  # what browsers read these labels as (WHATWG Encoding)
        try:
            return body.decode(charset)
        except (LookupError, UnicodeDecodeError):
            continue
    best = charset_normalizer.from_bytes(body).best()
    if best is not None:
        return str(best)
    return body.decode(declared or "latin-1", errors="replace")


def sniff_type(body: bytes, content_type: str) -> str:
    """The media type to treat the body as: the header's, corrected for obvious PDF/HTML/binary bodies."""
    head = body[:1024].lstrip().lower()
    if head.startswith(b"%pdf-"):
        return "application/pdf"
    looks_like_html = head.startswith((b"<!doctype html", b"<html"))
    if looks_like_html and (content_type in ("", "application/octet-stream") or content_type.startswith("text/")):
        return "text/html"
    if content_type in ("", "application/octet-stream") and b"\x00" not in head:
        return "text/plain"
    return content_type


def _join(base: str, href: str) -> str | None:
    try:
        return urljoin(base, href)
    except ValueError:  # an unparsable URL, such as an unclosed IPv6 bracket
        return None


def _is_permalink(anchor: HtmlElement) -> bool:
    """A heading's or definition's link to itself (Sphinx's ¶, MkDocs' headerlink, GitHub's icon): pure noise."""
    return "headerlink" in anchor.classes or anchor.text_content().strip() in _PERMALINK_MARKS


def resolve_links(tree: HtmlElement, page_url: str) -> None:
    """Rewrites every link of `tree` in place to an absolute URL, so an agent can fetch what it reads.

    Links resolve against <base href> (itself relative to the page) or else the page's own URL; trafilatura
    alone joins them to the host root. A fragment-only link names a part of the page being read, so it keeps
    the page's URL even under <base> (where a browser would leave the page, rarely what the author meant).
    Permalinks are removed; a same-page link inside a heading (Sphinx links each heading to its table of
    contents) and links with nothing to follow (`#`, `javascript:`) keep their text but lose the link.
    """
    base_hrefs = tree.xpath("//base/@href")
    base = _join(page_url, base_hrefs[0].strip()) if base_hrefs else None
    if base is None or urlsplit(base).scheme.lower() not in ("http", "https"):
        base = page_url
    for anchor in tree.xpath("//a[@href]"):
        href = anchor.get("href", "").strip()
        fragment_only = not href or href.startswith("#")
        if fragment_only and _is_permalink(anchor):
            anchor.drop_tree()
            continue
        if fragment_only:
            in_heading = next(anchor.iterancestors(*_HEADINGS), None) is not None
            target = None if len(href) <= 1 or in_heading else _join(page_url, href)
        else:
            target = _join(base, href)
        if target is None or urlsplit(target).scheme.lower() not in _FOLLOWABLE_SCHEMES:
            anchor.drop_tag()  # nothing an agent could follow: the text stays, the link goes
        else:
            anchor.set("href", target)


def html_to_text(html: str, url: str) -> tuple[str | None, str]:
    """(title, main content as Markdown) of the HTML page at `url` (the final URL, after redirects), its links
    absolute; falls back to all visible text for tiny pages."""
    tree = trafilatura.load_html(html)
    if tree is None:  # trafilatura refuses a bare fragment ("<p>Moved.</p>"), yet such a page is still text
        tree = trafilatura.load_html(f"<html><body>{html}</body></html>")
    if tree is None:
        raise ToolError(f"{url} is labelled HTML but could not be parsed as HTML.")
    resolve_links(tree, url)
    text = trafilatura.extract(
        tree, output_format="markdown", include_links=True, include_tables=True, include_comments=False
    )
    if not text:
        text = trafilatura.html2txt(tree) or ""
    metadata = trafilatura.extract_metadata(tree)
    return (metadata.title if metadata else None) or None, text.strip()


def pdf_to_text(body: bytes) -> tuple[str | None, str]:
    try:
        reader = PdfReader(io.BytesIO(body))
        pages = [page.extract_text() or "" for page in reader.pages]
        title = reader.metadata.title if reader.metadata else None
    except (PdfReadError, ValueError, KeyError) as exc:
        raise ToolError(f"The PDF could not be read: {exc}.") from None
    text = "\n\n".join(f"[PDF page {number}]\n{page.strip()}" for number, page in enumerate(pages, 1))
    return title or None, text


def body_to_text(body: bytes, content_type: str, charset: str | None, url: str) -> tuple[str | None, str, str]:
    """(title, text, media type) for a response body; raises ToolError for content that is not text."""
    media_type = sniff_type(body, content_type)
    if media_type == "application/pdf":
        return (*pdf_to_text(body), media_type)
    if media_type in ("text/html", "application/xhtml+xml"):
        return (*html_to_text(decode_text(body, charset), url), media_type)
    if media_type == "application/json" or media_type.endswith("+json"):
        text = decode_text(body, charset)
        with contextlib.suppress(ValueError):  # invalid JSON is still worth reading as it is
            text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        return None, text, media_type
    if media_type.startswith("text/") or media_type in _TEXT_TYPES or media_type.endswith(("+xml", "/xml")):
        return None, decode_text(body, charset), media_type
    raise ToolError(
        f"{url} is {media_type or 'binary data'} ({len(body)} bytes), not text, HTML, JSON or PDF; "
        "it cannot be read as text. Use browse with a screenshot to look at images."
    )
