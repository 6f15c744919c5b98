"""A small shared key-value store with expiry: platform access tokens, replay nonces.

Redis when configured; otherwise a SQLite file under ``data_dir`` (``kv.sqlite``), shared by every
process on the host. ``add`` is set-if-absent, atomic in both, which is what replay protection and
single-flight refreshes rely on. ``items(prefix)`` lists the live keys under a prefix (the LLM workers'
heartbeats: :mod:`models.infra.heartbeat`). Redis errors propagate (callers decide what a failure means); a Redis
that does not answer costs one socket timeout (no retry: redis-py's default, relied on). The
gateway passes its short ``KEFU_PUBLISH_TIMEOUT_S``; workers use ``KEFU_REDIS_TIMEOUT_S``.
"""

from __future__ import annotations

import re
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
    def delete(self, key: str) -> None: ...
    def items(self, prefix: str) -> dict[str, str]: ...


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

    def delete(self, key: str) -> None:
        self._client.delete(f"kefu:kv:{key}")

    def items(self, prefix: str) -> dict[str, str]:
        """Every live key starting with ``prefix`` and its value (SCAN, then one MGET: for a few keys, such as the
        LLM workers' heartbeats; a key that expires in between is left out)."""
        keys = [bytes(k) for k in self._client.scan_iter(match=f"kefu:kv:{_glob_escape(prefix)}*", count=100)]
        if not keys:
            return {}
        values = self._client.mget(keys)
        return {k.decode().removeprefix("kefu:kv:"): v.decode() if isinstance(v, bytes) else str(v)
                for k, v in zip(keys, values, strict=True) if v is not None}


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

    def delete(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM kv WHERE key = ?", (key,))

    def items(self, prefix: str) -> dict[str, str]:
        """Every live key starting with ``prefix`` and its value."""
        with self._lock:
            rows = self._db.execute("SELECT key, value FROM kv WHERE substr(key, 1, ?) = ? AND expires > ?",
                                    (len(prefix), prefix, time.time())).fetchall()
        return {str(key): str(value) for key, value in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def make_kv(settings: Settings, timeout_s: float | None = None) -> KV:
    """``timeout_s``: the Redis socket timeout (default ``KEFU_REDIS_TIMEOUT_S``)."""
    url = settings.effective_redis_url
    if url:
        return RedisKV(url, timeout_s or settings.redis_timeout_s)
    return SQLiteKV(settings.data_dir / "kv.sqlite")
