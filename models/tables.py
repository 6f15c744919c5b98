"""SQLAlchemy 2.0 typed tables: conversation, inbound, reply, delivery, audit_event.

Idempotency lives in constraints: ``inbound UNIQUE(channel, account, external_id)`` turns a
platform retry into a no-op, ``reply UNIQUE(inbound_id)`` and ``delivery UNIQUE(reply_id)`` make a
re-run task harmless. ``audit_event`` is append-only; the migration installs triggers that reject
UPDATE and DELETE on it (PostgreSQL and SQLite).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.expression import false

from models.envelope import utcnow
from models.states import DeliveryStatus, Handler, InboundStatus

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a real BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in, timezone-aware UTC out, on PostgreSQL and SQLite alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class ConversationRecord(Base):
    """Who talks to whom, and who answers them now (``handler``, models.states.Handler: the bot, the waiting
    queue of the agent console, or one agent). The ``last_*`` columns are the inbox's sort and filter keys,
    kept current by ingress (a customer's message) and by every stored reply."""

    __tablename__ = "conversation"
    __table_args__ = (
        UniqueConstraint("channel", "account", "peer"),
        Index("ix_conversation_recent", "last_inbound_at", "id"),
        Index("ix_conversation_handler_recent", "handler", "last_inbound_at", "id"),
        Index("ix_conversation_channel_recent", "channel", "last_inbound_at", "id"),
        Index("ix_conversation_agent", "agent_id", "last_inbound_at", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    channel: Mapped[str] = mapped_column(String(32))
    account: Mapped[str] = mapped_column(String(64))
    peer: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    handler: Mapped[str] = mapped_column(String(16), default=Handler.BOT, server_default=Handler.BOT.value)
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agent.id"), nullable=True)
    handler_since: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    handoffs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # times a person was asked for
    last_inbound_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    last_reply_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    last_intent: Mapped[str | None] = mapped_column(String(32), nullable=True)


class InboundRecord(Base):
    """A customer message. ``status``: received → queued → answered | failed; or ``human`` when it arrived
    while a person owns the conversation (WeChat Customer Service hand-off) and the model stays out.

    ``media_id``: a voice message's file on the platform, for a worker to download and transcribe;
    its ``text`` is empty until then (and the transcription, or ``[voice]`` if none came out, after).
    """

    __tablename__ = "inbound"
    __table_args__ = (
        UniqueConstraint("channel", "account", "external_id"),
        Index("ix_inbound_conversation", "conversation_id", "id"),
        Index("ix_inbound_status", "status", "received_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversation.id"))
    channel: Mapped[str] = mapped_column(String(32))
    account: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16), default="text")
    text: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=InboundStatus.RECEIVED)  # models.states
    received_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    media_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    # models.intents' label: the gateway's rules when it accepts the message (a voice: the worker's, once
    # transcribed), or the model's for a message the rules could not place; None before either has run
    intent: Mapped[str | None] = mapped_column(String(32), nullable=True)


class ReplyRecord(Base):
    """An answer: to one customer message (``inbound_id``; the model, the FAQ, a rule), or an agent's message
    from the console (``agent_id``; ``inbound_id`` NULL, as an agent may write any number of them)."""

    __tablename__ = "reply"
    __table_args__ = (
        UniqueConstraint("inbound_id"),
        Index("ix_reply_conversation", "conversation_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound.id"), nullable=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversation.id"))
    text: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16))  # models.states.ReplySource
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agent.id"), nullable=True)
    model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class DeliveryRecord(Base):
    """Getting one reply to the customer. ``status``: pending → sending → sent → delivered, or failed.

    ``sending`` is the claim of the one deliver task allowed to send; the sweeper returns a claim
    older than ``redeliver_after_s`` (its worker died) to ``pending``.
    """

    __tablename__ = "delivery"
    __table_args__ = (
        UniqueConstraint("reply_id"),
        Index("ix_delivery_status", "status", "updated_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    reply_id: Mapped[int] = mapped_column(ForeignKey("reply.id"))
    channel: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    parts_sent: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class AuditEvent(Base):
    """Append-only log of everything that happened to a message, hash-chained (``models.audit_chain``).

    ``chain``, ``seq``, ``prev_hash`` and ``hash`` are written by the database's trigger on PostgreSQL
    (whatever an INSERT says) and by ``models.audit.record`` on SQLite; NULL only on a forged row.
    """

    __tablename__ = "audit_event"
    __table_args__ = (
        Index("ix_audit_inbound", "inbound_id"),
        Index("ix_audit_at", "at"),
        Index("ix_audit_conversation", "conversation_id", "id"),  # the console's timeline of one conversation
        Index("ix_audit_chain_seq", "chain", "seq", unique=True),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str | None] = mapped_column(String(32), nullable=True)
    conversation_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    inbound_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    reply_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    chain: Mapped[int | None] = mapped_column(Integer, nullable=True)
    seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    prev_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    hash: Mapped[str | None] = mapped_column(String(64), nullable=True)


class AuditChainHead(Base):
    """The last row of each audit chain: appending locks it, so a chain's rows are numbered without gaps.

    ``kefu audit verify`` compares it with the chain's last row, which is how deleted tail rows show.
    Only the owner role writes it (the PostgreSQL trigger runs as the owner); the app role may read it.
    """

    __tablename__ = "audit_chain"

    chain: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    hash: Mapped[str] = mapped_column(String(64))


class KfCursorRecord(Base):
    """Where Kefu stands in one WeChat Customer Service account's message log (``kf/sync_msg``).

    ``cursor`` is the platform's ``next_cursor`` after the last page whose messages were all
    persisted, so a restart neither loses nor repeats messages. Each callback bumps ``requested``;
    a sync records the ``requested`` value it started from in ``synced``: ``requested > synced``
    means news arrived that no finished sync has looked at (no clocks involved).
    """

    __tablename__ = "kf_cursor"
    __table_args__ = (UniqueConstraint("account", "open_kfid"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account: Mapped[str] = mapped_column(String(64))
    open_kfid: Mapped[str] = mapped_column(String(64))
    cursor: Mapped[str | None] = mapped_column(Text, nullable=True)
    requested: Mapped[int] = mapped_column(BigInteger, default=0)
    synced: Mapped[int] = mapped_column(BigInteger, default=0)
    requested_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    synced_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class KbDocumentRecord(Base):
    """One imported knowledge-base document (a policy page, a manual, an FAQ sheet), identified by ``source``.

    ``version`` counts its imports whose content differed (``content_hash``, SHA-256 of the file's bytes); only
    the current version's passages and FAQ entries are kept, each version's import is in the audit log.
    """

    __tablename__ = "kb_document"
    __table_args__ = (UniqueConstraint("source"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    source: Mapped[str] = mapped_column(String(512))
    title: Mapped[str] = mapped_column(String(256))
    kind: Mapped[str] = mapped_column(String(16))  # markdown, text, html, pdf, docx, faq_csv, faq_xlsx
    content_hash: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class KbPassageRecord(Base):
    """A bounded piece of a document's text, with the heading it sits under: what retrieval returns."""

    __tablename__ = "kb_passage"
    __table_args__ = (UniqueConstraint("document_id", "ordinal"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("kb_document.id", ondelete="CASCADE"))
    ordinal: Mapped[int] = mapped_column(Integer)
    heading: Mapped[str] = mapped_column(String(256), default="")
    text: Mapped[str] = mapped_column(Text)


class KbFaqRecord(Base):
    """A curated question with its similar questions (相似问) and answer, from an FAQ sheet."""

    __tablename__ = "kb_faq"
    __table_args__ = (UniqueConstraint("document_id", "ordinal"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("kb_document.id", ondelete="CASCADE"))
    ordinal: Mapped[int] = mapped_column(Integer)
    question: Mapped[str] = mapped_column(Text)
    similar: Mapped[list[str]] = mapped_column(JSON, default=list)
    answer: Mapped[str] = mapped_column(Text)


class KbStateRecord(Base):
    """One row: ``revision`` goes up with every change to the knowledge base, so a process holding it in memory
    knows when to load it again (one cheap read)."""

    __tablename__ = "kb_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    revision: Mapped[int] = mapped_column(BigInteger, default=0)


class AgentRecord(Base):
    """A person who logs into the agent console: ``role`` admin or agent (models.states.Role); the password as
    an argon2 hash. ``status`` is what they set (online, away); ``seen_at`` the last sign of life from their
    console, so an agent whose browser closed stops counting as present (models.desk)."""

    __tablename__ = "agent"
    __table_args__ = (UniqueConstraint("username"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    username: Mapped[str] = mapped_column(String(64))
    display_name: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(256))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    status: Mapped[str] = mapped_column(String(16), default="offline", server_default="offline")
    seen_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class AgentSessionRecord(Base):
    """A console login: the cookie's token is stored only as its SHA-256; ``csrf`` is the token every
    state-changing request must echo."""

    __tablename__ = "agent_session"
    __table_args__ = (UniqueConstraint("token_hash"), Index("ix_agent_session_agent", "agent_id"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    agent_id: Mapped[int] = mapped_column(ForeignKey("agent.id", ondelete="CASCADE"))
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)


class ConversationNoteRecord(Base):
    """A private note an agent left on a conversation; never sent to the customer."""

    __tablename__ = "conversation_note"
    __table_args__ = (Index("ix_conversation_note_conversation", "conversation_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversation.id"))
    agent_id: Mapped[int] = mapped_column(ForeignKey("agent.id"))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class ConversationTagRecord(Base):
    """A label on a conversation (退款, VIP…), for filtering and reports."""

    __tablename__ = "conversation_tag"
    __table_args__ = (UniqueConstraint("conversation_id", "tag"), Index("ix_conversation_tag_tag", "tag"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversation.id"))
    tag: Mapped[str] = mapped_column(String(32))
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agent.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class CannedReplyRecord(Base):
    """A prepared answer an agent inserts by its shortcut (``/refund``)."""

    __tablename__ = "canned_reply"
    __table_args__ = (UniqueConstraint("shortcut"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    shortcut: Mapped[str] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(Text)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("agent.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class CsatRecord(Base):
    """A customer's satisfaction score (1-5) for one stretch of a conversation: ``round`` is the conversation's
    ``handoffs`` count when it was asked (0: the bot alone), ``agent_id`` who served it (NULL: the bot). Rating
    the same round again replaces the score."""

    __tablename__ = "csat"
    __table_args__ = (UniqueConstraint("conversation_id", "round"), Index("ix_csat_agent", "agent_id", "created_at"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversation.id"))
    round: Mapped[int] = mapped_column(Integer, default=0)
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agent.id"), nullable=True)
    channel: Mapped[str] = mapped_column(String(32))
    score: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class ApiKeyRecord(Base):
    """A key for the OpenAI/Ollama-compatible API (channels/api): only the SHA-256 of the key is kept; ``prefix``
    (its first characters) lets an operator tell keys apart. ``name`` is the API channel's account: the
    conversations, audit rows and rate limits of the key's requests go by it. A revoked key stays for the audit."""

    __tablename__ = "api_key"
    __table_args__ = (UniqueConstraint("name"), UniqueConstraint("key_hash"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class ApiRequestRecord(Base):
    """The conversation an API client sent with one request (its ``messages`` before the last user message, as
    ``[[role, text], …]``, text stored as inbound text is), read by the worker instead of the stored history:
    an OpenAI/Ollama client keeps the conversation itself. Keyed like the inbound row (account, external_id), and
    written before it, so a worker never finds the inbound without its context."""

    __tablename__ = "api_request"
    __table_args__ = (UniqueConstraint("account", "external_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(128), default="")
    messages: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
