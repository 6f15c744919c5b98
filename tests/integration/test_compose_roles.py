"""Kefu's two database roles on real PostgreSQL, without Docker: the files make-secrets.sh writes, read through
KEFU_<NAME>_FILE as the compose services read them, with the roles of compose/postgres/init-roles.sh.

- A new stack: ``kefu migrate`` given only the owner's URL file makes the owner own every table and grants the
  app role what it needs; the app role's URL file reaches Kefu, and the app role cannot touch the audit log.
- A stack from before the roles (every table owned by the superuser): compose/upgrade-roles.sql hands the
  database to the owner, after which the same migration runs as the owner.
- The app role runs the pipeline (a gateway and a real Celery worker answer a web message), and PostgreSQL refuses
  its every attempt to rewrite the audit log.

Roles and databases get unique names per run and are removed after; the test server trusts local connections, so
passwords are set (checked in pg_authid) but not exercised.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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

COMPOSE = Path(__file__).resolve().parents[2] / "compose"


@dataclass
class Stack:
    database: str
    owner: str
    app: str
    secrets: Path  # make-secrets.sh's files, URLs pointed at the test server

    def url(self, role: str) -> str:
        return f"postgresql+psycopg://{role}@127.0.0.1:5432/{self.database}"  # trust authentication


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    services.ensure_postgres()
    suffix = uuid.uuid4().hex[:8]
    owner, app = f"kefu_owner_{suffix}", f"kefu_app_{suffix}"
    database, _ = services.create_database()
    (tmp_path / "make-secrets.sh").write_bytes((COMPOSE / "make-secrets.sh").read_bytes())
    subprocess.run(["sh", str(tmp_path / "make-secrets.sh")], check=True, capture_output=True, timeout=30)
    secrets = tmp_path / "secrets"
    for name, role in (("kefu_database_url", app), ("kefu_migration_database_url", owner)):
        url = (secrets / name).read_text()
        default = "kefu_app" if role == app else "kefu_owner"
        url = url.replace(f"//{default}:", f"//{role}:").replace("@postgres:5432/kefu", f"@127.0.0.1:5432/{database}")
        (secrets / name).write_text(url)
    try:
        yield Stack(database, owner, app, secrets)
    finally:
        services.drop_database(database)
        with psycopg.connect(services.PG_ADMIN_URL, autocommit=True) as conn:
            for role in (app, owner):
                conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def init_roles(stack: Stack, *, files: bool = True) -> None:
    """compose/postgres/init-roles.sh as the postgres image runs it, with the password files compose mounts
    (``files=False``: the passwords themselves in KEFU_OWNER_PASSWORD / KEFU_APP_PASSWORD)."""
    env = {**os.environ, "PGHOST": "127.0.0.1", "POSTGRES_USER": "postgres", "POSTGRES_DB": stack.database,
           "KEFU_OWNER_ROLE": stack.owner, "KEFU_APP_ROLE": stack.app}
    passwords = {name: (stack.secrets / name.lower()).read_text().strip()  # kefu_owner_password, kefu_app_password
                 for name in ("KEFU_OWNER_PASSWORD", "KEFU_APP_PASSWORD")}
    for name, password in passwords.items():
        env |= {f"{name}_FILE": str(stack.secrets / name.lower())} if files else {name: password}
    done = subprocess.run(["bash", str(COMPOSE / "postgres" / "init-roles.sh")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for password in passwords.values():
        assert password not in done.stdout + done.stderr


def kefu(stack: Stack, cwd: Path, *argv: str, migrate: bool = False) -> subprocess.CompletedProcess[str]:
    """``kefu ARGV`` with the environment docker-compose.yml gives a service (``migrate`` for the migrate one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEFU_")}
    env |= {"KEFU_DATABASE_URL_FILE": str(stack.secrets / "kefu_database_url"),
            "KEFU_SECRET_KEY_FILE": str(stack.secrets / "kefu_secret_key"), "KEFU_DATA_DIR": str(cwd / "var")}
    if migrate:
        env |= {"KEFU_MIGRATION_DATABASE_URL_FILE": str(stack.secrets / "kefu_migration_database_url"),
                "KEFU_DATABASE_APP_ROLE": stack.app}
    return subprocess.run([sys.executable, "-m", "workers.cli", *argv], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=180)


def admin(database: str, sql: str) -> list[tuple[object, ...]]:
    url = services.PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def assert_owned_and_granted(stack: Stack) -> None:
    owners = {owner for (owner,) in admin(stack.database,
                                          "SELECT tableowner FROM pg_tables WHERE schemaname = 'public'")}
    assert owners == {stack.owner}
    functions = {owner for (owner,) in admin(stack.database, "SELECT pg_get_userbyid(p.proowner) FROM pg_proc p "
                                             "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'")}
    assert functions == {stack.owner}
    granted = admin(stack.database, f"SELECT has_table_privilege('{stack.app}', 'audit_event', 'INSERT'), "
                                    f"has_table_privilege('{stack.app}', 'audit_event', 'UPDATE'), "
                                    f"has_table_privilege('{stack.app}', 'inbound', 'INSERT')")
    assert granted == [(True, False, True)]
    app_url = stack.url(stack.app).replace("+psycopg", "")
    with psycopg.connect(app_url, autocommit=True) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("ALTER TABLE audit_event DISABLE TRIGGER ALL")


def test_a_new_stack_migrates_as_the_owner_from_the_secret_files(stack: Stack, tmp_path: Path) -> None:
    init_roles(stack)
    passwords = admin("postgres", f"SELECT rolname FROM pg_authid WHERE rolname IN ('{stack.owner}', '{stack.app}') "
                                  "AND rolpassword IS NOT NULL AND NOT rolsuper")
    assert len(passwords) == 2
    done = kefu(stack, tmp_path, "migrate", migrate=True)
    assert done.returncode == 0, done.stderr
    assert_owned_and_granted(stack)
    shown = kefu(stack, tmp_path, "config")  # what a gateway or worker reads: the app role's URL, from its file
    assert shown.returncode == 0, shown.stderr
    assert f"postgresql+psycopg://{stack.app}:****@127.0.0.1:5432/{stack.database}" in shown.stdout
    assert (stack.secrets / "kefu_app_password").read_text().strip() not in shown.stdout + shown.stderr


def test_a_stack_from_before_the_roles_is_handed_to_the_owner(stack: Stack, tmp_path: Path) -> None:
    # the old stack: migrated (to 0004, before the audit chain) by the superuser, who owns everything
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEFU_")}
    env |= {"KEFU_DATABASE_URL": services.PG_ADMIN_URL.rsplit("/", 1)[0].replace(
        "postgresql://", "postgresql+psycopg://", 1) + f"/{stack.database}", "KEFU_DATA_DIR": str(tmp_path / "old")}
    old = subprocess.run([sys.executable, "-m", "workers.cli", "migrate", "0004"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=180)
    assert old.returncode == 0, old.stderr
    init_roles(stack)
    handed = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", stack.database, "-v", "ON_ERROR_STOP=1",
                             "-q", "-v", f"owner={stack.owner}", "-f", str(COMPOSE / "upgrade-roles.sql")],
                            capture_output=True, text=True, timeout=60)
    assert handed.returncode == 0, handed.stderr
    done = kefu(stack, tmp_path, "migrate", migrate=True)
    assert done.returncode == 0, done.stderr
    assert_owned_and_granted(stack)


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
        stack: Stack, tmp_path: Path, tiny_gguf: Path, redis_url: str) -> None:
    init_roles(stack, files=False)
    app_url = stack.url(stack.app)
    kefu_stack = start_stack("redis-postgres", tmp_path, tiny_gguf, app_url, redis_url,
                             migration_database_url=stack.url(stack.owner), database_app_role=stack.app)
    try:
        _, token = kefu_stack.visitor()
        with kefu_stack.ws(token) as ws:
            ws.send(json.dumps({"type": "message", "text": "你好，几点开门？", "client_msg_id": "m1"}))
            reply = recv_until(ws, lambda f: f["type"] == "reply")[-1]
            ws.send(json.dumps({"type": "ack", "reply_id": reply["reply_id"]}))
        with kefu_stack.sessions() as session:
            assert session.execute(text("SELECT current_user")).scalar_one() == stack.app

        def kinds() -> list[str]:
            with kefu_stack.sessions() as session:
                return list(session.execute(text("SELECT kind FROM audit_event WHERE inbound_id = :id ORDER BY id"),
                                            {"id": reply["message_id"]}).scalars())

        wait_for(lambda: kinds()[-1:] == ["delivered"], timeout=20)
    finally:
        kefu_stack.close()

    app = make_engine(Settings(database_url=app_url, data_dir=tmp_path))
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


def test_an_app_role_that_does_not_exist_is_named(stack: Stack, tmp_path: Path) -> None:
    init_roles(stack)
    settings = Settings(data_dir=tmp_path, database_url=stack.url(stack.app), migration_database_url=stack.url(stack.owner),
                        database_app_role="kefu_nobody_here")
    with pytest.raises(ConfigError, match="KEFU_DATABASE_APP_ROLE=kefu_nobody_here: no such role"):
        upgrade(settings)
