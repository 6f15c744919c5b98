"""kf_cursor: the persisted kf/sync_msg cursor of each WeChat Customer Service account.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Utc = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "kf_cursor",
        sa.Column("id", BigId, nullable=False),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("open_kfid", sa.String(64), nullable=False),
        sa.Column("cursor", sa.Text(), nullable=True),
        sa.Column("requested", sa.BigInteger(), nullable=False),
        sa.Column("synced", sa.BigInteger(), nullable=False),
        sa.Column("requested_at", Utc, nullable=False),
        sa.Column("synced_at", Utc, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_kf_cursor"),
        sa.UniqueConstraint("account", "open_kfid", name="uq_kf_cursor_account_open_kfid"),
    )


def downgrade() -> None:
    op.drop_table("kf_cursor")
