"""What an imported knowledge-base file becomes before it is stored: frozen values, no I/O.

A :class:`ParsedDocument` is either prose (``passages``: bounded pieces under their headings) or an FAQ
sheet (``faq``: curated questions with their similar questions and answers), never both.
:class:`UnreadableDocument` names the file and what is wrong with it, for an operator to fix.
"""

from __future__ import annotations

from dataclasses import dataclass


class UnreadableDocument(Exception):
    """A file that cannot be imported; ``str()`` is ``"<path>: <problem>"``."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


@dataclass(frozen=True, slots=True)
class Section:
    """Text under one heading ("" before the first heading), as a reader found it."""

    heading: str
    text: str


@dataclass(frozen=True, slots=True)
class Passage:
    """A bounded piece of a document: what retrieval returns and the model reads."""

    heading: str
    text: str


@dataclass(frozen=True, slots=True)
class FaqRow:
    """One row of an FAQ sheet: the question, its similar questions (相似问) and the answer."""

    question: str
    similar: tuple[str, ...]
    answer: str


@dataclass(frozen=True, slots=True)
class ParsedDocument:
    source: str  # how the operator named it (the path given to ``kefu kb import``); identifies the document
    title: str
    kind: str  # markdown, text, html, pdf, docx, faq_csv, faq_xlsx
    content_hash: str  # SHA-256 (hex) of the file's bytes: an unchanged file is not imported again
    passages: tuple[Passage, ...] = ()
    faq: tuple[FaqRow, ...] = ()
