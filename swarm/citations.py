"""Citations: URLs cited in square brackets, kept only when a tool result of the run came from them.

A cited URL that no tool result came from is unsupported: the model wrote a source it never read, and the run
says so rather than passing it on as a citation.

Every tool result is filed under the URLs it mentions. A cited URL becomes a Citation with the
answer's sentence that cites it and the passage of that tool result sharing the most words with it.
"""

from __future__ import annotations

import re

from .result import Citation

_URL = re.compile(r"https?://[^\s\"'<>\[\]()]+")
_BRACKETS = re.compile(r"\[([^\[\]]+)\]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"[a-z0-9]+")
PASSAGE_CHARS = 400


def normalize_url(url: str) -> str:
    return url.rstrip(".,;:!?)'\"").rstrip("/")


class EvidenceStore:
    """Tool-result texts of a run, by every URL they mention."""

    def __init__(self) -> None:
        self._texts: dict[str, list[str]] = {}

    def add(self, text: str, source_url: str | None = None) -> None:
        urls = {normalize_url(u) for u in _URL.findall(text)}
        if source_url:
            urls.add(normalize_url(source_url))
        for url in urls:
            self._texts.setdefault(url, []).append(text)

    def texts_for(self, url: str) -> list[str]:
        return self._texts.get(normalize_url(url), [])


def cited_urls(answer: str) -> list[tuple[str, str]]:
    """(url, sentence) for each URL inside square brackets, in order of appearance, first use only."""
    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    for sentence in _sentences(answer):
        for bracket in _BRACKETS.findall(sentence):
            for url in _URL.findall(bracket):
                url = normalize_url(url)
                if url not in seen:
                    seen.add(url)
                    found.append((url, _claim_text(sentence)))
    return found


def extract_citations(answer: str, evidence: EvidenceStore) -> list[Citation]:
    citations = []
    for url, claim in cited_urls(answer):
        texts = evidence.texts_for(url)
        if texts:
            citations.append(Citation(url=url, claim=claim, evidence=_best_passage(claim, texts)))
    return citations


def unsupported_urls(answer: str, evidence: EvidenceStore) -> list[str]:
    """The URLs the answer cites in square brackets that no tool result of the run came from, in order."""
    return [url for url, _ in cited_urls(answer) if not evidence.texts_for(url)]


def _sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text) if s.strip()]


def _claim_text(sentence: str) -> str:
    without_brackets = re.sub(r"\s+", " ", _BRACKETS.sub("", sentence)).strip()
    return re.sub(r"\s+([.,;:!?])", r"\1", without_brackets)


def _best_passage(claim: str, texts: list[str]) -> str:
    """The sentence of the tool results sharing the most words with the claim, with the sentences that
    follow it up to about PASSAGE_CHARS characters."""
    claim_words = set(_WORD.findall(claim.lower()))
    best: tuple[int, list[str], int] = (-1, [], 0)
    for text in texts:
        sentences = _sentences(text) or [text]
        for index, sentence in enumerate(sentences):
            score = len(claim_words & set(_WORD.findall(sentence.lower())))
            if score > best[0]:
                best = (score, sentences, index)
    _, sentences, start = best
    passage = ""
    for sentence in sentences[start:]:
        if passage and len(passage) + len(sentence) + 1 > PASSAGE_CHARS:
            break
        passage = f"{passage} {sentence}".strip()
    return passage
