"""Customer satisfaction: asking for a score after a person served the customer, and storing the score.

- :func:`ask` (on hand-back, in the same transaction as ``desk.hand_back``): the request ``csat_request_reply`` is
  stored as a reply with source ``csat``, no inbound, and a pending delivery; the caller publishes ``deliver`` for
  the returned id after the commit. None (nothing stored) when the operator emptied the text, and for a phone
  conversation (the call was transferred to the agent's line: there is nobody to read a request). Audited
  ``csat_asked`` (round, agent id).
- :func:`record` stores a score 1-5 (ValueError otherwise) for the conversation's current *round*: its
  ``handoffs`` count (0: the bot alone). Rating the same round again replaces the score and comment (one
  ``INSERT … ON CONFLICT DO UPDATE`` on ``UNIQUE(conversation_id, round)``, so two concurrent scores cannot both
  insert). The round's agent is read from the audit trail: the agent of the conversation's latest
  ``desk_claimed`` or ``desk_handed_back`` row (None: nobody claimed it, the bot served it). The audit is the
  truth because ``conversation.agent_id`` is cleared on hand-back, when the score arrives. Audited
  ``csat_recorded`` (score, round, agent id; never the comment).
- :func:`score_of` reads a score from a customer's message: just a number 1-5 — ``5``, ``５``, ``5分``, ``五``,
  ``5星`` — else None. Pure; the dialogue rule ``csat_score`` (models.dialogue) uses it.

Raises what the session raises (a database error); LookupError for an unknown conversation.
"""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from models import audit, desk
from models.envelope import utcnow
from models.settings import Settings, load_settings
from models.states import DeliveryStatus, ReplySource
from models.tables import AuditEvent, ConversationRecord, CsatRecord, DeliveryRecord, ReplyRecord

CSAT_ASKED = "csat_asked"  # the customer was asked for a score: round, agent id
CSAT_RECORDED = "csat_recorded"  # a score was stored: score, round, agent id (never the comment)

SCORES = range(1, 6)
NOT_ASKED = frozenset({"phone"})  # channels whose customers cannot read the request
MAX_COMMENT = 500  # characters kept of a comment

_DIGITS = {"一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5}
_SCORE = re.compile(r"^\s*([1-5１-５一二两三四五])\s*(?:分|星|颗星)?\s*[。.!！~～]?\s*$")


def score_of(text: str) -> int | None:
    """The score a message that is just a number 1-5 gives (full-width digits and 一…五 too, with 分/星), or None."""
    found = _SCORE.match(text)
    if found is None:
        return None
    ch = found.group(1)
    if ch in _DIGITS:
        return _DIGITS[ch]
    return int(ch) if ch.isascii() else ord(ch) - ord("０")


def ask(session: Session, conversation_id: int, agent_id: int | None, settings: Settings | None = None) -> int | None:
    """Store the request for a score; its reply id (to deliver after the commit), or None when the request text is
    empty. ``agent_id``: who handed back (audited). ``settings``: the process's Settings; when omitted they are
    read from the environment (pass them: an operator's override in code would otherwise be missed)."""
    text = (settings or load_settings()).csat_request_reply
    if not text.strip():
        return None
    conv = session.execute(select(ConversationRecord.channel, ConversationRecord.handoffs)
                           .where(ConversationRecord.id == conversation_id)).first()
    if conv is None:
        raise LookupError(f"no conversation {conversation_id}")
    if conv.channel in NOT_ASKED:
        return None
    now = utcnow()
    reply = ReplyRecord(inbound_id=None, conversation_id=conversation_id, text=text, source=ReplySource.CSAT,
                        created_at=now)
    session.add(reply)
    session.flush()
    session.add(DeliveryRecord(reply_id=reply.id, channel=conv.channel, status=DeliveryStatus.PENDING))
    audit.record(session, audit.REPLY_STORED, channel=conv.channel, conversation_id=conversation_id,
                 reply_id=reply.id, chars=len(text), source=str(ReplySource.CSAT))
    audit.record(session, CSAT_ASKED, channel=conv.channel, conversation_id=conversation_id, reply_id=reply.id,
                 round=int(conv.handoffs), agent_id=agent_id)
    return int(reply.id)


def round_agent(session: Session, conversation_id: int) -> int | None:
    """The agent who served the conversation's latest stretch with a person (latest desk_claimed / handed-back
    audit row), or None when no agent ever claimed it."""
    detail = session.scalars(
        select(AuditEvent.detail)
        .where(AuditEvent.conversation_id == conversation_id,
               AuditEvent.kind.in_((desk.DESK_CLAIMED, desk.DESK_HANDED_BACK)))
        .order_by(AuditEvent.id.desc()).limit(1)).first()
    agent_id = (detail or {}).get("agent_id")
    return agent_id if isinstance(agent_id, int) else None


def record(session: Session, conversation_id: int, score: int, channel: str, comment: str = "") -> int:
    """Store (or replace) the score of the conversation's current round; the csat row's id. ValueError for a score
    outside 1-5."""
    if isinstance(score, bool) or not isinstance(score, int) or score not in SCORES:
        raise ValueError("score must be an integer 1-5")
    handoffs = session.scalar(select(ConversationRecord.handoffs).where(ConversationRecord.id == conversation_id))
    if handoffs is None:
        raise LookupError(f"no conversation {conversation_id}")
    round_ = int(handoffs)
    agent_id = round_agent(session, conversation_id) if round_ else None
    values = {"conversation_id": conversation_id, "round": round_, "agent_id": agent_id, "channel": channel,
              "score": score, "comment": comment.strip()[:MAX_COMMENT], "created_at": utcnow()}
    module = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    stmt = module.insert(CsatRecord).values(values)
    stmt = stmt.on_conflict_do_update(index_elements=["conversation_id", "round"], set_={
        "score": stmt.excluded.score, "comment": stmt.excluded.comment, "agent_id": stmt.excluded.agent_id,
        "channel": stmt.excluded.channel, "created_at": stmt.excluded.created_at,
    }).returning(CsatRecord.id)
    csat_id = int(session.execute(stmt).scalar_one())
    audit.record(session, CSAT_RECORDED, channel=channel, conversation_id=conversation_id, score=score,
                 round=round_, agent_id=agent_id)
    return csat_id
