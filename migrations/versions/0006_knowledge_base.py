"""Knowledge base: kb_document, kb_passage, kb_faq and the one-row kb_state (its revision).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "kb_document",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("source", sa.String(512), nullable=False),
        sa.Column("title", sa.String(256), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_kb_document"),
        sa.UniqueConstraint("source", name="uq_kb_document_source"),
    )
    for table in ("kb_passage", "kb_faq"):
        columns = ([sa.Column("heading", sa.String(256), nullable=False), sa.Column("text", sa.Text(), nullable=False)]
                   if table == "kb_passage" else
                   [sa.Column("question", sa.Text(), nullable=False), sa.Column("similar", sa.JSON(), nullable=False),
                    sa.Column("answer", sa.Text(), nullable=False)])
        op.create_table(
            table,
            sa.Column("id", BigId, primary_key=True),
            sa.Column("document_id", BigId, nullable=False),
            sa.Column("ordinal", sa.Integer(), nullable=False),
            *columns,
            sa.PrimaryKeyConstraint("id", name=f"pk_{table}"),
            sa.ForeignKeyConstraint(["document_id"], ["kb_document.id"], ondelete="CASCADE",
                                    name=f"fk_{table}_document_id_kb_document"),
            sa.UniqueConstraint("document_id", "ordinal", name=f"uq_{table}_document_id_ordinal"),
        )
    op.create_table(
        "kb_state",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_kb_state"),
    )
    op.execute("INSERT INTO kb_state (id, revision) VALUES (1, 0)")


def downgrade() -> None:
    for table in ("kb_state", "kb_faq", "kb_passage", "kb_document"):
        op.drop_table(table)
