"""Real PostgreSQL and Redis for the tests: found running, or started with the machine's own commands.

Every test session gets its own PostgreSQL database and its own Redis database number, so runs
never see each other's rows or queues.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import psycopg
import redis

PG_ADMIN_URL = os.environ.get("KEFU_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("KEFU_TEST_REDIS", "redis://127.0.0.1:6379")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_port(port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _port_open(port):
            return True
        time.sleep(0.2)
    return False


def ensure_postgres() -> None:
    if _port_open(5432):
        return
    versions = sorted(os.listdir("/etc/postgresql")) if Path("/etc/postgresql").is_dir() else []
    if shutil.which("pg_ctlcluster") and versions:
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"], check=False)
    if not _wait_port(5432, 30):
        raise RuntimeError("PostgreSQL is not running on 127.0.0.1:5432 and could not be started (run .ci/run)")


def ensure_redis() -> None:
    if _port_open(6379):
        return
    if shutil.which("redis-server"):
        subprocess.run(
            ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379", "--save", "",
             "--appendonly", "no"],
            check=False,
        )
    if not _wait_port(6379, 15):
        raise RuntimeError("Redis is not running on 127.0.0.1:6379 and could not be started (run .ci/run)")


def create_database() -> tuple[str, str]:
    """A fresh, empty PostgreSQL database; returns (name, SQLAlchemy URL)."""
    name = f"kefu_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return name, f"{base}/{name}"


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def redis_db_url(db: int) -> str:
    url = f"{REDIS_BASE}/{db}"
    redis.Redis.from_url(url).flushdb()
    return url


if __name__ == "__main__":  # `make services`: start PostgreSQL and Redis if they are not running
    ensure_postgres()
    ensure_redis()
    print("PostgreSQL 127.0.0.1:5432 and Redis 127.0.0.1:6379 are up")
