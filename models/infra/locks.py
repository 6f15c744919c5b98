"""Per-conversation locks so one conversation's messages are answered one at a time, in order.

- :class:`RedisLocks`: ``SET key token NX PX ttl``, released only by its holder (compare-and-delete
  in Lua), so a lock that outlived its TTL cannot be released by the wrong worker.
- :class:`FileLocks` (embedded): ``flock`` on one of 1,024 lock files under ``data_dir/locks``;
  works across worker processes and threads on one host. Two conversations that share a bucket
  only wait for each other.

``hold()`` yields ``True`` when acquired within ``wait_s`` and ``False`` otherwise; it never raises
for contention. Redis errors propagate (the task retries).

``lease()`` is for work of unknown length (a kf pull that follows pages for minutes): it takes the lock
at once or not at all, with a *short* TTL that a background thread renews every third of it while the
block runs. A holder killed mid-way (``kill -9``, a lost machine) stops renewing, so the lock frees
itself within ``ttl_s`` instead of a worst-case fixed lifetime. A renewal that finds the lock gone or
taken by another holder stops renewing and logs; a Redis error during a renewal is logged and retried
at the next tick (the lock survives while Redis answers within the TTL). The file backend needs no
renewal: the kernel drops a ``flock`` with its process.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import threading
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
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end
"""
_POLL_S = 0.02

log = logging.getLogger(__name__)


class Locks(Protocol):
    def hold(self, name: str, ttl_s: float, wait_s: float) -> AbstractContextManager[bool]: ...
    def lease(self, name: str, ttl_s: float) -> AbstractContextManager[bool]: ...


class RedisLocks:
    def __init__(self, url: str, timeout_s: float) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._release = self._client.register_script(_RELEASE)
        self._renew = self._client.register_script(_RENEW)

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


    @contextmanager
    def lease(self, name: str, ttl_s: float) -> Iterator[bool]:
        key, token, ttl_ms = f"kefu:lock:{name}", secrets.token_hex(16), max(1, int(ttl_s * 1000))
        if not self._client.set(key, token, nx=True, px=ttl_ms):
            yield False
            return
        stop = threading.Event()
        renewer = threading.Thread(target=self._keep, args=(key, token, ttl_ms, stop), name=f"lease:{name}",
                                   daemon=True)
        renewer.start()
        try:
            yield True
        finally:
            stop.set()
            renewer.join()
            self._release(keys=[key], args=[token])

    def _keep(self, key: str, token: str, ttl_ms: int, stop: threading.Event) -> None:
        while not stop.wait(ttl_ms / 3000):
            try:
                if not self._renew(keys=[key], args=[token, ttl_ms]):
                    log.warning("lease %s was lost (expired or taken over); no longer renewed", key)
                    return
            except redis.RedisError as exc:
                log.warning("lease %s not renewed this time: %s", key, type(exc).__name__)


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

    def lease(self, name: str, ttl_s: float) -> AbstractContextManager[bool]:
        return self.hold(name, ttl_s, wait_s=0)  # a flock dies with its process: nothing to renew


def make_locks(settings: Settings) -> Locks:
    url = settings.effective_redis_url
    if url:
        return RedisLocks(url, settings.redis_timeout_s)
    return FileLocks(settings.data_dir / "locks")
