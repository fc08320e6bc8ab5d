"""BM25 full-text search over local documents with tantivy, cached on disk by corpus content.

Titles are indexed in their own field and boosted (documentation titles name the topic), words are
stemmed, and each result's snippet is the best-matching passage of the page's text. Near-identical documents
(a page and its source) share a group, and results show one document per group.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import tantivy

from ..models import SearchResult
from .corpus import Entry, content_digest, corpus_files, folder_url, read_corpus
from .duplicates import near_duplicate_groups

INDEX_FORMAT = "v4"  # bump when the schema or the extraction changes, so old cached indexes are not reused
TITLE_BOOST = 2.0
SNIPPET_CHARS = 300
_CANDIDATES_PER_RESULT = 3  # hits read per result wanted, so copies collapsing seldom leave the page short
_WRITER_HEAP = 64 * 1024 * 1024
_COMPLETE_MARK = "complete"
_WORD = re.compile(r"\w+")


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("url", stored=True, tokenizer_name="raw")
    builder.add_text_field("title", stored=True, tokenizer_name="en_stem")
    builder.add_text_field("body", stored=True, tokenizer_name="en_stem")
    builder.add_text_field("group", stored=True, tokenizer_name="raw")
    return builder.build()


class LocalIndex:
    def __init__(self, index: tantivy.Index, schema: tantivy.Schema, url_prefix: str = "") -> None:
        self._index = index
        self._schema = schema
        self._url_prefix = url_prefix
        self._searcher = index.searcher()

    @property
    def num_docs(self) -> int:
        return self._searcher.num_docs

    @classmethod
    def open_or_build(cls, index_root: Path, key: str, entries: Callable[[], list[Entry]],
                      url_prefix: str = "") -> LocalIndex:
        """Opens the cached index for `key`, or builds it from `entries()` and caches it atomically.
        Result URLs are `url_prefix` + the entry's URL."""
        schema = _schema()
        path = index_root / key
        if not (path / _COMPLETE_MARK).exists():
            index_root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=index_root))
            try:
                cls._write(tantivy.Index(schema, path=str(staging)), entries())
                (staging / _COMPLETE_MARK).touch()
                staging.rename(path)
            except OSError:
                if not (path / _COMPLETE_MARK).exists():  # else a concurrent builder finished first
                    raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        index = tantivy.Index(schema, path=str(path))
        index.reload()
        return cls(index, schema, url_prefix)

    @classmethod
    def for_folder(cls, corpus_dir: Path, index_root: Path, base_url: str | None) -> LocalIndex:
        """The folder's index, keyed by content alone: the same files share one index at any address."""
        files = corpus_files(corpus_dir)
        key = content_digest(corpus_dir, files, f"{INDEX_FORMAT}|folder")
        return cls.open_or_build(index_root, key, lambda: read_corpus(corpus_dir, files),
                                 folder_url(corpus_dir, base_url))

    @classmethod
    def for_entries(cls, entries: list[Entry], index_root: Path) -> LocalIndex:
        digest = hashlib.sha256(INDEX_FORMAT.encode())
        for entry in entries:
            digest.update(entry.model_dump_json().encode())
        return cls.open_or_build(index_root, digest.hexdigest(), lambda: entries)

    @staticmethod
    def _write(index: tantivy.Index, entries: list[Entry]) -> None:
        writer = index.writer(_WRITER_HEAP, 1)
        for entry, group in zip(entries, near_duplicate_groups(entries), strict=True):
            writer.add_document(tantivy.Document(url=entry.url, title=entry.title, body=entry.text, group=group))
        writer.commit()
        writer.wait_merging_threads()

    def search(self, query: str, max_results: int) -> list[SearchResult]:
        """The best `max_results` documents for the words of `query` (query syntax is not interpreted), one per
        group of near-identical documents: the group's representative if it matched, else its best match."""
        words = _WORD.findall(query.lower())
        if not words:
            return []
        parsed = self._index.parse_query(" ".join(words), ["title", "body"], field_boosts={"title": TITLE_BOOST})
        limit = max_results * _CANDIDATES_PER_RESULT
        while True:  # copies take places among the hits: widen until the page is full or the hits run out
            hits = self._searcher.search(parsed, limit).hits
            groups: dict[str, list[tantivy.Document]] = {}
            for _, address in hits:
                doc = self._searcher.doc(address)
                groups.setdefault(doc["group"][0], []).append(doc)
            if len(groups) >= max_results or len(hits) < limit:
                break
            limit *= 4
        snippets = tantivy.SnippetGenerator.create(self._searcher, parsed, self._schema, "body")
        snippets.set_max_num_chars(SNIPPET_CHARS)
        results = []
        for group, docs in list(groups.items())[:max_results]:
            doc = next((doc for doc in docs if doc["url"][0] == group), docs[0])
            fragment = snippets.snippet_from_doc(doc).fragment()
            snippet = " ".join(fragment.split()) or " ".join(doc["body"][0][:SNIPPET_CHARS].split())
            url = self._url_prefix + doc["url"][0]
            results.append(SearchResult(title=doc["title"][0], url=url, snippet=snippet, provider="local"))
        return results
