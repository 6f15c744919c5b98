"""The console's conversation view: one conversation's transcript, audit timeline and knowledge sources.

- ``messages``: the customer's messages (``inbound``: text as stored, intent, status) and the replies (``bot``,
  with their source — model, faq, approved, rule, handoff, csat… — or ``agent``, with the agent's display name),
  each with its time and delivery status, in time order; the latest :data:`MAX_MESSAGES` of them.
- ``timeline``: the conversation's audit rows (kind, time, detail: already masked when written, models.audit),
  the latest :data:`MAX_EVENTS`.
- ``sources``: for each reply the model was given knowledge for (audit ``kb_used``: passage and FAQ ids), the
  documents they came from, resolved to titles while they still exist (a deleted document shows as its id).

Reads only; :func:`view` returns None for an unknown conversation.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from channels.console import inbox
from models import audit
from models.states import ReplySource
from models.tables import (
    AgentRecord,
    AuditEvent,
    ConversationRecord,
    DeliveryRecord,
    InboundRecord,
    KbDocumentRecord,
    KbFaqRecord,
    KbPassageRecord,
    ReplyRecord,
)

MAX_MESSAGES = 200
MAX_EVENTS = 300


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat(timespec="microseconds")


def _inbound(session: Session, conversation_id: int) -> list[dict[str, Any]]:
    rows = session.execute(
        select(InboundRecord.id, InboundRecord.text, InboundRecord.kind, InboundRecord.intent,
               InboundRecord.status, InboundRecord.received_at)
        .where(InboundRecord.conversation_id == conversation_id)
        .order_by(InboundRecord.id.desc()).limit(MAX_MESSAGES)).all()
    return [{"who": "customer", "id": r.id, "text": r.text, "kind": r.kind, "intent": r.intent,
             "status": r.status, "at": _iso(r.received_at)} for r in rows]


def _replies(session: Session, conversation_id: int) -> list[dict[str, Any]]:
    rows = session.execute(
        select(ReplyRecord.id, ReplyRecord.inbound_id, ReplyRecord.text, ReplyRecord.source, ReplyRecord.model,
               ReplyRecord.created_at, AgentRecord.display_name, DeliveryRecord.status.label("delivery"))
        .outerjoin(AgentRecord, AgentRecord.id == ReplyRecord.agent_id)
        .outerjoin(DeliveryRecord, DeliveryRecord.reply_id == ReplyRecord.id)
        .where(ReplyRecord.conversation_id == conversation_id)
        .order_by(ReplyRecord.id.desc()).limit(MAX_MESSAGES)).all()
    return [{"who": "agent" if r.source == ReplySource.AGENT else "bot", "id": r.id, "inbound_id": r.inbound_id,
             "text": r.text, "source": r.source, "model": r.model, "agent_name": r.display_name,
             "delivery": r.delivery, "at": _iso(r.created_at)} for r in rows]


def _timeline(session: Session, conversation_id: int) -> list[dict[str, Any]]:
    rows = session.execute(
        select(AuditEvent.id, AuditEvent.kind, AuditEvent.at, AuditEvent.inbound_id, AuditEvent.reply_id,
               AuditEvent.detail)
        .where(AuditEvent.conversation_id == conversation_id)
        .order_by(AuditEvent.id.desc()).limit(MAX_EVENTS)).all()
    return [{"id": r.id, "kind": r.kind, "at": _iso(r.at), "inbound_id": r.inbound_id, "reply_id": r.reply_id,
             "detail": r.detail or {}} for r in reversed(rows)]


def _ids(value: Any) -> list[int]:
    if isinstance(value, int):
        return [value]
    return [v for v in value if isinstance(v, int)] if isinstance(value, list) else []


def _refs(detail: dict[str, Any]) -> list[tuple[str, int]]:
    """The knowledge one ``kb_used`` row names: passages, and FAQ entries (the model's ``faq``, the fused match's
    ``faq_entry``)."""
    return ([("passage", i) for i in _ids(detail.get("passages"))]
            + [("faq", i) for key in ("faq", "faq_entry") for i in _ids(detail.get(key))])


def _titles(session: Session, refs: set[tuple[str, int]]) -> dict[tuple[str, int], tuple[int, str]]:
    """(kind, id) → (document id, title) for the passages and entries still stored."""
    found: dict[tuple[str, int], tuple[int, str]] = {}
    for kind, table in (("passage", KbPassageRecord), ("faq", KbFaqRecord)):
        ids = {i for k, i in refs if k == kind}
        if not ids:
            continue
        rows = session.execute(select(table.id, KbDocumentRecord.id.label("document_id"), KbDocumentRecord.title)
                               .join(KbDocumentRecord, KbDocumentRecord.id == table.document_id)
                               .where(table.id.in_(ids)))
        found.update({(kind, r.id): (r.document_id, r.title) for r in rows})
    return found


def sources(session: Session, timeline: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """reply id → the knowledge it was given: ``{"kind": "passage"|"faq", "id", "document_id", "title"}`` (title
    and document None when the passage or entry is gone)."""
    used = {int(e["reply_id"]): _refs(e["detail"]) for e in timeline
            if e["kind"] == audit.KB_USED and e["reply_id"] is not None}
    titles = _titles(session, {ref for refs in used.values() for ref in refs})
    gone = (None, None)
    return {reply_id: [{"kind": kind, "id": i, "document_id": titles.get((kind, i), gone)[0],
                        "title": titles.get((kind, i), gone)[1]} for kind, i in refs]
            for reply_id, refs in used.items()}


def view(session: Session, conversation_id: int) -> dict[str, Any] | None:
    """Everything the conversation view shows, or None when there is no such conversation."""
    if session.get(ConversationRecord, conversation_id) is None:
        return None
    summary = inbox.one(session, conversation_id)
    assert summary is not None
    messages = _inbound(session, conversation_id) + _replies(session, conversation_id)
    # time order; a reply after the message it answers even when both carry the same instant
    messages.sort(key=lambda m: (m["at"] or "", 0 if m["who"] == "customer" else 1, m["id"]))
    timeline = _timeline(session, conversation_id)
    kb = sources(session, timeline)
    for m in messages:
        if m["who"] != "customer":
            m["sources"] = kb.get(m["id"], [])
    return {"conversation": summary.json(), "messages": messages[-MAX_MESSAGES:], "timeline": timeline}
