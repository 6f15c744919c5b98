"""Run Alembic migrations programmatically (``kefu migrate``, the demo and the tests).

Migrations run under ``KEFU_MIGRATION_DATABASE_URL`` (the owner role) when it is set, else under
``KEFU_DATABASE_URL``. With ``KEFU_DATABASE_APP_ROLE`` set (PostgreSQL), every upgrade then grants that
runtime role exactly what it needs, table by table: SELECT/INSERT/UPDATE/DELETE on the working tables,
SELECT and INSERT only on ``audit_event``, SELECT only on ``audit_chain`` and ``alembic_version``
(docs/audit.md); a role that does not exist is a :class:`ConfigError` naming the variable.

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
from models.settings import ConfigError, Settings

AUDIT_REVISION = "0001"  # creates audit_event
# what the runtime role may do, per table; every other table: SELECT, INSERT, UPDATE, DELETE
RUNTIME_PRIVILEGES = {"audit_event": "SELECT, INSERT", "audit_chain": "SELECT", "alembic_version": "SELECT"}


class AuditLossRefused(Exception):
    """The downgrade would drop the audit log and the caller did not ask for that."""


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.attributes["settings"] = settings
    return config


def as_owner(settings: Settings) -> Settings:
    """The settings migrations run under: the database URL is the migration (owner) role's when one is set."""
    if not settings.migration_database_url:
        return settings
    return settings.model_copy(update={"database_url": settings.migration_database_url})


def upgrade(settings: Settings, revision: str = "head") -> None:
    owner = as_owner(settings)
    command.upgrade(alembic_config(owner), revision)
    if settings.database_app_role:
        grant_runtime(owner, settings.database_app_role)


def grant_runtime(owner: Settings, role: str) -> None:
    """Grant ``role`` the runtime privileges on every table of the schema (PostgreSQL; SQLite has no roles)."""
    engine = make_engine(owner)
    try:
        if engine.dialect.name != "postgresql":
            return
        with engine.begin() as conn:
            if conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first() is None:
                raise ConfigError(f"KEFU_DATABASE_APP_ROLE={role}: no such role in the database; create it first "
                                  "(compose/postgres/init-roles.sh) or leave the variable empty for one role")
            schema = conn.execute(text("SELECT quote_ident(current_schema())")).scalar_one()
            tables = conn.execute(text("SELECT quote_ident(tablename), tablename FROM pg_tables "
                                       "WHERE schemaname = current_schema()")).all()
            conn.execute(text(f'GRANT USAGE ON SCHEMA {schema} TO "{role}"'))
            for quoted, name in tables:
                conn.execute(text(f'REVOKE ALL ON TABLE {quoted} FROM "{role}"'))
                privileges = RUNTIME_PRIVILEGES.get(name, "SELECT, INSERT, UPDATE, DELETE")
                conn.execute(text(f'GRANT {privileges} ON TABLE {quoted} TO "{role}"'))
            conn.execute(text(f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO "{role}"'))
    finally:
        engine.dispose()


def audit_rows_dropped_by(settings: Settings, revision: str) -> int | None:
    """How many audit rows a downgrade to ``revision`` would drop (0 for an empty log), or None when it keeps the
    audit table. ``base`` and a relative ``-N`` that reaches past the first revision drop it."""
    settings = as_owner(settings)
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
    command.downgrade(alembic_config(as_owner(settings)), revision)
    return dropped
