"""Per-conversation locks so one conversation's messages are answered one at a time, in order.

- :class:`RedisLocks`: ``SET key token NX PX ttl``, released only by its holder (compare-and-delete
  in Lua), so a lock that outlived its TTL cannot be released by the wrong worker.
- :class:`FileLocks` (embedded): ``flock`` on one of 1,024 lock files under ``data_dir/locks``;
  works across worker processes and threads on one host. Two conversations that share a bucket
  only wait for each other.

``hold()`` yields ``True`` when acquired within ``wait_s`` and ``False`` otherwise; it never raises
for contention. Redis errors propagate (the task retries).
"""

from __future__ import annotations

import fcntl
import os
import secrets
import time
import zlib
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol

import redis

from models.settings import Settings

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end
"""
_POLL_S = 0.02


class Locks(Protocol):
    def hold(self, name: str, ttl_s: float, wait_s: float) -> AbstractContextManager[bool]: ...


class RedisLocks:
    def __init__(self, url: str, timeout_s: float) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._release = self._client.register_script(_RELEASE)

    @contextmanager
    def hold(self, name: str, ttl_s: float, wait_s: float) -> Iterator[bool]:
        key, token = f"kefu:lock:{name}", secrets.token_hex(16)
        deadline = time.monotonic() + wait_s
        acquired = False
        while True:
            if self._client.set(key, token, nx=True, px=int(ttl_s * 1000)):
                acquired = True
                break
            if time.monotonic() >= deadline:
                break
            time.sleep(_POLL_S)
        try:
            yield acquired
        finally:
            if acquired:
                self._release(keys=[key], args=[token])


class FileLocks:
    BUCKETS = 1024

    def __init__(self, directory: Path) -> None:
        self._dir = directory

    @contextmanager
    def hold(self, name: str, ttl_s: float, wait_s: float) -> Iterator[bool]:
        self._dir.mkdir(parents=True, exist_ok=True)
        bucket = zlib.crc32(name.encode()) % self.BUCKETS
        fd = os.open(self._dir / f"{bucket:04d}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        deadline = time.monotonic() + wait_s
        acquired = False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    acquired = True
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        break
                    time.sleep(_POLL_S)
            yield acquired
        finally:
            os.close(fd)  # closing the descriptor releases the flock


def make_locks(settings: Settings) -> Locks:
    url = settings.effective_redis_url
    if url:
        return RedisLocks(url, settings.redis_timeout_s)
    return FileLocks(settings.data_dir / "locks")
