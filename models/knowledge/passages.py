"""Splitting a document's sections into passages of bounded length. Pure.

Guarantees: every passage is non-empty and at most ``max_chars`` characters; paragraphs are kept whole
and joined while they fit; a longer paragraph is cut at sentence ends (。！？；.!?), and a sentence longer
than ``max_chars`` at ``max_chars``. Each passage keeps the heading of the section it came from. No text is
lost except runs of whitespace.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from models.knowledge.documents import Passage, Section

MAX_CHARS = 400
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[。！？；!?;])|(?<=\.)(?=\s)")
_SPACES = re.compile(r"[ \t\u3000]+")


def split(sections: Iterable[Section], max_chars: int = MAX_CHARS) -> tuple[Passage, ...]:
    """The passages of these sections, in order."""
    if max_chars < 1:
        raise ValueError("max_chars must be positive")
    passages: list[Passage] = []
    for section in sections:
        heading = _clean(section.heading)[:256]
        passages += [Passage(heading, text) for text in _pack(_pieces(section.text, max_chars), max_chars)]
    return tuple(passages)


def _clean(text: str) -> str:
    lines = (_SPACES.sub(" ", line).strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def _pieces(text: str, max_chars: int) -> Iterator[str]:
    """Paragraphs no longer than ``max_chars``: long ones cut at sentence ends, then hard."""
    for paragraph in _PARAGRAPH_BREAK.split(text):
        cleaned = _clean(paragraph)
        if not cleaned:
            continue
        if len(cleaned) <= max_chars:
            yield cleaned
            continue
        for sentences in _pack((s for s in _SENTENCE_END.split(cleaned) if s.strip()), max_chars, sep=""):
            sentences = sentences.strip()
            chunks = (sentences[start:start + max_chars].strip() for start in range(0, len(sentences), max_chars))
            yield from (chunk for chunk in chunks if chunk)


def _pack(pieces: Iterable[str], max_chars: int, sep: str = "\n") -> Iterator[str]:
    """Join consecutive pieces while the result fits in ``max_chars``."""
    current = ""
    for piece in pieces:
        if current and len(current) + len(sep) + len(piece) <= max_chars:
            current += sep + piece
            continue
        if current:
            yield current
        current = piece
    if current:
        yield current
