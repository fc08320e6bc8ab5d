"""BM25 full-text search over local documents with tantivy, cached on disk by corpus content.

Titles are indexed in their own field and boosted (documentation titles name the topic), words are
stemmed, and each result's snippet is the best-matching passage of the page's text.
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

INDEX_FORMAT = "v3"  # bump when the schema or the extraction changes, so old cached indexes are not reused
TITLE_BOOST = 2.0
SNIPPET_CHARS = 300
_WRITER_HEAP = 64 * 1024 * 1024
_COMPLETE_MARK = "complete"
_WORD = re.compile(r"\w+")


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("url", stored=True, tokenizer_name="raw")
    builder.add_text_field("title", stored=True, tokenizer_name="en_stem")
    builder.add_text_field("body", stored=True, tokenizer_name="en_stem")
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
        for entry in entries:
            writer.add_document(tantivy.Document(url=entry.url, title=entry.title, body=entry.text))
        writer.commit()
        writer.wait_merging_threads()

    def search(self, query: str, max_results: int) -> list[SearchResult]:
        """The best `max_results` documents for the words of `query` (query syntax is not interpreted)."""
        words = _WORD.findall(query.lower())
        if not words:
            return []
        parsed = self._index.parse_query(" ".join(words), ["title", "body"], field_boosts={"title": TITLE_BOOST})
        hits = self._searcher.search(parsed, max_results).hits
        snippets = tantivy.SnippetGenerator.create(self._searcher, parsed, self._schema, "body")
        snippets.set_max_num_chars(SNIPPET_CHARS)
        results = []
        for _, address in hits:
            doc = self._searcher.doc(address)
            fragment = snippets.snippet_from_doc(doc).fragment()
            snippet = " ".join(fragment.split()) or " ".join(doc["body"][0][:SNIPPET_CHARS].split())
            url = self._url_prefix + doc["url"][0]
            results.append(SearchResult(title=doc["title"][0], url=url, snippet=snippet, provider="local"))
        return results
