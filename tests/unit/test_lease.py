"""Leases (``Locks.lease``): a short TTL renewed while the holder runs, so a dead holder frees the lock soon.

The kf pull holds one for as long as it reads pages; the killed-pull recovery it buys is measured end to end in
tests/integration/test_wecom_kf_pull.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from models.infra.locks import FileLocks, RedisLocks


def wait_for(check: Callable[[], bool], timeout: float, interval: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)


def test_a_redis_lease_is_renewed_while_held_and_gone_after(redis14: str) -> None:
    client = redis.Redis.from_url(redis14)
    locks = RedisLocks(redis14, timeout_s=2)
    with locks.lease("kfsync:kf:a", ttl_s=1.5) as held:
        assert held
        assert 0 < client.pttl("kefu:lock:kfsync:kf:a") <= 1500
        # the TTL runs down until the renewer's tick (every 0.5 s), which puts it back up: only a renewal can
        # raise it past 1.2 s again (comparing with the first reading raced the poll against the renewal)
        wait_for(lambda: client.pttl("kefu:lock:kfsync:kf:a") < 1200, timeout=10, interval=0.02)
        wait_for(lambda: client.pttl("kefu:lock:kfsync:kf:a") > 1200, timeout=10, interval=0.02)
        with locks.lease("kfsync:kf:a", ttl_s=1.5) as second:
            assert not second  # taken at once or not at all
    assert not client.exists("kefu:lock:kfsync:kf:a")
    client.close()


def test_a_redis_lease_that_was_taken_over_is_not_renewed_or_released(redis14: str) -> None:
    client = redis.Redis.from_url(redis14)
    locks = RedisLocks(redis14, timeout_s=2)
    with locks.lease("kfsync:kf:b", ttl_s=0.6) as held:
        assert held
        client.set("kefu:lock:kfsync:kf:b", "someone-else", px=60_000)  # it expired and another holder took it
        wait_for(lambda: client.pttl("kefu:lock:kfsync:kf:b") < 59_000, timeout=10, interval=0.05)  # 5 ticks on
        assert client.pttl("kefu:lock:kfsync:kf:b") > 58_000  # a renewal would have cut it to 0.6 s
    assert client.get("kefu:lock:kfsync:kf:b") == b"someone-else"  # neither renewed to 0.6 s nor deleted
    client.close()


def test_a_file_lease_excludes_a_second_holder_until_released(tmp_path: Path) -> None:
    locks = FileLocks(tmp_path)
    with locks.lease("kfsync:kf:c", ttl_s=10) as held:
        assert held
        with locks.lease("kfsync:kf:c", ttl_s=10) as second:
            assert not second
    with locks.lease("kfsync:kf:c", ttl_s=10) as again:
        assert again


@pytest.mark.parametrize("ttl_s", [0.3, 10.0])
def test_a_redis_lease_is_released_when_the_block_raises(redis14: str, ttl_s: float) -> None:
    client = redis.Redis.from_url(redis14)
    locks = RedisLocks(redis14, timeout_s=2)
    with pytest.raises(RuntimeError), locks.lease("kfsync:kf:d", ttl_s=ttl_s):
        raise RuntimeError("the pull failed")
    assert not client.exists("kefu:lock:kfsync:kf:d")
    client.close()
