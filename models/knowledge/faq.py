"""An FAQ entry as retrieval and the dialogue decision see it: frozen, no I/O.

Every source of FAQ entries (``KEFU_FAQ`` in the settings, FAQ sheets in the knowledge-base store) is turned
into :class:`FaqEntry` values; the in-memory index (:mod:`models.knowledge.faq_index`) matches a customer's
question against an entry's ``question`` and every one of its ``similar`` questions (相似问).

``keywords`` keeps the old ``KEFU_FAQ`` rule ("every keyword occurs in the text") for entries that were written
that way: such an entry matches when all its keywords occur, whatever the retriever's confidence.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

APPROVED = "approved:"  # id prefix of an operator-approved model answer: "approved:<reply id>"


@dataclass(frozen=True, slots=True)
class FaqEntry:
    id: str  # stable within its source: "settings:3", "kb:17", "approved:42" (an approved answer to reply 42)
    question: str  # the standard question (标准问); "" for a keyword-only entry
    answer: str
    similar: tuple[str, ...] = ()  # other ways customers ask it (相似问)
    keywords: tuple[str, ...] = ()  # the keyword rule: all of them occur in the text (case-insensitive)

    @property
    def approved_reply(self) -> int | None:
        """The reply this entry is the approved answer of (id ``approved:<reply id>``), else None."""
        number = self.id.removeprefix(APPROVED)
        return int(number) if self.id.startswith(APPROVED) and number.isdigit() else None

    @property
    def questions(self) -> tuple[str, ...]:
        """Every phrasing the retriever indexes: the question, then its similar questions (non-empty, unique)."""
        seen: dict[str, None] = {}
        for text in (self.question, *self.similar):
            if text.strip():
                seen.setdefault(text.strip(), None)
        return tuple(seen)


def fingerprint(entries: Iterable[FaqEntry]) -> str:
    """A digest of the entries' content and order: an index built from equal fingerprints is the same index."""
    digest = hashlib.sha256()
    for e in entries:
        digest.update(json.dumps([e.id, e.question, e.answer, e.similar, e.keywords],
                                 ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()
