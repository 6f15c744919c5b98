"""Tests for workers.context: the in-process and Redis context caches (Redis is real, database 14)."""

from __future__ import annotations

import json
import logging
import time
import types
from pathlib import Path

import pytest
import redis

from models.envelope import Turn
from models.settings import Settings
from workers import context
from workers.context import MemoryContextStore, RedisContextStore, make_context_store

TURNS = [Turn("user", "订单到哪了？"), Turn("assistant", "正在配送。")]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(context, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


# --- MemoryContextStore -----------------------------------------------------------------------


def test_memory_roundtrip_and_miss() -> None:
    store = MemoryContextStore(ttl_s=60)
    assert store.load(1, upto_inbound_id=6) is None
    store.save(1, 5, TURNS)
    assert store.load(1, upto_inbound_id=6) == TURNS
    assert store.load(2, upto_inbound_id=6) is None


def test_memory_upto_rule() -> None:
    store = MemoryContextStore(ttl_s=60)
    store.save(1, 5, TURNS)
    assert store.load(1, upto_inbound_id=6) == TURNS  # the next message
    assert store.load(1, upto_inbound_id=5) is None  # a redelivery of the message it was saved for
    assert store.load(1, upto_inbound_id=3) is None  # an older message answered late


def test_memory_save_replaces_the_window() -> None:
    store = MemoryContextStore(ttl_s=60)
    store.save(1, 5, TURNS)
    newer = [*TURNS, Turn("user", "谢谢"), Turn("assistant", "不客气")]
    store.save(1, 9, newer)
    assert store.load(1, upto_inbound_id=10) == newer
    assert store.load(1, upto_inbound_id=6) is None


def test_memory_ttl_expiry(clock: FakeClock) -> None:
    store = MemoryContextStore(ttl_s=10)
    store.save(1, 5, TURNS)
    clock.now += 10
    assert store.load(1, upto_inbound_id=6) == TURNS  # valid through its last instant
    clock.now += 0.001
    assert store.load(1, upto_inbound_id=6) is None


def test_memory_ttl_expiry_real_clock() -> None:
    store = MemoryContextStore(ttl_s=0)
    store.save(1, 5, TURNS)
    time.sleep(0.01)
    assert store.load(1, upto_inbound_id=6) is None


def test_memory_capacity_evicts_least_recently_saved() -> None:
    store = MemoryContextStore(ttl_s=60, capacity=2)
    store.save(1, 1, TURNS)
    store.save(2, 2, TURNS)
    store.save(1, 3, TURNS)  # re-saving makes conversation 1 the most recent
    store.save(3, 4, TURNS)
    assert store.load(2, upto_inbound_id=100) is None
    assert store.load(1, upto_inbound_id=100) == TURNS
    assert store.load(3, upto_inbound_id=100) == TURNS


def test_memory_empty_window_is_a_hit_not_a_miss() -> None:
    store = MemoryContextStore(ttl_s=60)
    store.save(1, 5, [])
    assert store.load(1, upto_inbound_id=6) == []


def test_make_context_store_is_memory_without_redis(tmp_path: Path, clean_env: Path) -> None:
    assert isinstance(make_context_store(Settings(data_dir=str(tmp_path))), MemoryContextStore)


# --- RedisContextStore (real Redis) -----------------------------------------------------------


def test_redis_roundtrip_and_upto_rule(redis14: str) -> None:
    store = RedisContextStore(redis14, timeout_s=2, ttl_s=60)
    assert store.load(1, upto_inbound_id=6) is None
    store.save(1, 5, TURNS)
    assert store.load(1, upto_inbound_id=6) == TURNS
    assert store.load(1, upto_inbound_id=5) is None
    assert store.load(1, upto_inbound_id=3) is None
    assert store.load(2, upto_inbound_id=6) is None


def test_redis_is_shared_between_store_instances(redis14: str) -> None:
    RedisContextStore(redis14, timeout_s=2, ttl_s=60).save(7, 5, TURNS)
    assert RedisContextStore(redis14, timeout_s=2, ttl_s=60).load(7, upto_inbound_id=6) == TURNS


def test_redis_key_has_ttl_and_readable_value(redis14: str) -> None:
    RedisContextStore(redis14, timeout_s=2, ttl_s=60).save(3, 5, TURNS)
    client = redis.Redis.from_url(redis14)
    try:
        ttl = client.ttl("kefu:ctx:3")
        assert 55 <= ttl <= 60
        raw = client.get("kefu:ctx:3")
        assert raw is not None
        assert json.loads(raw) == {"upto": 5, "round": 0,
                                   "turns": [["user", "订单到哪了？"], ["assistant", "正在配送。"]]}
    finally:
        client.close()


def test_redis_ttl_expiry(redis14: str) -> None:
    store = RedisContextStore(redis14, timeout_s=2, ttl_s=1)
    store.save(4, 5, TURNS)
    assert store.load(4, upto_inbound_id=6) == TURNS
    time.sleep(1.1)
    assert store.load(4, upto_inbound_id=6) is None


def test_make_context_store_is_redis_when_configured(tmp_path: Path, clean_env: Path, redis14: str) -> None:
    store = make_context_store(Settings(data_dir=str(tmp_path), redis_url=redis14))
    assert isinstance(store, RedisContextStore)


def test_redis_unreachable_falls_back_quietly(caplog: pytest.LogCaptureFixture) -> None:
    store = RedisContextStore("redis://127.0.0.1:1/0", timeout_s=0.5, ttl_s=60)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="workers.context"):
        assert store.load(1, upto_inbound_id=6) is None
        store.save(1, 5, TURNS)  # must not raise
    assert time.monotonic() - started < 3
    messages = [r.getMessage() for r in caplog.records]
    assert any("context cache unavailable" in m for m in messages)
    assert any("context cache not updated" in m for m in messages)


def test_a_window_saved_before_a_person_took_the_conversation_is_not_used() -> None:
    store = MemoryContextStore(ttl_s=60)
    store.save(9, 5, TURNS, 0)
    assert store.load(9, 6, 0) == TURNS
    assert store.load(9, 6, 1) is None  # handoffs went up since: the agent's messages are only in the database
    store.save(9, 7, TURNS, 1)
    assert store.load(9, 8, 1) == TURNS
