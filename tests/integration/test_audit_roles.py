"""Two roles on real PostgreSQL: the owner migrates, the app runs Kefu and cannot touch the audit log.

The roles come from ``compose/postgres/init-roles.sh`` itself (unique names per run, removed after);
``kefu migrate`` runs as the owner (KEFU_MIGRATION_DATABASE_URL) and grants the app role
(KEFU_DATABASE_APP_ROLE); a gateway and a real Celery worker then answer a web message as the app
role, whose every attempt to rewrite the audit log is refused by PostgreSQL.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from models.audit_verify import verify
from models.infra.db import make_engine
from models.infra.migrate import upgrade
from models.settings import ConfigError, Settings
from tests import services
from tests.integration.conftest import recv_until, start_stack, wait_for

INIT_ROLES = Path(__file__).resolve().parents[2] / "compose" / "postgres" / "init-roles.sh"


@dataclass
class Roles:
    database: str
    owner: str
    app: str
    owner_url: str
    app_url: str


def _url(role: str, database: str) -> str:
    return f"postgresql+psycopg://{role}@127.0.0.1:5432/{database}"  # trust authentication on the test server


@pytest.fixture
def roles() -> Iterator[Roles]:
    services.ensure_postgres()
    suffix = uuid.uuid4().hex[:8]
    owner, app = f"kefu_owner_{suffix}", f"kefu_app_{suffix}"
    database, _ = services.create_database()
    env = {**os.environ, "PGHOST": "127.0.0.1", "POSTGRES_USER": "postgres", "KEFU_DB": database,
           "KEFU_OWNER_ROLE": owner, "KEFU_APP_ROLE": app, "KEFU_OWNER_PASSWORD": "o-secret",
           "KEFU_APP_PASSWORD": "a-secret"}
    try:
        done = subprocess.run(["bash", str(INIT_ROLES)], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "o-secret" not in done.stdout + done.stderr
        yield Roles(database, owner, app, _url(owner, database), _url(app, database))
    finally:
        services.drop_database(database)
        with psycopg.connect(services.PG_ADMIN_URL, autocommit=True) as conn:
            for role in (app, owner):
                conn.execute(f'DROP ROLE IF EXISTS "{role}"')


REFUSED = [
    "ALTER TABLE audit_event DISABLE TRIGGER audit_event_append_only",
    "ALTER TABLE audit_event DISABLE TRIGGER audit_event_chain",
    "ALTER TABLE audit_event DISABLE TRIGGER ALL",
    "DROP TRIGGER audit_event_append_only ON audit_event",
    "DROP TRIGGER audit_event_chain ON audit_event",
    "DROP TABLE audit_event",
    "UPDATE audit_event SET kind = 'forged'",
    "DELETE FROM audit_event",
    "TRUNCATE audit_event",
    "UPDATE audit_chain SET seq = 0",
    "INSERT INTO audit_chain (chain, seq, hash) VALUES (99, 0, 'x')",
    "DELETE FROM audit_chain",
    "CREATE OR REPLACE FUNCTION kefu_audit_chain() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
    "ALTER TABLE audit_event OWNER TO CURRENT_USER",
    "SET session_replication_role = replica",
    "CREATE TABLE shadow (id int)",
]


def test_the_app_role_cannot_rewrite_the_audit_log_but_runs_the_pipeline(
        roles: Roles, tmp_path: Path, tiny_gguf: Path, redis_url: str) -> None:
    stack = start_stack("redis-postgres", tmp_path, tiny_gguf, roles.app_url, redis_url,
                        migration_database_url=roles.owner_url, database_app_role=roles.app)
    try:
        _, token = stack.visitor()
        with stack.ws(token) as ws:
            ws.send(json.dumps({"type": "message", "text": "你好，几点开门？", "client_msg_id": "m1"}))
            reply = recv_until(ws, lambda f: f["type"] == "reply")[-1]
            ws.send(json.dumps({"type": "ack", "reply_id": reply["reply_id"]}))
        with stack.sessions() as session:
            assert session.execute(text("SELECT current_user")).scalar_one() == roles.app

        def kinds() -> list[str]:
            with stack.sessions() as session:
                return list(session.execute(text("SELECT kind FROM audit_event WHERE inbound_id = :id ORDER BY id"),
                                            {"id": reply["message_id"]}).scalars())

        wait_for(lambda: kinds()[-1:] == ["delivered"], timeout=20)
    finally:
        stack.close()

    app = make_engine(Settings(database_url=roles.app_url, data_dir=tmp_path))
    try:
        for statement in REFUSED:
            with pytest.raises(DBAPIError, match=r"must be owner|permission denied"), app.begin() as conn:
                conn.execute(text(statement))
        with app.begin() as conn:  # an INSERT naming its own chain position and hash: the trigger overrides them
            conn.execute(text("INSERT INTO audit_event (at, kind, detail, chain, seq, prev_hash, hash) "
                              "VALUES (CURRENT_TIMESTAMP, 'delivered', '{}', 3, 1, :z, :z)"), {"z": "0" * 64})
            forged = conn.execute(text("SELECT chain, seq, hash FROM audit_event ORDER BY id DESC LIMIT 1")).one()
        assert forged.hash != "0" * 64
        report = verify(app)  # the app role may read the log and its heads
        assert report.clean, report.findings  # the guards too: triggers enabled, chain function SECURITY DEFINER
        assert not report.as_owner
        assert report.rows >= 7
    finally:
        app.dispose()


def test_an_app_role_that_does_not_exist_is_named(roles: Roles, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=roles.app_url, migration_database_url=roles.owner_url,
                        database_app_role="kefu_nobody_here")
    with pytest.raises(ConfigError, match="KEFU_DATABASE_APP_ROLE=kefu_nobody_here: no such role"):
        upgrade(settings)
