"""The chaos suite: faults and attacks injected into a real stack, each test checking its promise from the database.

The stacks are tests/integration's (real Redis, PostgreSQL, Celery worker, llama.cpp); here with recovery
limits of seconds so that a lost task comes back within a test (``recovering_stack``, shared with
tests/integration/test_reliability.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Stack
from tests.integration.test_reliability import recovering_stack


@pytest.fixture
def tiny_stack(tmp_path: Path, tiny_gguf: Path, pg_url: str, redis_url: str) -> Iterator[Stack]:
    yield from recovering_stack(tmp_path, tiny_gguf, pg_url, redis_url)
