"""A WeChat-family customer's text over ``KEFU_MAX_TEXT_CHARS``: what is kept, told and audited.

The platforms deliver texts far longer than Kefu reads (the web and webhook refuse them with 413
instead; a WeChat customer cannot be answered with a status). Kefu keeps the first ``max_text_chars``
characters (:func:`cut`), and then:

- the customer is told, at the start of the reply to that message (:func:`with_note`,
  :data:`NOTE`): an answer given at once carries it when stored; an answer stored by a worker (the
  model's, its fallback, any answer to a cut voice transcription) gets it when it is sent
  (:func:`outgoing_text`; :func:`kept_chars` finds the message's ``truncated`` audit row);
- the audit gets one ``truncated`` row per message (not for a platform retry): ``chars`` received and
  ``kept``, never the text.

Raises nothing of its own; database errors propagate to the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from channels.ingress import Accepted, Ingress
from models import audit
from models.dialogue import Decision
from models.envelope import Reply
from models.tables import AuditEvent

NOTE = "（您的消息较长，我们只读取了前 {kept} 个字。）"


@dataclass(frozen=True, slots=True)
class Cut:
    text: str  # what Kefu reads and stores
    received: int  # characters the customer sent

    @property
    def truncated(self) -> bool:
        return len(self.text) < self.received


def cut(text: str, limit: int) -> Cut:
    return Cut(text[:limit], len(text))


def with_note(reply_text: str, kept: int) -> str:
    return NOTE.format(kept=kept) + "\n" + reply_text


def noted(decision: Decision, cut_text: Cut) -> Decision:
    """A decision that answers now, its text prefixed with the note when the message was cut."""
    if not cut_text.truncated or not decision.text:
        return decision
    return replace(decision, text=with_note(decision.text, len(cut_text.text)))


def record(ingress: Ingress, accepted: Accepted, channel: str, cut_text: Cut) -> None:
    """The ``truncated`` audit row of a new message that was cut (nothing for a retry or a whole message)."""
    if cut_text.truncated and not accepted.duplicate:
        ingress.note(accepted, channel, audit.TRUNCATED, chars=cut_text.received, kept=len(cut_text.text))


def kept_chars(sessions: sessionmaker[Session], inbound_id: int) -> int | None:
    """How many characters of the message were read, when it was cut; None when it was read whole."""
    with sessions() as session:
        detail = session.scalars(select(AuditEvent.detail).where(
            AuditEvent.inbound_id == inbound_id, AuditEvent.kind == audit.TRUNCATED).limit(1)).first()
    kept = detail.get("kept") if isinstance(detail, dict) else None
    return kept if isinstance(kept, int) else None


def outgoing_text(sessions: sessionmaker[Session], reply: Reply) -> str:
    """The text to send for a reply: the answer to a message that was cut gets the note in front, unless it was
    stored with it (answered at once). A worker's answer (the model's, its fallback, the rules' answer to a cut
    transcription) is stored without it."""
    if reply.inbound_id is None:  # an agent's message answers no one message
        return reply.text
    kept = kept_chars(sessions, reply.inbound_id)
    if kept is None or reply.text.startswith(NOTE.format(kept=kept)):
        return reply.text
    return with_note(reply.text, kept)
