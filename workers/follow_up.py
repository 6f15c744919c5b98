"""What the worker decides again once it knows the conversation: a yes to the ask-back, a run of failed answers.

A channel decides a message (:func:`models.dialogue.decide`) before reading anything of the conversation (a
WeChat callback must be answered within 5 s), so a "是的" after "您是需要转接人工客服吗？" and a message after
two fallback replies reach the worker as ordinary questions; so does a "5" after the request for a satisfaction
score (models.csat), decided ``csat_score``. Before the model answers, the worker reads the
conversation's last stored replies (one query on ``ix_reply_conversation``) and runs
:data:`models.dialogue.FOLLOW_UP_RULES` with :attr:`Message.asked_back`, :attr:`Message.failed_answers` and
:attr:`Message.csat_asked` filled in. The reply rows are the truth (not the context cache, which misses replies
the gateway stored).

Raises what the session raises (a database error): the task retries.
"""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from models.dialogue import FOLLOW_UP_RULES, Decision, HandOff, Message, decide, failures_limit
from models.settings import Settings
from models.states import ReplySource
from models.tables import InboundRecord, ReplyRecord


class State(NamedTuple):
    """What the stored replies say just before an inbound."""

    asked_back: bool  # the last reply was the ask-back (handoff_ask_back_reply)
    failed: int  # fallback replies in a row at the end
    csat_asked: bool  # the last reply was the request for a satisfaction score (models.csat.ask)


def conversation_state(session: Session, settings: Settings, conversation_id: int, before_inbound_id: int,
                       channel: str) -> State:
    """The conversation's state before an inbound: replies to earlier messages, and replies without a message
    (an agent's, the score request) stored before it arrived."""
    limit = max(1, failures_limit(settings, channel))  # one reply at least: the ask-back check reads the last
    arrived = select(InboundRecord.received_at).where(InboundRecord.id == before_inbound_id).scalar_subquery()
    rows = session.execute(
        select(ReplyRecord.text, ReplyRecord.source, ReplyRecord.inbound_id)
        .where(ReplyRecord.conversation_id == conversation_id,
               or_(ReplyRecord.inbound_id < before_inbound_id,
                   and_(ReplyRecord.inbound_id.is_(None), ReplyRecord.created_at < arrived)))
        .order_by(ReplyRecord.id.desc())
        .limit(limit)
    ).all()
    asked_back = bool(rows) and rows[0].text == settings.handoff_ask_back_reply
    csat_asked = bool(rows) and rows[0].source == ReplySource.CSAT and rows[0].inbound_id is None
    failed = 0
    for row in rows:
        if row.source != ReplySource.FALLBACK:
            break
        failed += 1
    return State(asked_back, failed, csat_asked)


def decide_again(session: Session, settings: Settings, text: str, conversation_id: int, inbound_id: int,
                 channel: str, handoff: HandOff) -> Decision:
    """The follow-up decision for a message the model is about to answer: GENERATE when nothing follows up."""
    state = conversation_state(session, settings, conversation_id, inbound_id, channel)
    message = Message(text, channel=channel, asked_back=state.asked_back, failed_answers=state.failed,
                      csat_asked=state.csat_asked)
    return decide(settings, message, handoff, FOLLOW_UP_RULES)
