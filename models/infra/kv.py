"""A small shared key-value store with expiry: platform access tokens, replay nonces.

Redis when configured; otherwise a SQLite file under ``data_dir`` (``kv.sqlite``), shared by every process on the
host. ``add`` is set-if-absent, atomic in both, which is what replay protection and single-flight refreshes rely on.
``incr`` adds one to a counter that expires ``ttl_s`` after its first count, atomic in both (no count is lost between
processes): the gray release's sliding window (:mod:`workers.gray_release`).
A *group* is a few expiring members read together (the LLM workers' heartbeats: :mod:`models.infra.heartbeat`):
``join`` writes one with its own expiry, ``members`` returns the live ones in a few round trips whatever the size of
the store (Redis: an index set beside the keys, pruned on read). Redis errors propagate (callers decide what a
failure means); a Redis that does not answer costs one socket timeout (no retry: redis-py's default, relied on). The
gateway passes its short ``KEFU_PUBLISH_TIMEOUT_S``; workers use ``KEFU_REDIS_TIMEOUT_S``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Protocol

import redis

from models.settings import Settings


class KV(Protocol):
    def get(self, key: str) -> str | None: ...
    def set(self, key: str, value: str, ttl_s: float) -> None: ...
    def add(self, key: str, value: str, ttl_s: float) -> bool: ...
    def incr(self, key: str, ttl_s: float) -> int: ...
    def delete(self, key: str) -> None: ...
    def join(self, group: str, member: str, value: str, ttl_s: float) -> None: ...
    def leave(self, group: str, member: str) -> None: ...
    def members(self, group: str) -> dict[str, str]: ...


class RedisKV:
    def __init__(self, url: str, timeout_s: float) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    def get(self, key: str) -> str | None:
        value = self._client.get(f"kefu:kv:{key}")
        return None if value is None else bytes(value).decode()  # type: ignore[arg-type]

    def set(self, key: str, value: str, ttl_s: float) -> None:
        self._client.set(f"kefu:kv:{key}", value, px=max(1, int(ttl_s * 1000)))

    def add(self, key: str, value: str, ttl_s: float) -> bool:
        return bool(self._client.set(f"kefu:kv:{key}", value, px=max(1, int(ttl_s * 1000)), nx=True))

    def incr(self, key: str, ttl_s: float) -> int:
        with self._client.pipeline(transaction=True) as pipe:  # MULTI: the expiry is set with the first count
            pipe.set(f"kefu:kv:{key}", 0, px=max(1, int(ttl_s * 1000)), nx=True)
            pipe.incr(f"kefu:kv:{key}")
            return int(pipe.execute()[1])

    def delete(self, key: str) -> None:
        self._client.delete(f"kefu:kv:{key}")

    def join(self, group: str, member: str, value: str, ttl_s: float) -> None:
        with self._client.pipeline(transaction=False) as pipe:
            pipe.set(f"kefu:kv:{group}:{member}", value, px=max(1, int(ttl_s * 1000)))
            pipe.sadd(f"kefu:kv:{group}", member)
            pipe.execute()

    def leave(self, group: str, member: str) -> None:
        with self._client.pipeline(transaction=False) as pipe:
            pipe.delete(f"kefu:kv:{group}:{member}")
            pipe.srem(f"kefu:kv:{group}", member)
            pipe.execute()

    def members(self, group: str) -> dict[str, str]:
        """The group's live members (SMEMBERS, one MGET; the expired ones are dropped from the index)."""
        names = sorted(_text(m) for m in self._client.smembers(f"kefu:kv:{group}"))
        if not names:
            return {}
        values = self._client.mget([f"kefu:kv:{group}:{name}" for name in names])
        expired = [name for name, value in zip(names, values, strict=True) if value is None]
        if expired:
            self._client.srem(f"kefu:kv:{group}", *expired)
        return {name: _text(value) for name, value in zip(names, values, strict=True) if value is not None}


class SQLiteKV:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires REAL NOT NULL)")

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM kv WHERE key = ? AND expires > ?", (key, time.time())).fetchone()
        return None if row is None else str(row[0])

    def set(self, key: str, value: str, ttl_s: float) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO kv (key, value, expires) VALUES (?, ?, ?)",
                             (key, value, time.time() + ttl_s))

    def add(self, key: str, value: str, ttl_s: float) -> bool:
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # other processes wait here: the check and insert are one step
            try:
                self._db.execute("DELETE FROM kv WHERE key = ? AND expires <= ?", (key, now))
                inserted = self._db.execute("INSERT OR IGNORE INTO kv (key, value, expires) VALUES (?, ?, ?)",
                                            (key, value, now + ttl_s)).rowcount == 1
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return inserted

    def incr(self, key: str, ttl_s: float) -> int:
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM kv WHERE key = ? AND expires <= ?", (key, now))
                count = self._db.execute(
                    "INSERT INTO kv (key, value, expires) VALUES (?, '1', ?) ON CONFLICT (key) DO UPDATE "
                    "SET value = CAST(value AS INTEGER) + 1 RETURNING value", (key, now + ttl_s)).fetchone()[0]
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return int(count)

    def delete(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM kv WHERE key = ?", (key,))

    def join(self, group: str, member: str, value: str, ttl_s: float) -> None:
        self.set(f"{group}:{member}", value, ttl_s)

    def leave(self, group: str, member: str) -> None:
        self.delete(f"{group}:{member}")

    def members(self, group: str) -> dict[str, str]:
        prefix = f"{group}:"
        with self._lock:
            rows = self._db.execute("SELECT key, value FROM kv WHERE substr(key, 1, ?) = ? AND expires > ?",
                                    (len(prefix), prefix, time.time())).fetchall()
        return {str(key)[len(prefix):]: str(value) for key, value in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def make_kv(settings: Settings, timeout_s: float | None = None) -> KV:
    """``timeout_s``: the Redis socket timeout (default ``KEFU_REDIS_TIMEOUT_S``)."""
    url = settings.effective_redis_url
    if url:
        return RedisKV(url, timeout_s or settings.redis_timeout_s)
    return SQLiteKV(settings.data_dir / "kv.sqlite")
