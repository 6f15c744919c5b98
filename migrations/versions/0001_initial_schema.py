"""Initial schema: conversation, inbound, reply, delivery, append-only audit_event.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Self-contained types: a migration must not change when models/tables.py does.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Utc = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "conversation",
        sa.Column("id", BigId, nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("peer", sa.String(128), nullable=False),
        sa.Column("created_at", Utc, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_conversation"),
        sa.UniqueConstraint("channel", "account", "peer", name="uq_conversation_channel_account_peer"),
    )
    op.create_table(
        "inbound",
        sa.Column("id", BigId, nullable=False),
        sa.Column("conversation_id", BigId, nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("external_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("received_at", Utc, nullable=False),
        sa.Column("queued_at", Utc, nullable=True),
        sa.ForeignKeyConstraint(["conversation_id"], ["conversation.id"], name="fk_inbound_conversation_id_conversation"),
        sa.PrimaryKeyConstraint("id", name="pk_inbound"),
        sa.UniqueConstraint("channel", "account", "external_id", name="uq_inbound_channel_account_external_id"),
    )
    op.create_index("ix_inbound_conversation", "inbound", ["conversation_id", "id"])
    op.create_index("ix_inbound_status", "inbound", ["status", "received_at"])
    op.create_table(
        "reply",
        sa.Column("id", BigId, nullable=False),
        sa.Column("inbound_id", BigId, nullable=False),
        sa.Column("conversation_id", BigId, nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("model", sa.String(128), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("created_at", Utc, nullable=False),
        sa.ForeignKeyConstraint(["conversation_id"], ["conversation.id"], name="fk_reply_conversation_id_conversation"),
        sa.ForeignKeyConstraint(["inbound_id"], ["inbound.id"], name="fk_reply_inbound_id_inbound"),
        sa.PrimaryKeyConstraint("id", name="pk_reply"),
        sa.UniqueConstraint("inbound_id", name="uq_reply_inbound_id"),
    )
    op.create_index("ix_reply_conversation", "reply", ["conversation_id", "id"])
    op.create_table(
        "delivery",
        sa.Column("id", BigId, nullable=False),
        sa.Column("reply_id", BigId, nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", Utc, nullable=False),
        sa.Column("updated_at", Utc, nullable=False),
        sa.ForeignKeyConstraint(["reply_id"], ["reply.id"], name="fk_delivery_reply_id_reply"),
        sa.PrimaryKeyConstraint("id", name="pk_delivery"),
        sa.UniqueConstraint("reply_id", name="uq_delivery_reply_id"),
    )
    op.create_index("ix_delivery_status", "delivery", ["status", "updated_at"])
    op.create_table(
        "audit_event",
        sa.Column("id", BigId, nullable=False),
        sa.Column("at", Utc, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("channel", sa.String(32), nullable=True),
        sa.Column("conversation_id", BigId, nullable=True),
        sa.Column("inbound_id", BigId, nullable=True),
        sa.Column("reply_id", BigId, nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_event"),
    )
    op.create_index("ix_audit_inbound", "audit_event", ["inbound_id"])
    op.create_index("ix_audit_at", "audit_event", ["at"])
    _append_only_up()


def downgrade() -> None:
    _append_only_down()
    op.drop_table("audit_event")
    op.drop_table("delivery")
    op.drop_table("reply")
    op.drop_table("inbound")
    op.drop_table("conversation")


def _append_only_up() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION kefu_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'audit_event is append-only: % is not allowed', TG_OP;
            END $$;
            """
        )
        op.execute(
            "CREATE TRIGGER audit_event_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_event "
            "FOR EACH STATEMENT EXECUTE FUNCTION kefu_audit_append_only()"
        )
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_event_no_{verb.lower()} BEFORE {verb} ON audit_event "
                f"BEGIN SELECT RAISE(ABORT, 'audit_event is append-only: {verb} is not allowed'); END"
            )


def _append_only_down() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_event_append_only ON audit_event")
        op.execute("DROP FUNCTION IF EXISTS kefu_audit_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_event_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_event_no_delete")
