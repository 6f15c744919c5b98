"""What the worker decides again once it knows the conversation: a yes to the ask-back, a run of failed answers.

A channel decides a message (:func:`models.dialogue.decide`) before reading anything of the conversation (a
WeChat callback must be answered within 5 s), so a "是的" after "您是需要转接人工客服吗？" and a message after
two fallback replies reach the worker as ordinary questions. Before the model answers, the worker reads the
conversation's last stored replies (one query on ``ix_reply_conversation``) and runs
:data:`models.dialogue.FOLLOW_UP_RULES` with :attr:`Message.asked_back` and :attr:`Message.failed_answers`
filled in. The reply rows are the truth (not the context cache, which misses replies the gateway stored).

Raises what the session raises (a database error): the task retries.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.dialogue import FOLLOW_UP_RULES, Decision, HandOff, Message, decide, failures_limit
from models.settings import Settings
from models.states import ReplySource
from models.tables import ReplyRecord


def conversation_state(session: Session, settings: Settings, conversation_id: int, before_inbound_id: int,
                       channel: str) -> tuple[bool, int]:
    """(the last reply was the ask-back, fallback replies in a row at the end) before an inbound."""
    limit = max(1, failures_limit(settings, channel))  # one reply at least: the ask-back check reads the last
    rows = session.execute(
        select(ReplyRecord.text, ReplyRecord.source)
        .where(ReplyRecord.conversation_id == conversation_id, ReplyRecord.inbound_id < before_inbound_id)
        .order_by(ReplyRecord.id.desc())
        .limit(limit)
    ).all()
    asked_back = bool(rows) and rows[0].text == settings.handoff_ask_back_reply
    failed = 0
    for row in rows:
        if row.source != ReplySource.FALLBACK:
            break
        failed += 1
    return asked_back, failed


def decide_again(session: Session, settings: Settings, text: str, conversation_id: int, inbound_id: int,
                 channel: str, handoff: HandOff) -> Decision:
    """The follow-up decision for a message the model is about to answer: GENERATE when nothing follows up."""
    asked_back, failed = conversation_state(session, settings, conversation_id, inbound_id, channel)
    message = Message(text, channel=channel, asked_back=asked_back, failed_answers=failed)
    return decide(settings, message, handoff, FOLLOW_UP_RULES)
