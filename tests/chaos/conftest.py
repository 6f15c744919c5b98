"""The chaos suite: faults and attacks injected into a real stack, each test checking its promise from the database.

The stacks are tests/integration's (real Redis, PostgreSQL, Celery worker, llama.cpp); here with recovery
limits of seconds so that a lost task comes back within a test (``recovering_stack``, shared with
tests/integration/test_reliability.py). ``hung_broker`` and ``black_holed_db`` put the gateway's Redis or
PostgreSQL behind a :class:`~tests.chaos.faults.FaultProxy`; the worker and the sweeper use the real servers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from models.infra.db import make_engine, make_session_factory
from models.infra.migrate import upgrade
from models.settings import Settings
from tests.chaos.faults import FaultProxy
from tests.conftest import as_env, settings_kwargs
from tests.integration.conftest import Stack
from tests.integration.test_reliability import recovering_stack
from workers import runtime as worker_runtime
from workers.demo.processes import GatewayThread, WorkerProcess


@pytest.fixture
def tiny_stack(tmp_path: Path, tiny_gguf: Path, pg_url: str, redis_url: str) -> Iterator[Stack]:
    yield from recovering_stack(tmp_path, tiny_gguf, pg_url, redis_url)


@dataclass
class Proxied:
    stack: Stack
    proxy: FaultProxy


def _proxied_stack(tmp_path: Path, model: Path, pg: str, rds: str, target: tuple[str, int],
                   through: Callable[[FaultProxy], dict[str, Any]]) -> Iterator[Proxied]:
    """A stack whose gateway reaches ``target`` through a fault proxy: ``through(proxy)`` are its settings changes."""
    values = settings_kwargs("redis-postgres", tmp_path, model, pg, rds)
    settings = Settings(**values)
    upgrade(settings)
    worker = WorkerProcess(as_env(values), tmp_path / "worker.log")
    proxy = FaultProxy(*target)
    gateway = GatewayThread(settings.model_copy(update=through(proxy))).start()
    stack = Stack("redis-postgres", settings, gateway, worker, make_session_factory(make_engine(settings)),
                  as_env(values))
    try:
        assert worker.wait(timeout=120), (tmp_path / "worker.log").read_text()[-3000:]
        worker_runtime.configure(settings)
        yield Proxied(stack, proxy)
    finally:
        proxy.passthrough()
        stack.close()
        proxy.close()
        worker_runtime.shutdown()


@pytest.fixture
def hung_broker(tmp_path: Path, tiny_gguf: Path, pg_url: str, redis_url: str) -> Iterator[Proxied]:
    """The gateway's broker and Redis (bus, kv, locks) go through the proxy."""
    db = redis_url.rsplit("/", 1)[1]
    yield from _proxied_stack(tmp_path, tiny_gguf, pg_url, redis_url, ("127.0.0.1", 6379),
                              lambda proxy: {"broker_url": proxy.url("redis", f"/{db}"),
                                             "redis_url": proxy.url("redis", f"/{db}")})


@pytest.fixture
def black_holed_db(tmp_path: Path, tiny_gguf: Path, pg_url: str, redis_url: str) -> Iterator[Proxied]:
    """The gateway's PostgreSQL goes through the proxy."""
    url = httpx.URL(pg_url.replace("postgresql+psycopg://", "http://"))
    host, port = url.host, url.port or 5432
    yield from _proxied_stack(tmp_path, tiny_gguf, pg_url, redis_url, (host, port),
                              lambda proxy: {"database_url": pg_url.replace(f"{host}:{port}", f"127.0.0.1:{proxy.port}")})
