"""channels.admission's own promises: the limits' notation, the moving window's exact count, hashed subjects, an
unknown scope refused, and a limiter storage that fails letting requests through (counted, then not asked again for a
few seconds)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from limits.storage import MemoryStorage, RedisStorage
from sqlalchemy import Engine, select

from channels.admission import (
    Admission,
    Unlimited,
    admit,
    make_storage,
    parse_limits,
    subject_hash,
)
from models.envelope import ConversationKey
from models.infra import metrics
from models.infra.db import make_session_factory
from models.infra.kv import SQLiteKV
from models.settings import ConfigError, Settings, load_settings
from models.tables import AuditEvent


def admission(tmp: Path, engine: Engine, storage: object | None = None, **limits: object) -> Admission:
    settings = Settings(data_dir=tmp / "var", secret_key="unit", **limits)
    return Admission(settings, SQLiteKV(tmp / "kv.sqlite"), make_session_factory(engine),
                     storage or MemoryStorage())  # type: ignore[arg-type]


def test_the_notation_and_its_errors(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert [str(item) for item in parse_limits("5 per 2 seconds; 60 per minute")] == ["5 per 2 second",
                                                                                      "60 per 1 minute"]
    assert parse_limits("") == [] and parse_limits("  ") == []
    monkeypatch.setenv("KEFU_RATE_LIMIT_PEER", "lots per minute")
    with pytest.raises(ConfigError, match=r"KEFU_RATE_LIMIT_PEER.*5 per 2 seconds"):
        load_settings()


def test_a_moving_window_lets_exactly_the_limit_through(clean_env: Path, db: Engine) -> None:
    gate = admission(clean_env, db, rate_limit_visitor="3 per 1 minute;5 per 1 hour")
    answers = [gate.limit("visitor", "v1", channel="web") for _ in range(5)]
    assert answers[:3] == [None] * 3
    assert [(r.scope, r.limit) for r in answers[3:] if r is not None] == [("visitor", "3 per 1 minute")] * 2
    assert all(r is not None and 1 <= r.retry_after_s <= 60 for r in answers[3:])
    assert gate.limit("visitor", "v2", channel="web") is None  # every subject has its own window
    assert gate.limit("ip", "v1", channel="web") is None  # a scope set to "" is off
    with make_session_factory(db)() as s:
        rows = list(s.scalars(select(AuditEvent).where(AuditEvent.kind == "admission_refused")))
    assert [row.detail["subject"] for row in rows] == [subject_hash(b"unit", "visitor", "v1")] * 2
    with pytest.raises(ValueError, match="unknown admission scope"):
        gate.limit("country", "cn", channel="web")


def test_hashes_are_keyed(clean_env: Path) -> None:
    one = subject_hash(b"key-1", "ip", "203.0.113.9")
    assert len(one) == 12 and "203" not in one
    assert one == subject_hash(b"key-1", "ip", "203.0.113.9") != subject_hash(b"key-2", "ip", "203.0.113.9")
    assert subject_hash(b"key-1", "ip", "x") != subject_hash(b"key-1", "visitor", "x")


def test_the_storage_is_redis_when_kefu_has_one(clean_env: Path) -> None:
    assert isinstance(make_storage(Settings(data_dir=clean_env), 1.0), MemoryStorage)
    assert isinstance(make_storage(Settings(data_dir=clean_env, redis_url="redis://127.0.0.1:6379/14"), 1.0),
                      RedisStorage)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_failing_storage_lets_requests_through(clean_env: Path, db: Engine) -> None:
    dead = RedisStorage(f"redis://127.0.0.1:{closed_port()}/0", socket_timeout=0.5, socket_connect_timeout=0.5)
    gate = admission(clean_env, db, dead, rate_limit_peer="1 per 1 minute")
    failures = metrics.ADMISSION_ERRORS.labels("peer")
    before = failures._value.get()
    assert gate.limit("peer", "wechat_mp:shop:o1", channel="wechat_mp") is None  # fail open
    assert failures._value.get() == before + 1
    # not asked again for STORAGE_RETRY_AFTER_S: no more failures (a dead Redis costs one timeout, not one per call)
    assert [gate.limit("peer", "wechat_mp:shop:o1", channel="wechat_mp") for _ in range(3)] == [None] * 3
    assert failures._value.get() == before + 1
    gate._skip_until = 0.0  # the pause is over: the storage is asked again, and fails again
    assert gate.limit("peer", "wechat_mp:shop:o1", channel="wechat_mp") is None
    assert failures._value.get() == before + 2


def test_backpressure_reads_the_published_wait(clean_env: Path, db: Engine) -> None:
    gate = admission(clean_env, db, backpressure_wait_s=10.0)
    key = ConversationKey("webhook", "shop", "u1")
    assert admit(gate, key) is None  # no estimate published
    gate._kv.set("llm:wait_estimate_s", "14.2", 30)
    gate._wait = (0.0, float("-inf"))  # forget the cached read (the gate reads the KV at most once a second)
    refused = admit(gate, key)
    assert refused is not None and (refused.scope, refused.retry_after_s) == ("backpressure", 5)
    assert admit(Unlimited(), key) is None


@pytest.mark.parametrize("processes", ["1", "2"])
def test_the_gateway_believes_forwarded_addresses_only_from_the_configured_proxies(
        clean_env: Path, monkeypatch: pytest.MonkeyPatch, processes: str) -> None:
    import uvicorn

    from channels import app
    from models.infra import metrics_dir
    from workers import cli

    runs: list[dict[str, object]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *_, **kwargs: runs.append(kwargs))
    monkeypatch.setattr(metrics_dir, "prepare", lambda *_: None)  # prometheus_client is imported in this process
    monkeypatch.setattr(app, "create_app", lambda settings: object())
    args = cli.build_parser().parse_args(["gateway", "--workers", processes])
    cli.cmd_gateway(Settings(data_dir=clean_env, forwarded_allow_ips="10.0.0.5"), args)
    cli.cmd_gateway(Settings(data_dir=clean_env), args)
    assert runs[0]["forwarded_allow_ips"] == "10.0.0.5"  # the client address the per-address limit counts
    assert runs[1]["forwarded_allow_ips"] is None  # unset: uvicorn's own (its FORWARDED_ALLOW_IPS, or 127.0.0.1)
