"""Reads a folder of HTML, Markdown and text files into (url, title, text) entries for the index."""

from __future__ import annotations

import hashlib
import html as html_entities
import re
from pathlib import Path
from urllib.parse import quote

import trafilatura
from pydantic import BaseModel

from ..extract import decode_text

HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
MARKDOWN_SUFFIXES = {".md", ".markdown", ".mdx"}
TEXT_SUFFIXES = {".txt", ".rst", ".text"}
CORPUS_SUFFIXES = HTML_SUFFIXES | MARKDOWN_SUFFIXES | TEXT_SUFFIXES
_TITLE_TAG = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_MARKDOWN_HEADING = re.compile(r"^#\s+(.+)$", re.MULTILINE)


class Entry(BaseModel):
    url: str
    title: str
    text: str
    is_html: bool = False  # of near-identical entries, search shows an HTML one: the page people read


def corpus_files(corpus_dir: Path) -> list[Path]:
    if not corpus_dir.is_dir():
        raise FileNotFoundError(f"corpus_dir {corpus_dir} is not a folder")
    return sorted(path for path in corpus_dir.rglob("*") if path.suffix.lower() in CORPUS_SUFFIXES and path.is_file())


def content_digest(corpus_dir: Path, files: list[Path], salt: str) -> str:
    """SHA-256 over every file's relative path and bytes: the index is rebuilt exactly when content changes."""
    digest = hashlib.sha256(salt.encode())
    for path in files:
        digest.update(str(path.relative_to(corpus_dir)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def html_title_and_text(html: str) -> tuple[str, str]:
    """Main content of a page for indexing, with the <title> (documentation titles name the topic)."""
    text = trafilatura.extract(html, fast=True, include_tables=True, include_comments=False)
    if not text:
        text = trafilatura.html2txt(html) or ""
    match = _TITLE_TAG.search(html)
    title = re.sub(r"\s+", " ", html_entities.unescape(match.group(1))).strip() if match else ""
    return title, text


def read_entry(path: Path, url: str) -> Entry:
    raw = decode_text(path.read_bytes(), None)
    suffix = path.suffix.lower()
    if suffix in HTML_SUFFIXES:
        title, text = html_title_and_text(raw)
    else:
        text = raw
        heading = _MARKDOWN_HEADING.search(raw) if suffix in MARKDOWN_SUFFIXES else None
        title = heading.group(1).strip() if heading else ""
    title = title or path.stem.replace("_", " ").replace("-", " ")
    return Entry(url=url, title=title, text=text, is_html=suffix in HTML_SUFFIXES)


def relative_url(corpus_dir: Path, path: Path) -> str:
    """The file's URL relative to the folder; the index stores these, so one index serves the folder at
    any address (the offline web gets a new port every run)."""
    return quote(path.relative_to(corpus_dir).as_posix())


def folder_url(corpus_dir: Path, base_url: str | None) -> str:
    """Where an agent can open the folder's files: `base_url` when the folder is served, else file://."""
    if base_url is None:
        return corpus_dir.resolve().as_uri() + "/"
    return base_url.rstrip("/") + "/"


def read_corpus(corpus_dir: Path, files: list[Path]) -> list[Entry]:
    """Entries with URLs relative to `corpus_dir`."""
    return [read_entry(path, relative_url(corpus_dir, path)) for path in files]
