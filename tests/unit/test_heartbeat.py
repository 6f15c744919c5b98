"""The LLM workers' heartbeat: written and read through both KV stores (the SQLite file shared by the processes of a
host, real Redis), expiring, deleted on stop, and what readiness lacks without one."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from models.infra import heartbeat
from models.infra.kv import KV, RedisKV, SQLiteKV
from workers.heartbeat import EngineState, HeartbeatThread

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "redis"])
def kv(request: pytest.FixtureRequest, tmp_path: Path) -> KV:
    if request.param == "sqlite":
        return SQLiteKV(tmp_path / "kv.sqlite")
    return RedisKV(request.getfixturevalue("redis14"), 5)


def test_a_group_lists_its_live_members_only(kv: KV) -> None:
    kv.join("workers", "a", "1", 60)
    kv.join("workers", "b", "2", 60)
    kv.join("workers", "gone", "3", 0.001)
    kv.join("workers_not", "c", "4", 60)  # another group sharing the name's letters
    kv.set("workers:d", "5", 60)  # a plain key is no member (Redis); the SQLite store reads the name's prefix
    time.sleep(0.05)  # well past the 1 ms of "gone"
    found = kv.members("workers")
    assert {name: found[name] for name in ("a", "b")} == {"a": "1", "b": "2"} and "gone" not in found
    assert "c" not in found
    kv.leave("workers", "a")
    assert "a" not in kv.members("workers") and kv.members("nobody") == {}


def test_redis_drops_expired_members_from_its_index(redis14: str) -> None:
    import redis

    kv = RedisKV(redis14, 5)
    kv.join("workers", "gone", "1", 0.001)
    kv.join("workers", "here", "2", 60)
    time.sleep(0.05)
    assert kv.members("workers") == {"here": "2"}
    assert redis.Redis.from_url(redis14).smembers("kefu:kv:workers") == {b"here"}  # pruned as it was read


def test_alive_reads_what_was_beaten_and_skips_garbage(kv: KV) -> None:
    assert heartbeat.alive(kv) == [] and heartbeat.missing([]) == ["llm_worker"]
    cold = heartbeat.Heartbeat(node="llm@b", pid=2, model="", loaded=False)
    heartbeat.beat(kv, cold)
    assert heartbeat.alive(kv) == [cold] and heartbeat.missing([cold]) == ["llm_model"]
    warm = heartbeat.Heartbeat(node="llm@a", pid=1, model="Qwen3-4B-Q4_K_M", loaded=True, slots=8)
    heartbeat.beat(kv, warm)
    kv.join(heartbeat.GROUP, "broken:1", "{not json", 60)
    kv.join(heartbeat.GROUP, "other:1", json.dumps({"node": "x"}), 60)
    assert heartbeat.alive(kv) == [warm, cold]
    assert heartbeat.missing([warm, cold]) == []
    heartbeat.stopped(kv, warm)
    assert heartbeat.alive(kv) == [cold]


def test_a_heartbeat_expires(kv: KV) -> None:
    kv.join(heartbeat.GROUP, heartbeat.Heartbeat("llm@a", 1, "m", True).member, json.dumps(
        {"node": "llm@a", "pid": 1, "model": "m", "loaded": True}), 0.001)
    time.sleep(0.05)  # well past its 1 ms
    assert heartbeat.alive(kv) == []


class Engine:
    model_name = "tiny"
    n_slots = 4

    def __init__(self) -> None:
        self.loaded = False


def test_the_thread_reports_the_engine_without_building_it(tmp_path: Path) -> None:
    kv = SQLiteKV(tmp_path / "kv.sqlite")
    built: dict[str, Any] = {}
    beating = HeartbeatThread(kv, "llm@host", EngineState(lambda: built.get("llm")))
    beating.beat_once()
    assert [(w.node, w.model, w.loaded, w.slots) for w in heartbeat.alive(kv)] == [("llm@host", "", False, 0)]
    built["llm"] = engine = Engine()
    beating.beat_once()
    assert [(w.model, w.loaded, w.slots) for w in heartbeat.alive(kv)] == [("tiny", False, 0)]
    engine.loaded = True
    beating.beat_once()
    assert [(w.model, w.loaded, w.slots) for w in heartbeat.alive(kv)] == [("tiny", True, 4)]
    beating.start()
    beating.stop()
    assert heartbeat.alive(kv) == []  # deleted at once, not left to expire


def test_a_kv_store_that_fails_is_logged_once_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    class Down:
        def join(self, group: str, member: str, value: str, ttl_s: float) -> None:
            raise ConnectionError("down")

    beating = HeartbeatThread(Down(), "llm@host", EngineState(lambda: None))  # type: ignore[arg-type]
    for _ in range(3):
        beating.beat_once()
    assert [r.getMessage() for r in caplog.records].count(
        "heartbeat not written (ConnectionError); /readyz will not see this worker until it is") == 1
    beating.stop()  # nothing was written, nothing to delete


def test_processes_of_one_host_share_the_embedded_heartbeats(tmp_path: Path) -> None:
    """kefu demo / kefu up without Redis: the worker is another process; the SQLite KV file is what they share."""
    code = ("import sys; from models.infra import heartbeat; from models.infra.kv import SQLiteKV; "
            "heartbeat.beat(SQLiteKV(__import__('pathlib').Path(sys.argv[1])), "
            "heartbeat.Heartbeat('llm@other', 7, 'tiny', True))")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "kv.sqlite")], check=True, cwd=ROOT, timeout=60)
    assert [w.node for w in heartbeat.alive(SQLiteKV(tmp_path / "kv.sqlite"))] == ["llm@other"]
