"""store_reply(): the one way an answer is written — reply, its delivery, the message's status, the audit row.

Used for every answer wherever it is decided: a rule answered inside a platform callback (already
sent, passively), a rule or a hand-off notice to be sent by ``deliver``, the model's answer.
Texts are stored as given: the model's answers arrive masked (``workers.answering`` masks them where it makes
them, so that the history it keeps is masked too); operators' texts (rules, FAQ, fallback) are as written. An
answer decided by moderation (``why`` starting with :data:`MODERATED` or :data:`MODERATED_OUT`) gets a
``moderated`` audit row with the action and the rule id.

``reply UNIQUE(inbound_id)`` decides who wins when two workers answer the same message: the loser gets None
and must use the stored reply (:func:`reply_id_of`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from models import audit
from models.envelope import utcnow
from models.infra.db import insert_ignoring_conflict
from models.states import DeliveryStatus, InboundStatus, ReplySource
from models.tables import ConversationRecord, DeliveryRecord, InboundRecord, ReplyRecord

# ``Answer.why`` of an answer decided by moderation: "moderated:<action>:<rule id>" for the customer's message,
# "moderated_out:<action>:<rule id>" for the model's reply; store_reply audits it as ``moderated``.
MODERATED = "moderated:"
MODERATED_OUT = "moderated_out:"


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer to store. ``model`` and the token counts only for the model's answers."""

    text: str
    source: ReplySource
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: int = 0
    why: str | None = None  # the dialogue rule that chose it (models.dialogue.Decision.why)


def store_reply(session: Session, *, inbound_id: int, conversation_id: int, channel: str, answer: Answer,
                passive: bool = False, inbound_text: str | None = None,
                before_audit: Callable[[int], None] | None = None) -> int | None:
    """Store ``answer`` for the inbound; the new reply's id, or None when it was answered already.

    ``passive``: the answer went back inside the platform's own callback response, so its delivery is
    recorded as sent; otherwise it is pending and the caller publishes ``deliver`` after the commit.
    ``inbound_text``: replaces the message's stored text (a voice nothing could be made of).
    ``before_audit``: called with the new reply's id before its ``reply_stored`` row (a generation's own audit
    rows come first in the trail).
    """
    reply_id = insert_ignoring_conflict(session, ReplyRecord, {
        "inbound_id": inbound_id, "conversation_id": conversation_id, "text": answer.text, "source": answer.source,
        "model": answer.model, "prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
        "latency_ms": answer.latency_ms, "created_at": utcnow(),
    }, ["inbound_id"])
    if reply_id is None:
        return None
    if passive:
        session.add(DeliveryRecord(reply_id=reply_id, channel=channel, status=DeliveryStatus.SENT, attempts=1,
                                   parts_sent=1))
    else:
        session.add(DeliveryRecord(reply_id=reply_id, channel=channel, status=DeliveryStatus.PENDING))
    session.execute(update(ConversationRecord).where(ConversationRecord.id == conversation_id)
                    .values(last_reply_at=utcnow()))
    values: dict[str, Any] = {"status": InboundStatus.ANSWERED}
    if inbound_text is not None:
        values["text"] = inbound_text
    session.execute(update(InboundRecord).where(InboundRecord.id == inbound_id).values(**values))
    if before_audit is not None:
        before_audit(reply_id)
    ids: dict[str, Any] = {"channel": channel, "conversation_id": conversation_id, "inbound_id": inbound_id,
                           "reply_id": reply_id}
    detail: dict[str, Any] = {"chars": len(answer.text), "source": str(answer.source)}
    if answer.why is not None:
        detail["rule"] = answer.why
    _record_moderation(session, ids, answer.why)
    audit.record(session, audit.REPLY_STORED, **ids, **detail)
    if passive:
        audit.record(session, audit.DISPATCHED, **ids, via="passive")
    return reply_id


def _record_moderation(session: Session, ids: dict[str, Any], why: str | None) -> None:
    for prefix, direction in ((MODERATED, "in"), (MODERATED_OUT, "out")):
        if why is not None and why.startswith(prefix):
            action, _, rule = why.removeprefix(prefix).partition(":")
            audit.record(session, audit.MODERATED, **ids, direction=direction, action=action, rule=rule)


def reply_id_of(session: Session, inbound_id: int) -> int | None:
    """The id of the reply stored for an inbound, if any."""
    return session.scalars(select(ReplyRecord.id).where(ReplyRecord.inbound_id == inbound_id)).first()
