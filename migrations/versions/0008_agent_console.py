"""The agent console: accounts and their sessions, who answers a conversation (handler), agents' replies, notes,
tags, canned replies and satisfaction scores; the inbox's sort and filter keys on the conversation, and an index
for one conversation's audit timeline.

``reply.inbound_id`` becomes nullable: an agent's message answers no one message (``reply.agent_id`` says who
wrote it). Existing conversations get their ``last_inbound_at`` / ``last_reply_at`` / ``last_intent`` from their
messages, so the inbox shows them in order.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UtcDateTime = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "agent",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("display_name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(256), nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("status", sa.String(16), nullable=False, server_default="offline"),
        sa.Column("seen_at", UtcDateTime, nullable=True),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.UniqueConstraint("username", name="uq_agent_username"),
    )
    op.create_table(
        "agent_session",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("agent_id", BigId, sa.ForeignKey("agent.id", ondelete="CASCADE",
                                                   name="fk_agent_session_agent_id_agent"), nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
        sa.UniqueConstraint("token_hash", name="uq_agent_session_token_hash"),
    )
    op.create_index("ix_agent_session_agent", "agent_session", ["agent_id"])
    with op.batch_alter_table("conversation") as batch:
        batch.add_column(sa.Column("handler", sa.String(16), nullable=False, server_default="bot"))
        batch.add_column(sa.Column("agent_id", BigId, nullable=True))
        batch.add_column(sa.Column("handler_since", UtcDateTime, nullable=True))
        batch.add_column(sa.Column("handoffs", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("last_inbound_at", UtcDateTime, nullable=True))
        batch.add_column(sa.Column("last_reply_at", UtcDateTime, nullable=True))
        batch.add_column(sa.Column("last_intent", sa.String(32), nullable=True))
        batch.create_foreign_key("fk_conversation_agent_id_agent", "agent", ["agent_id"], ["id"])
    op.execute("UPDATE conversation SET last_inbound_at = (SELECT max(received_at) FROM inbound"
               " WHERE inbound.conversation_id = conversation.id)")
    op.execute("UPDATE conversation SET last_reply_at = (SELECT max(created_at) FROM reply"
               " WHERE reply.conversation_id = conversation.id)")
    op.execute("UPDATE conversation SET last_intent = (SELECT intent FROM inbound"
               " WHERE inbound.conversation_id = conversation.id ORDER BY inbound.id DESC LIMIT 1)")
    op.create_index("ix_conversation_recent", "conversation", ["last_inbound_at", "id"])
    op.create_index("ix_conversation_handler_recent", "conversation", ["handler", "last_inbound_at", "id"])
    op.create_index("ix_conversation_channel_recent", "conversation", ["channel", "last_inbound_at", "id"])
    op.create_index("ix_conversation_agent", "conversation", ["agent_id", "last_inbound_at", "id"])
    with op.batch_alter_table("reply") as batch:
        batch.alter_column("inbound_id", existing_type=BigId, nullable=True)
        batch.add_column(sa.Column("agent_id", BigId, nullable=True))
        batch.create_foreign_key("fk_reply_agent_id_agent", "agent", ["agent_id"], ["id"])
    op.create_table(
        "conversation_note",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("conversation_id", BigId, sa.ForeignKey("conversation.id",
                                                          name="fk_conversation_note_conversation_id_conversation"),
                  nullable=False),
        sa.Column("agent_id", BigId, sa.ForeignKey("agent.id", name="fk_conversation_note_agent_id_agent"),
                  nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
    )
    op.create_index("ix_conversation_note_conversation", "conversation_note", ["conversation_id", "id"])
    op.create_table(
        "conversation_tag",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("conversation_id", BigId, sa.ForeignKey("conversation.id",
                                                          name="fk_conversation_tag_conversation_id_conversation"),
                  nullable=False),
        sa.Column("tag", sa.String(32), nullable=False),
        sa.Column("agent_id", BigId, sa.ForeignKey("agent.id", name="fk_conversation_tag_agent_id_agent"),
                  nullable=True),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.UniqueConstraint("conversation_id", "tag", name="uq_conversation_tag_conversation_id_tag"),
    )
    op.create_index("ix_conversation_tag_tag", "conversation_tag", ["tag"])
    op.create_table(
        "canned_reply",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("shortcut", sa.String(32), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("created_by", BigId, sa.ForeignKey("agent.id", name="fk_canned_reply_created_by_agent"),
                  nullable=True),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.UniqueConstraint("shortcut", name="uq_canned_reply_shortcut"),
    )
    op.create_table(
        "csat",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("conversation_id", BigId, sa.ForeignKey("conversation.id",
                                                          name="fk_csat_conversation_id_conversation"),
                  nullable=False),
        sa.Column("round", sa.Integer, nullable=False),
        sa.Column("agent_id", BigId, sa.ForeignKey("agent.id", name="fk_csat_agent_id_agent"), nullable=True),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("score", sa.Integer, nullable=False),
        sa.Column("comment", sa.Text, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.UniqueConstraint("conversation_id", "round", name="uq_csat_conversation_id_round"),
    )
    op.create_index("ix_csat_agent", "csat", ["agent_id", "created_at"])
    op.create_index("ix_audit_conversation", "audit_event", ["conversation_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_audit_conversation", "audit_event")
    op.drop_table("csat")
    op.drop_table("canned_reply")
    op.drop_table("conversation_tag")
    op.drop_table("conversation_note")
    op.execute("DELETE FROM delivery WHERE reply_id IN (SELECT id FROM reply WHERE inbound_id IS NULL)")
    op.execute("DELETE FROM reply WHERE inbound_id IS NULL")
    with op.batch_alter_table("reply") as batch:
        batch.drop_constraint("fk_reply_agent_id_agent", type_="foreignkey")
        batch.drop_column("agent_id")
        batch.alter_column("inbound_id", existing_type=BigId, nullable=False)
    for index in ("ix_conversation_agent", "ix_conversation_channel_recent", "ix_conversation_handler_recent",
                  "ix_conversation_recent"):
        op.drop_index(index, "conversation")
    with op.batch_alter_table("conversation") as batch:
        batch.drop_constraint("fk_conversation_agent_id_agent", type_="foreignkey")
        for column in ("last_intent", "last_reply_at", "last_inbound_at", "handoffs", "handler_since", "agent_id",
                       "handler"):
            batch.drop_column(column)
    op.drop_index("ix_agent_session_agent", "agent_session")
    op.drop_table("agent_session")
    op.drop_table("agent")
