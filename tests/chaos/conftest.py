"""The chaos suite: faults and attacks injected into a real stack, each test checking its promise from the database.

The stacks are tests/integration's (real Redis, PostgreSQL, Celery worker, llama.cpp); here with recovery
limits of seconds so that a lost task comes back within a test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Stack, start_stack
from tests.integration.test_reliability import FAST_RECOVERY
from workers import runtime as worker_runtime


def recovering_stack(tmp_path: Path, model: Path, pg_url: str, redis_url: str) -> Iterator[Stack]:
    """Gateway and worker processes on Redis + PostgreSQL with recovery limits of seconds, not a minute."""
    running = start_stack("redis-postgres", tmp_path, model, pg_url, redis_url, **FAST_RECOVERY)
    worker_runtime.configure(running.settings)
    try:
        yield running
    finally:
        running.close()
        worker_runtime.shutdown()


@pytest.fixture
def tiny_stack(tmp_path: Path, tiny_gguf: Path, pg_url: str, redis_url: str) -> Iterator[Stack]:
    yield from recovering_stack(tmp_path, tiny_gguf, pg_url, redis_url)
