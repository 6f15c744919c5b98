"""The API's admission control as its clients see it: 429 with Retry-After, on Redis and embedded.

A gateway alone (no worker: an accepted request waits ``KEFU_API_REPLY_TIMEOUT_S`` = 1 s, then 504; its message
stays stored). The per-key limit holds across requests, is refused before anything is stored, and is audited;
a long model backlog (the LLM workers' published wait estimate) refuses new work the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from sqlalchemy import func, select

from models import api_keys
from models.infra.db import make_engine, make_session_factory, transaction
from models.infra.kv import make_kv
from models.infra.load import publish_wait
from models.infra.migrate import upgrade
from models.settings import Settings
from models.tables import AuditEvent, InboundRecord
from workers.demo.processes import GatewayThread


@pytest.fixture(params=["embedded", "redis"])
def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[GatewayThread, Settings, str]]:
    extra = {"broker_url": request.getfixturevalue("redis_url")} if request.param == "redis" else {}
    settings = Settings(data_dir=tmp_path, api_reply_timeout_s=1, rate_limit_api_key="3 per 1 minute",
                        backpressure_wait_s=30, **extra)
    upgrade(settings)
    engine = make_engine(settings)
    with transaction(make_session_factory(engine)) as session:
        key = api_keys.add(session, f"limited-{tmp_path.name}")
    engine.dispose()
    if request.param == "redis":  # a fresh count: the key's name is new, but leave no earlier wait estimate
        publish_wait(make_kv(settings), 0.0)
    gw = GatewayThread(settings).start()
    try:
        yield gw, settings, key
    finally:
        gw.stop()


def counts(settings: Settings) -> tuple[int, list[dict[str, object]]]:
    engine = make_engine(settings)
    try:
        with make_session_factory(engine)() as session:
            inbound = session.scalar(select(func.count()).select_from(InboundRecord)) or 0
            refused = [d for d in session.scalars(select(AuditEvent.detail).where(
                AuditEvent.kind == "admission_refused"))]
        return inbound, refused
    finally:
        engine.dispose()


def ask(client: openai.OpenAI, text: str) -> None:
    client.chat.completions.create(model="kefu", messages=[{"role": "user", "content": text}])


def test_key_limit_answers_429_with_retry_after(gateway: tuple[GatewayThread, Settings, str]) -> None:
    gw, settings, key = gateway
    client = openai.OpenAI(base_url=f"{gw.http_url}/v1", api_key=key, max_retries=0, timeout=30)
    for i in range(3):  # within the limit: accepted, stored, then 504 (no worker here)
        with pytest.raises(openai.APIStatusError) as waited:
            ask(client, f"问题{i}")
        assert waited.value.status_code == 504
    with pytest.raises(openai.RateLimitError) as limited:
        ask(client, "第四个问题")
    client.close()
    response = limited.value.response
    assert int(response.headers["Retry-After"]) >= 1
    assert limited.value.code == "rate_limited" and "rate limit" in limited.value.message
    inbound, refused = counts(settings)
    assert inbound == 3  # the refused request stored nothing
    assert len(refused) == 1 and refused[0]["scope"] == "api_key" and key not in str(refused[0])


def test_backpressure_refuses_new_model_work(gateway: tuple[GatewayThread, Settings, str]) -> None:
    gw, settings, key = gateway
    publish_wait(make_kv(settings), 120.0)  # what a worker with a long queue publishes
    client = openai.OpenAI(base_url=f"{gw.http_url}/v1", api_key=key, max_retries=0, timeout=30)
    with pytest.raises(openai.RateLimitError) as limited:
        ask(client, "还在吗？")
    client.close()
    publish_wait(make_kv(settings), 0.0)
    assert "queue" in limited.value.message and int(limited.value.response.headers["Retry-After"]) >= 1
    inbound, refused = counts(settings)
    assert inbound == 0 and [d["scope"] for d in refused] == ["backpressure"]
