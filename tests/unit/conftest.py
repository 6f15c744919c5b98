"""Fixtures shared by the unit tests: a clean KEFU_* environment, a migrated SQLite database, a real Redis database."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine

from models.infra.db import make_engine
from models.infra.migrate import upgrade
from models.settings import Settings
from tests import services

REDIS_UNIT_URL = "redis://127.0.0.1:6379/14"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No KEFU_* variables and a cwd without a .env file; returns the (empty) working directory."""
    for name in list(os.environ):
        if name.startswith("KEFU_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def db(clean_env: Path) -> Iterator[Engine]:
    """The embedded database (SQLite under the test's directory), migrated to head."""
    settings = Settings(data_dir=clean_env / "var")
    upgrade(settings)
    engine = make_engine(settings)
    yield engine
    engine.dispose()


@pytest.fixture
def redis14() -> Iterator[str]:
    """Real Redis, database 14, flushed before and after the test."""
    services.ensure_redis()
    client = redis.Redis.from_url(REDIS_UNIT_URL, socket_timeout=5)
    client.flushdb()
    try:
        yield REDIS_UNIT_URL
    finally:
        client.flushdb()
        client.close()
