from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from models.infra import logs
from tests import services
from tests.stack import kefu_env
from tests.synthetic_gguf import write_qwen3_gguf

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_conversation_in_the_log_context() -> Iterator[None]:
    """A task run in-process sets the log's conversation id as it does in a worker's pool thread, where Celery's
    task_postrun clears it (workers/celery_app.py); here each test ends with the id it started with."""
    with logs.conversation_scope(None):
        yield


# every test's requests come from 127.0.0.1 (and, on Redis, share that address's counts across the session): the
# address, visitor and customer rate limits are off unless a test sets them (tests/integration/test_admission.py)
_RATE_LIMITS_OFF = ("KEFU_RATE_LIMIT_IP", "KEFU_RATE_LIMIT_VISITOR", "KEFU_RATE_LIMIT_PEER")


@pytest.fixture(autouse=True, scope="session")
def _no_rate_limits_unless_asked() -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in _RATE_LIMITS_OFF}
    os.environ.update(dict.fromkeys(_RATE_LIMITS_OFF, ""))
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_qwen3_gguf(tmp_path_factory.mktemp("model") / "tiny-qwen3.gguf")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    services.ensure_postgres()
    name, url = services.create_database()
    try:
        yield url
    finally:
        services.drop_database(name)


@pytest.fixture(scope="session")
def redis_url() -> str:
    services.ensure_redis()
    return services.redis_db_url(1 + os.getpid() % 13)  # 14 is the unit tests'


def settings_kwargs(backend: str, data_dir: Path, model: Path, pg: str | None, rds: str | None) -> dict[str, Any]:
    """Settings for a test stack; the same values go to the worker process as KEFU_* variables."""
    values: dict[str, Any] = {
        "data_dir": str(data_dir),
        "model_path": str(model),
        "temperature": 0.0,
        "max_tokens": 24,
        "n_ctx": 1024,
        "seed": 7,
        "secret_key": "test-secret",
        "log_level": "INFO",
        # the model's intent step (workers.intent_model) has tests of its own (tests/integration/test_intents.py);
        # here it would add an engine call and an `intent` audit row to the sequences these tests check
        "intent_model": "off",
        # every stack's requests come from 127.0.0.1 and, on Redis, share one address's counts across the session:
        # admission control has tests of its own (tests/integration/test_admission.py, each with its own limits)
        "rate_limit_ip": "",
        "rate_limit_visitor": "",
        "rate_limit_peer": "",
    }
    if backend == "redis-postgres":
        values.update(database_url=pg, broker_url=rds)
    return values


def as_env(values: dict[str, Any]) -> dict[str, str]:
    env = kefu_env(values)
    env["PYTHONPATH"] = str(REPO)
    return env


def pytest_unconfigure(config: pytest.Config) -> None:
    """llama-cpp-python opens two /dev/null files at import and never closes them (a ResourceWarning at exit)."""
    import sys

    utils = sys.modules.get("llama_cpp._utils")
    for name in ("outnull_file", "errnull_file"):
        handle = getattr(utils, name, None)
        if handle is not None:
            handle.close()
