"""Alembic environment: the database comes from Kefu's Settings, not from alembic.ini."""

from __future__ import annotations

from alembic import context

from models.infra.db import make_engine
from models.settings import load_settings
from models.tables import Base

config = context.config
settings = config.attributes.get("settings") or load_settings()


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    engine = make_engine(settings)
    try:
        with engine.connect() as conn:
            _migrate(conn)
    finally:
        engine.dispose()


def _migrate(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # type: ignore[attr-defined]
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run `kefu migrate` against a database")
run()
