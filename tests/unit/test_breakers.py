"""The gateway fails fast after a dependency did not answer: one timeout, then an immediate error for a while.

Real parts: a Celery publisher against a port nothing listens on, and a PostgreSQL engine against a socket that
accepts connections and never answers (a hung server).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from models.infra.db import make_engine, ping
from models.infra.db_deadline import DatabaseUnavailable
from models.infra.queues import BrokerUnavailable, Publisher, make_celery
from models.settings import Settings


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A listening socket that never accepts: the kernel completes the handshake, nothing ever answers."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


def test_a_failed_publish_makes_the_next_fail_at_once(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:1/0", publish_timeout_s=0.5)
    publisher = Publisher(make_celery(settings, "breaker-test", gateway=True), retry_after_s=60)
    with pytest.raises(Exception) as first:
        publisher.handle_inbound(1)
    assert not isinstance(first.value, BrokerUnavailable)  # the broker was asked
    with pytest.raises(BrokerUnavailable):
        publisher.deliver(2)  # not asked again within retry_after_s
    with pytest.raises(BrokerUnavailable):
        publisher.pull("wecom_kf", "default", "kf1")


def test_a_database_connect_that_timed_out_makes_the_next_fail_at_once(tmp_path: Path, silent_port: int) -> None:
    settings = Settings(data_dir=tmp_path, db_retry_after_s=60)
    engine = make_engine(settings, f"postgresql+psycopg://kefu:x@127.0.0.1:{silent_port}/kefu", pre_ping=False,
                         response_timeout_s=1.0)
    try:
        with pytest.raises(OperationalError):
            ping(engine)  # waits KEFU_DB_CONNECT_TIMEOUT_S
        with pytest.raises(DatabaseUnavailable):
            ping(engine)
    finally:
        engine.dispose()
