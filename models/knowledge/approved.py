"""Approved answers, the semantic answer cache: a model answer an operator approved answers matching questions again.

An approval is stored in the knowledge base itself (:mod:`models.knowledge.store`), not in a table of its own: one
document of kind :data:`~models.knowledge.store.APPROVED_KIND` under the source ``reply:<reply id>`` holding one
FAQ entry — the customer's question as stored (already masked by :mod:`models.privacy`), or the operator's own
wording, and the reply's text. So it bumps the knowledge base's revision and every process picks it up through
the FAQ sync it already runs (:mod:`models.knowledge.faq_sync`); ``decide()``'s ``faq`` rule then matches it with
the FAQ's own confidence and ``KEFU_FAQ_THRESHOLD`` and answers at once, without the model, on every channel,
as source ``approved`` with ``why`` ``approved_answer:<reply id>``. No migration was needed: ``kb_document``'s
unique source is what makes approving the same reply twice a no-op.

- :func:`approve` refuses (:class:`NotApprovable`, a message an operator can act on) a reply that does not exist
  (:class:`UnknownReply`), is neither the model's nor an agent's answer (a fallback, an FAQ or rule answer, a
  hand-off notice) unless the operator gives the answer's text, or whose answer holds personal data, masked
  (``***``) or not (a customer's number or address is nobody else's answer); and a
  question that is empty (``[voice]``), holds personal data, or is already answered confidently by another approved
  answer or an FAQ entry (:func:`answered_by`: two entries for one question cancel each other out in the FAQ
  index's margin, so neither would answer). Approving it again with the same question changes
  nothing (no write, no audit row); with another question it is updated.
- :func:`revoke` removes it (None when the reply has no approved answer). :func:`delete_document` is the store's
  delete for ``kefu kb delete`` and the admin API: an approved answer's document deleted there is revoked (audited
  ``answer_revoked`` too), so the audit log shows every withdrawal of an approved answer the same way.
- :func:`overlaps` warns, after an FAQ sheet is imported, of the approved answers whose question one of its entries
  now answers confidently: the check :func:`approve` makes, the other way round (an import is never refused: the
  sheet may hold the better answer).
- Both write ``answer_approved`` / ``answer_revoked`` audit rows (reply id, document id, who: never text) beside
  the store's ``kb_imported`` / ``kb_deleted``, in the caller's transaction; nothing here commits.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from models import audit, pii
from models.knowledge import faq_cache, store
from models.knowledge.documents import FaqRow, ParsedDocument
from models.knowledge.faq import FaqEntry
from models.knowledge.faq_index import FaqIndex
from models.settings import Settings
from models.states import ReplySource
from models.tables import InboundRecord, KbDocumentRecord, KbFaqRecord, ReplyRecord

TITLE = "已审核回答"  # the documents' title, which a grounded model answer may cite to a customer
MASKED = "***"  # what models.pii's masks leave of personal data (at least three stars)
APPROVABLE = (ReplySource.MODEL, ReplySource.AGENT)  # replies approvable with their own text


class NotApprovable(ValueError):
    """A reply that cannot be approved; ``str()`` says why and what to do instead."""


class UnknownReply(NotApprovable):
    """There is no reply with that id."""


@dataclass(frozen=True, slots=True)
class ApprovedAnswer:
    reply_id: int
    document_id: int
    question: str
    answer: str
    approved_at: datetime


@dataclass(frozen=True, slots=True)
class Approval:
    status: str  # store.NEW, UPDATED or UNCHANGED
    answer: ApprovedAnswer


def approve(session: Session, reply_id: int, question: str | None = None, by: str = "cli",
            settings: Settings | None = None, answer: str | None = None) -> Approval:
    """Approve reply ``reply_id`` for reuse, matched on ``question`` (default: :func:`question_of`), answering with
    the reply's text or the operator's ``answer`` (the console's "make this answer an FAQ" lets them edit it).
    Without ``answer`` only a model's or an agent's reply can be approved; with it, any reply's question.
    ``settings``: its ``KEFU_FAQ`` entries and ``KEFU_FAQ_THRESHOLD`` decide what already answers the question
    (default: the knowledge base alone, at the default threshold). Raises :class:`NotApprovable`."""
    reply = session.get(ReplyRecord, reply_id)
    if reply is None:
        raise UnknownReply(f"no reply #{reply_id}")
    if answer is None and reply.source not in APPROVABLE:
        raise NotApprovable(f"reply #{reply_id} is a {reply.source} reply, not a model answer or an agent's: only "
                            f"those can be approved as they are (FAQ answers are edited in the knowledge base)")
    answer = (reply.text if answer is None else answer).strip()
    if not answer:
        raise NotApprovable(f"the answer to approve for reply #{reply_id} is empty")
    if has_personal_data(answer):
        raise NotApprovable(f"reply #{reply_id} holds personal data (masked or not) in its answer; it cannot be "
                            f"given to other customers")
    if question is None:
        question = question_of(session, reply)
    question = question.strip()
    if not question:
        raise NotApprovable(f"reply #{reply_id} answers a message without text; give the question (--question)")
    if has_personal_data(question):
        raise NotApprovable(f"the question of reply #{reply_id} holds personal data (masked or not); give the "
                            f"question without it (--question)")
    rival = answered_by(session, question, reply_id, settings or Settings())
    if rival is not None:
        raise NotApprovable(f"the question of reply #{reply_id} is already answered by {rival}: two answers to one "
                            f"question leave both unused; revoke or edit that one first, or reword the question "
                            f"(--question)")
    content = json.dumps([question, answer], ensure_ascii=False)
    parsed = ParsedDocument(store.approved_source(reply_id), TITLE, store.APPROVED_KIND,
                            hashlib.sha256(content.encode()).hexdigest(), faq=(FaqRow(question, (), answer),))
    outcome = store.import_document(session, parsed, by=by)
    document = outcome.document
    if outcome.status != store.UNCHANGED:
        audit.record(session, audit.ANSWER_APPROVED, conversation_id=reply.conversation_id,
                     inbound_id=reply.inbound_id, reply_id=reply_id, document_id=document.id, status=outcome.status,
                     by=by)
    return Approval(outcome.status, ApprovedAnswer(reply_id, document.id, question, answer, document.updated_at))


def question_of(session: Session, reply: ReplyRecord) -> str:
    """The customer's message a reply answered: its inbound, or for an agent's reply (no inbound) the customer's
    last message before it; "" when there is none or it has no text (``[voice]``: a voice nothing came of)."""
    if reply.inbound_id is not None:
        inbound = session.get(InboundRecord, reply.inbound_id)
    else:
        inbound = session.scalars(select(InboundRecord).where(InboundRecord.conversation_id == reply.conversation_id,
                                                              InboundRecord.received_at <= reply.created_at)
                                  .order_by(InboundRecord.received_at.desc(), InboundRecord.id.desc()).limit(1)).first()
    question = inbound.text.strip() if inbound is not None else ""
    return "" if question.startswith("[") and question.endswith("]") else question


def revoke(session: Session, reply_id: int, by: str = "cli") -> ApprovedAnswer | None:
    """Withdraw the approved answer of reply ``reply_id``; what was withdrawn, or None when there was none."""
    found = next(iter(_approved(session, store.approved_source(reply_id))), None)
    if found is not None:
        delete_document(session, found.document_id, by=by)
    return found


@dataclass(frozen=True, slots=True)
class Deletion:
    document: store.DocumentInfo
    revoked: ApprovedAnswer | None  # the approved answer the document held, withdrawn with it


def delete_document(session: Session, document_id: int, by: str | None = None) -> Deletion | None:
    """:func:`models.knowledge.store.delete_document`, except that deleting an approved answer's document revokes
    it as :func:`revoke` does (``answer_revoked`` beside ``kb_deleted``; ``by`` defaults to ``cli`` there). None
    when there is no such document."""
    record = session.get(KbDocumentRecord, document_id)
    held = None
    if record is not None and store.approved_reply_id(record.kind, record.source) is not None:
        held = next(iter(_approved(session, record.source)), None)
    removed = store.delete_document(session, document_id, by=by)
    if removed is None:
        return None
    if held is not None:
        audit.record(session, audit.ANSWER_REVOKED, reply_id=held.reply_id, document_id=document_id, by=by or "cli")
    return Deletion(removed, held)


def approved(session: Session) -> list[ApprovedAnswer]:
    """Every approved answer, oldest approval first."""
    return _approved(session, None)


def answered_by(session: Session, question: str, reply_id: int, settings: Settings) -> str | None:
    """What already answers ``question`` confidently (an FAQ entry of ``KEFU_FAQ`` or the knowledge base, another
    approved answer), said for an operator; None when nothing does. The index is rebuilt here, from the store: a
    few milliseconds for a thousand entries once their words are cached (tokens), about a second the first time."""
    rows = [row for row in store.faq_rows(session) if row.approved_reply != reply_id]
    entries = [*faq_cache.from_settings(settings.faq), *(row.entry() for row in rows)]
    if not entries:
        return None
    found = FaqIndex(entries).lookup(question, settings.faq_threshold)
    if found is None:
        return None
    entry = found.entry
    if entry.approved_reply is not None:
        return f"the approved answer of reply #{entry.approved_reply}"
    if entry.id.startswith("kb:"):
        row = next(row for row in rows if row.entry().id == entry.id)
        return f"FAQ entry {entry.id} of {row.title!r} (document #{row.document_id}: kefu kb show {row.document_id})"
    return f"KEFU_FAQ entry {entry.id.removeprefix('settings:')} ({entry.question or ', '.join(entry.keywords)!r})"


def overlaps(session: Session, document_id: int, settings: Settings) -> list[str]:
    """One warning for an operator per approved answer that an FAQ entry of document ``document_id`` competes with:
    the entry answers the approved question confidently (at ``KEFU_FAQ_THRESHOLD``, among ``KEFU_FAQ`` and every FAQ
    sheet's entries: the check :func:`approve` makes), or it is the entry that now keeps the approved answer from
    answering even its own question. Two entries for one question lower each other's confidence through the
    index's margin, so neither answers a paraphrase. Empty when the document has no FAQ entries or nothing is
    approved. Builds two indexes (tens of milliseconds for a few hundred entries once their words are cached)."""
    rows = store.faq_rows(session)
    mine = {row.entry().id: row for row in rows if row.document_id == document_id and row.approved_reply is None}
    answers = [row for row in rows if row.approved_reply is not None]
    if not mine or not answers:
        return []
    configured = faq_cache.from_settings(settings.faq)
    alone = FaqIndex([*configured, *(row.entry() for row in rows if row.approved_reply is None)])  # as approve()
    together = FaqIndex([*configured, *(row.entry() for row in rows)])  # as every process now matches
    warnings = []
    for answer in answers:
        rival = _rival(alone, together, answer.entry(), settings.faq_threshold)
        if rival is None or rival not in mine:
            continue
        reply_id = answer.approved_reply
        warnings.append(f"FAQ entry {rival} ({mine[rival].question!r}) also answers the question of "
                        f"the approved answer of reply #{reply_id} ({answer.question!r}): two answers to one question "
                        f"leave both unused for its paraphrases; keep one (`kefu answers revoke {reply_id}`, or "
                        f"remove the row and import the sheet again)")
    return warnings


def _rival(alone: FaqIndex, together: FaqIndex, answer: FaqEntry, threshold: float) -> str | None:
    """The id of the entry that answers ``answer``'s question without it, or else, when ``answer`` no longer answers
    its own question, of the entry closest to that question; None when neither."""
    found = alone.lookup(answer.question, threshold)
    if found is not None:
        return found.entry.id
    matches = together.search(answer.question)
    if any(m.entry.id == answer.id and m.confidence >= threshold for m in matches):
        return None
    return next((m.entry.id for m in matches if m.entry.id != answer.id), None)


def has_personal_data(text: str) -> bool:
    """Whether ``text`` holds personal data, masked (``***``) or not (:func:`models.pii.find`)."""
    return MASKED in text or bool(pii.find(text))


def _approved(session: Session, source: str | None) -> list[ApprovedAnswer]:
    query = (select(KbDocumentRecord.source, KbDocumentRecord.id, KbFaqRecord.question, KbFaqRecord.answer,
                    KbDocumentRecord.updated_at)
             .join(KbFaqRecord, KbFaqRecord.document_id == KbDocumentRecord.id)
             .where(KbDocumentRecord.kind == store.APPROVED_KIND).order_by(KbDocumentRecord.id))
    if source is not None:
        query = query.where(KbDocumentRecord.source == source)
    return [ApprovedAnswer(reply, document_id, question, answer, at) for source, document_id, question, answer, at
            in session.execute(query).all()
            if (reply := store.approved_reply_id(store.APPROVED_KIND, source)) is not None]
