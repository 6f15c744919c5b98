"""Run Alembic migrations programmatically (``kefu migrate``, the demo and the tests).

Downgrading past the revision that creates the audit table would drop the append-only audit log:
:func:`downgrade` refuses (:class:`AuditLossRefused`) unless the caller says ``drop_audit_log=True``.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

import migrations
from models.infra.db import make_engine
from models.settings import Settings

AUDIT_REVISION = "0001"  # creates audit_event


class AuditLossRefused(Exception):
    """The downgrade would drop the audit log and the caller did not ask for that."""


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.attributes["settings"] = settings
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    command.upgrade(alembic_config(settings), revision)


def audit_rows_dropped_by(settings: Settings, revision: str) -> int | None:
    """How many audit rows a downgrade to ``revision`` would drop (0 for an empty log), or None when it keeps the
    audit table. ``base`` and a relative ``-N`` that reaches past the first revision drop it."""
    config = alembic_config(settings)
    engine = make_engine(settings)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_heads()
            if not current or not _reaches_base(ScriptDirectory.from_config(config), current, revision):
                return None
            return int(conn.execute(text("SELECT count(*) FROM audit_event")).scalar_one())
    finally:
        engine.dispose()


def _reaches_base(script: ScriptDirectory, current: tuple[str, ...], revision: str) -> bool:
    if revision == "base":
        return True
    if revision.startswith("-") and revision[1:].isdigit():
        return int(revision[1:]) >= sum(1 for _ in script.iterate_revisions(current, "base"))
    return False  # a named revision: the first one (which creates the audit table) or a later one keeps it


def downgrade(settings: Settings, revision: str, *, drop_audit_log: bool = False) -> int | None:
    """Downgrade the database; refuses to drop the audit log unless ``drop_audit_log``. The number of audit rows
    dropped with it, or None when the audit table was kept."""
    dropped = audit_rows_dropped_by(settings, revision)
    if dropped is not None and not drop_audit_log:
        raise AuditLossRefused(f"downgrading to {revision} drops the append-only audit log ({dropped} rows); back it "
                               "up first, then run again with --drop-audit-log")
    command.downgrade(alembic_config(settings), revision)
    return dropped
