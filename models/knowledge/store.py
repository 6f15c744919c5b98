"""The knowledge base in the database: documents, their passages and FAQ entries, and one revision number.

- :func:`import_document` stores a parsed document under its ``source``: a new source is version 1, a
  changed one (another ``content_hash``) replaces its passages and FAQ entries as the next version, an
  unchanged one is left alone (no write, no audit row). :func:`delete_document` removes one with its
  passages and FAQ entries.
- Every change bumps ``kb_state.revision`` and is audited in the same transaction (``kb_imported``,
  ``kb_deleted``: ids, version, counts and the content hash, never the text). Writers are serialized by
  the ``kb_state`` row's lock (PostgreSQL; SQLite has one writer anyway).
- :func:`revision` is the one cheap read a process holding the knowledge base in memory polls;
  :func:`snapshot` loads all of it, :func:`faq_rows` only the FAQ entries.
- A document of kind :data:`APPROVED_KIND` holds one operator-approved model answer
  (:mod:`models.knowledge.approved`) under the source ``reply:<reply id>``; its FAQ entry's id is
  ``approved:<reply id>`` instead of ``kb:<row id>``, so the dialogue decision can say where its answer came from.
- :func:`edit_faq` and :func:`add_faq` change one FAQ entry in place (the agent console's knowledge-base editor),
  under the same lock, revision bump and audit (``kb_faq_edited``, ``kb_faq_added``, with ``by``); the document's
  ``content_hash`` becomes the hash of the entries it holds, so importing its file again replaces the edits.

Functions take the caller's session and never commit: the caller's transaction decides.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from models import audit
from models.envelope import utcnow
from models.knowledge.documents import FaqRow, ParsedDocument
from models.knowledge.faq import APPROVED, FaqEntry
from models.tables import KbDocumentRecord, KbFaqRecord, KbPassageRecord, KbStateRecord

NEW, UPDATED, UNCHANGED = "new", "updated", "unchanged"
APPROVED_KIND = "approved"  # a document holding one approved model answer (models.knowledge.approved)
_APPROVED_SOURCE = "reply:"
MANUAL_FAQ_SOURCE = "console:faq"  # the document of FAQ entries written by hand (add_faq without a document)
MANUAL_FAQ_TITLE = "常见问题"
MANUAL_FAQ_KIND = "faq_manual"
MAX_QUESTION_CHARS = 500
MAX_ANSWER_CHARS = 4000
MAX_SIMILAR = 50


def approved_source(reply_id: int) -> str:
    """The source of the document that holds the approved answer of reply ``reply_id``."""
    return f"{_APPROVED_SOURCE}{reply_id}"


def approved_reply_id(kind: str, source: str) -> int | None:
    """The reply a document of kind ``kind`` under ``source`` is the approved answer of, or None."""
    if kind != APPROVED_KIND or not source.startswith(_APPROVED_SOURCE):
        return None
    number = source.removeprefix(_APPROVED_SOURCE)
    return int(number) if number.isdigit() else None


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    id: int
    source: str
    title: str
    kind: str
    version: int
    content_hash: str
    passages: int
    faq: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ImportOutcome:
    status: str  # NEW, UPDATED or UNCHANGED
    document: DocumentInfo


@dataclass(frozen=True, slots=True)
class StoredPassage:
    id: int
    document_id: int
    title: str  # the document's title: the source a reply can cite
    heading: str
    text: str


@dataclass(frozen=True, slots=True)
class StoredFaq:
    id: int
    document_id: int
    title: str
    question: str
    similar: tuple[str, ...]
    answer: str
    approved_reply: int | None = None  # the reply this entry is the approved answer of (APPROVED_KIND documents)

    def entry(self) -> FaqEntry:
        """The entry as the FAQ index and the dialogue decision see it: id ``kb:<row id>``, or
        ``approved:<reply id>`` for an approved answer (:data:`models.knowledge.faq.APPROVED`)."""
        entry_id = f"kb:{self.id}" if self.approved_reply is None else f"{APPROVED}{self.approved_reply}"
        return FaqEntry(id=entry_id, question=self.question, answer=self.answer, similar=self.similar)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole knowledge base as of ``revision``."""

    revision: int
    passages: tuple[StoredPassage, ...]
    faq: tuple[StoredFaq, ...]


def revision(session: Session) -> int:
    return int(session.scalar(select(KbStateRecord.revision).where(KbStateRecord.id == 1)) or 0)


def _lock(session: Session) -> None:
    """The knowledge base's write lock, held until the transaction ends (PostgreSQL: the kb_state row's lock)."""
    session.execute(select(KbStateRecord.revision).where(KbStateRecord.id == 1).with_for_update())


def _bump(session: Session) -> int:
    """Move the revision on; the new revision."""
    return int(session.execute(update(KbStateRecord).where(KbStateRecord.id == 1)
                               .values(revision=KbStateRecord.revision + 1)
                               .returning(KbStateRecord.revision)).scalar_one())


def import_document(session: Session, parsed: ParsedDocument, by: str | None = None) -> ImportOutcome:
    """Store ``parsed`` unless the document under its source already has this content. ``by``: who asked (e.g.
    ``admin-api``), added to the audit row."""
    _lock(session)  # a concurrent import of the same source waits here, then finds this one's document
    existing = session.scalar(select(KbDocumentRecord).where(KbDocumentRecord.source == parsed.source))
    if existing is not None and existing.content_hash == parsed.content_hash:
        return ImportOutcome(UNCHANGED, _info(session, existing))
    new_revision = _bump(session)
    now = utcnow()
    if existing is None:
        document = KbDocumentRecord(source=parsed.source, title=parsed.title, kind=parsed.kind,
                                    content_hash=parsed.content_hash, version=1, created_at=now, updated_at=now)
        session.add(document)
        session.flush()
        status = NEW
    else:
        document, status = existing, UPDATED
        _delete_contents(session, document.id)
        document.title, document.kind, document.content_hash = parsed.title, parsed.kind, parsed.content_hash
        document.version, document.updated_at = document.version + 1, now
    session.add_all(KbPassageRecord(document_id=document.id, ordinal=n, heading=p.heading, text=p.text)
                    for n, p in enumerate(parsed.passages))
    session.add_all(KbFaqRecord(document_id=document.id, ordinal=n, question=f.question, similar=list(f.similar),
                                answer=f.answer) for n, f in enumerate(parsed.faq))
    session.flush()
    detail: dict[str, Any] = {"document_id": document.id, "version": document.version, "status": status,
                              "passages": len(parsed.passages), "faq": len(parsed.faq),
                              "content_hash": parsed.content_hash, "kb_revision": new_revision}
    audit.record(session, audit.KB_IMPORTED, **detail, **_who(by))
    return ImportOutcome(status, _info(session, document))


def delete_document(session: Session, document_id: int, by: str | None = None) -> DocumentInfo | None:
    """Remove the document with its passages and FAQ entries; what was removed, or None when there was none.
    ``by``: who asked, added to the audit row."""
    _lock(session)
    document = session.get(KbDocumentRecord, document_id)
    if document is None:
        return None
    new_revision = _bump(session)
    info = _info(session, document)
    _delete_contents(session, document_id)
    session.delete(document)
    session.flush()
    detail: dict[str, Any] = {"document_id": document_id, "version": info.version, "passages": info.passages,
                              "faq": info.faq, "content_hash": info.content_hash, "kb_revision": new_revision}
    audit.record(session, audit.KB_DELETED, **detail, **_who(by))
    return info


class FaqEditError(ValueError):
    """An FAQ entry that cannot be stored as edited: the message says why (an empty question, a prose document…)."""


@dataclass(frozen=True, slots=True)
class FaqChange:
    status: str  # NEW, UPDATED or UNCHANGED
    faq: StoredFaq


def edit_faq(session: Session, faq_id: int, row: FaqRow, by: str | None = None) -> FaqChange | None:
    """Replace FAQ entry ``faq_id``'s question, similar questions and answer (None: no such entry). The document
    moves to its next version with the hash of what it now holds, so importing its file again replaces the edit.
    An identical entry changes nothing (no write, no audit row). Audited ``kb_faq_edited``."""
    row = check_faq_row(row)
    _lock(session)
    record = session.get(KbFaqRecord, faq_id)
    if record is None:
        return None
    document = session.get(KbDocumentRecord, record.document_id)
    assert document is not None  # the foreign key
    if (record.question, tuple(record.similar or ()), record.answer) == (row.question, row.similar, row.answer):
        return FaqChange(UNCHANGED, _faq(record, document.title, approved_reply_id(document.kind, document.source)))
    record.question, record.similar, record.answer = row.question, list(row.similar), row.answer
    return FaqChange(UPDATED, _changed(session, document, record, audit.KB_FAQ_EDITED, by))


def add_faq(session: Session, document_id: int | None, row: FaqRow, by: str | None = None) -> FaqChange:
    """Add an FAQ entry at the end of FAQ document ``document_id``, or (None) of :data:`MANUAL_FAQ_SOURCE`, the
    document of entries written by hand, created when it does not exist. FaqEditError: no such document, or one of
    prose (passages) or an approved answer's. Audited ``kb_faq_added`` (a new manual document's is version 1)."""
    row = check_faq_row(row)
    _lock(session)
    if document_id is None:
        document = session.scalar(select(KbDocumentRecord).where(KbDocumentRecord.source == MANUAL_FAQ_SOURCE))
        if document is None:
            now = utcnow()
            document = KbDocumentRecord(source=MANUAL_FAQ_SOURCE, title=MANUAL_FAQ_TITLE, kind=MANUAL_FAQ_KIND,
                                        content_hash=_content_hash(session, None), version=0, created_at=now,
                                        updated_at=now)
            session.add(document)
            session.flush()
    else:
        document = session.get(KbDocumentRecord, document_id)
        if document is None:
            raise FaqEditError(f"no knowledge-base document #{document_id}")
        if document.kind == APPROVED_KIND or session.scalar(select(func.count()).where(
                KbPassageRecord.document_id == document.id)):
            raise FaqEditError(f"document #{document_id} is not an FAQ sheet: entries are added to FAQ sheets only")
    last = session.scalar(select(func.max(KbFaqRecord.ordinal)).where(KbFaqRecord.document_id == document.id))
    record = KbFaqRecord(document_id=document.id, ordinal=0 if last is None else last + 1, question=row.question,
                         similar=list(row.similar), answer=row.answer)
    session.add(record)
    session.flush()
    return FaqChange(NEW, _changed(session, document, record, audit.KB_FAQ_ADDED, by))


def check_faq_row(row: FaqRow) -> FaqRow:
    """``row`` stripped (similar questions without empties, repeats or the question itself); FaqEditError when the
    question or the answer is empty or one is too long."""
    question, answer = row.question.strip(), row.answer.strip()
    similar = tuple(dict.fromkeys(s.strip() for s in row.similar if s.strip() and s.strip() != question))
    if not question or len(question) > MAX_QUESTION_CHARS:
        raise FaqEditError(f"the question must have 1-{MAX_QUESTION_CHARS} characters")
    if not answer or len(answer) > MAX_ANSWER_CHARS:
        raise FaqEditError(f"the answer must have 1-{MAX_ANSWER_CHARS} characters")
    if len(similar) > MAX_SIMILAR or any(len(s) > MAX_QUESTION_CHARS for s in similar):
        raise FaqEditError(f"at most {MAX_SIMILAR} similar questions of at most {MAX_QUESTION_CHARS} characters")
    return FaqRow(question, similar, answer)


def _changed(session: Session, document: KbDocumentRecord, record: KbFaqRecord, kind: str,
             by: str | None) -> StoredFaq:
    """Bump the revision and the document's version after an entry changed; audit it; the entry as stored."""
    session.flush()
    new_revision = _bump(session)
    document.version, document.updated_at = document.version + 1, utcnow()
    document.content_hash = _content_hash(session, document.id)
    session.flush()
    audit.record(session, kind, document_id=document.id, faq_id=record.id, version=document.version,
                 content_hash=document.content_hash, kb_revision=new_revision, **_who(by))
    return _faq(record, document.title, approved_reply_id(document.kind, document.source))


def _content_hash(session: Session, document_id: int | None) -> str:
    """SHA-256 of a document's FAQ entries as stored (not of any file: a re-import of the file replaces them)."""
    entries = [] if document_id is None else [
        [f.question, list(f.similar or ()), f.answer] for f in session.scalars(
            select(KbFaqRecord).where(KbFaqRecord.document_id == document_id).order_by(KbFaqRecord.ordinal))]
    return hashlib.sha256(json.dumps(["edited", entries], ensure_ascii=False).encode()).hexdigest()


def _who(by: str | None) -> dict[str, Any]:
    return {} if by is None else {"by": by}


def documents(session: Session) -> list[DocumentInfo]:
    """Every document, in id order, with its passage and FAQ counts."""
    passages = dict(session.execute(select(KbPassageRecord.document_id, func.count())
                                    .group_by(KbPassageRecord.document_id)).all())
    faq = dict(session.execute(select(KbFaqRecord.document_id, func.count())
                               .group_by(KbFaqRecord.document_id)).all())
    return [_info(session, d, passages.get(d.id, 0), faq.get(d.id, 0))
            for d in session.scalars(select(KbDocumentRecord).order_by(KbDocumentRecord.id))]


def document(session: Session, document_id: int) -> tuple[DocumentInfo, list[StoredPassage], list[StoredFaq]] | None:
    """One document with its passages and FAQ entries in order, or None."""
    record = session.get(KbDocumentRecord, document_id)
    if record is None:
        return None
    passages = [_passage(p, record.title) for p in session.scalars(
        select(KbPassageRecord).where(KbPassageRecord.document_id == document_id).order_by(KbPassageRecord.ordinal))]
    faq = [_faq(f, record.title, approved_reply_id(record.kind, record.source)) for f in session.scalars(
        select(KbFaqRecord).where(KbFaqRecord.document_id == document_id).order_by(KbFaqRecord.ordinal))]
    return _info(session, record, len(passages), len(faq)), passages, faq


def snapshot(session: Session) -> Snapshot:
    """All passages and FAQ entries with their documents' titles, read in the caller's transaction."""
    at = revision(session)
    titles = dict(session.execute(select(KbDocumentRecord.id, KbDocumentRecord.title)).all())
    passages = tuple(_passage(p, titles.get(p.document_id, "")) for p in session.scalars(
        select(KbPassageRecord).order_by(KbPassageRecord.document_id, KbPassageRecord.ordinal)))
    return Snapshot(at, passages, faq_rows(session, titles))


def faq_rows(session: Session, titles: dict[int, str] | None = None) -> tuple[StoredFaq, ...]:
    """Every FAQ entry of every document, in document and row order."""
    if titles is None:
        titles = dict(session.execute(select(KbDocumentRecord.id, KbDocumentRecord.title)).all())
    approved = {d: approved_reply_id(kind, source) for d, kind, source in session.execute(
        select(KbDocumentRecord.id, KbDocumentRecord.kind, KbDocumentRecord.source)
        .where(KbDocumentRecord.kind == APPROVED_KIND)).all()}
    return tuple(_faq(f, titles.get(f.document_id, ""), approved.get(f.document_id)) for f in session.scalars(
        select(KbFaqRecord).order_by(KbFaqRecord.document_id, KbFaqRecord.ordinal)))


def _delete_contents(session: Session, document_id: int) -> None:
    session.execute(delete(KbPassageRecord).where(KbPassageRecord.document_id == document_id))
    session.execute(delete(KbFaqRecord).where(KbFaqRecord.document_id == document_id))


def _info(session: Session, d: KbDocumentRecord, passages: int | None = None, faq: int | None = None) -> DocumentInfo:
    if passages is None:
        passages = session.scalar(select(func.count()).where(KbPassageRecord.document_id == d.id)) or 0
    if faq is None:
        faq = session.scalar(select(func.count()).where(KbFaqRecord.document_id == d.id)) or 0
    return DocumentInfo(d.id, d.source, d.title, d.kind, d.version, d.content_hash, passages, faq, d.updated_at)


def _passage(p: KbPassageRecord, title: str) -> StoredPassage:
    return StoredPassage(p.id, p.document_id, title, p.heading, p.text)


def _faq(f: KbFaqRecord, title: str, approved_reply: int | None = None) -> StoredFaq:
    return StoredFaq(f.id, f.document_id, title, f.question, tuple(f.similar or ()), f.answer, approved_reply)
