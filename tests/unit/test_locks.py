"""Tests for models.infra.locks: per-conversation locks on files (flock) and on real Redis (database 14)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from models.infra.locks import FileLocks, Locks, RedisLocks, make_locks
from models.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def _bucket(name: str) -> int:
    return zlib.crc32(name.encode()) % FileLocks.BUCKETS


def _other_name(name: str, *, same_bucket: bool) -> str:
    for i in range(1_000_000):
        candidate = f"conv:{i}"
        if candidate != name and (_bucket(candidate) == _bucket(name)) == same_bucket:
            return candidate
    raise AssertionError("no such name")


@contextmanager
def held_by_thread(locks: Locks, name: str, ttl_s: float = 10) -> Iterator[None]:
    """Hold ``name`` in another thread for the duration of the block."""
    acquired, release = threading.Event(), threading.Event()
    result: list[bool] = []

    def run() -> None:
        with locks.hold(name, ttl_s=ttl_s, wait_s=1) as ok:
            result.append(ok)
            acquired.set()
            release.wait(10)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert acquired.wait(5) and result == [True]
        yield
    finally:
        release.set()
        thread.join(5)
    assert not thread.is_alive()


@pytest.fixture(params=["file", "redis"])
def locks(request: pytest.FixtureRequest, tmp_path: Path) -> Locks:
    if request.param == "file":
        return FileLocks(tmp_path / "locks")
    return RedisLocks(request.getfixturevalue("redis14"), timeout_s=2)


# --- both implementations ---------------------------------------------------------------------


def test_second_holder_is_refused_while_the_first_holds(locks: Locks) -> None:
    with held_by_thread(locks, "conv:1"):
        started = time.monotonic()
        with locks.hold("conv:1", ttl_s=10, wait_s=0.2) as ok:
            assert ok is False
        assert time.monotonic() - started >= 0.19  # it waited wait_s before giving up
    with locks.hold("conv:1", ttl_s=10, wait_s=0.2) as ok:
        assert ok is True


def test_waiter_gets_the_lock_when_it_is_released(locks: Locks) -> None:
    release, acquired = threading.Event(), threading.Event()

    def holder() -> None:
        with locks.hold("conv:1", ttl_s=10, wait_s=1) as ok:
            assert ok
            acquired.set()
            release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    assert acquired.wait(5)
    timer = threading.Timer(0.15, release.set)
    timer.start()
    started = time.monotonic()
    with locks.hold("conv:1", ttl_s=10, wait_s=3) as ok:
        waited = time.monotonic() - started
        assert ok is True
    assert 0.1 <= waited < 2  # it waited for the release, not for its whole wait_s
    thread.join(5)
    timer.join(5)


def test_different_conversations_do_not_block_each_other(locks: Locks) -> None:
    other = _other_name("conv:1", same_bucket=False)
    with held_by_thread(locks, "conv:1"), locks.hold(other, ttl_s=10, wait_s=0) as ok:
        assert ok is True


def test_lock_is_released_when_the_block_raises(locks: Locks) -> None:
    with pytest.raises(RuntimeError), locks.hold("conv:1", ttl_s=10, wait_s=0) as ok:
        assert ok
        raise RuntimeError("task failed")
    with locks.hold("conv:1", ttl_s=10, wait_s=0) as ok:
        assert ok is True


# --- FileLocks --------------------------------------------------------------------------------


def test_file_locks_share_a_bucket_for_colliding_names(tmp_path: Path) -> None:
    locks = FileLocks(tmp_path / "locks")
    twin = _other_name("conv:1", same_bucket=True)
    with held_by_thread(locks, "conv:1"), locks.hold(twin, ttl_s=10, wait_s=0.05) as ok:
        assert ok is False  # documented: conversations sharing a bucket wait for each other


def test_file_lock_files_are_private_and_bucketed(tmp_path: Path) -> None:
    locks = FileLocks(tmp_path / "locks")
    with locks.hold("conv:1", ttl_s=10, wait_s=0):
        pass
    files = list((tmp_path / "locks").iterdir())
    assert [f.name for f in files] == [f"{_bucket('conv:1'):04d}.lock"]
    assert stat.S_IMODE(files[0].stat().st_mode) & 0o077 == 0


_CHILD = """
import sys
from pathlib import Path
from models.infra.locks import FileLocks
with FileLocks(Path(sys.argv[1])).hold(sys.argv[2], ttl_s=10, wait_s=0.2) as ok:
    print(ok)
"""


def _child_try(directory: Path, name: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(directory), name], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_file_locks_exclude_another_process(tmp_path: Path) -> None:
    directory = tmp_path / "locks"
    with FileLocks(directory).hold("conv:1", ttl_s=10, wait_s=0) as ok:
        assert ok
        assert _child_try(directory, "conv:1") == "False"
    assert _child_try(directory, "conv:1") == "True"


# --- RedisLocks -------------------------------------------------------------------------------


def test_redis_lock_key_has_the_ttl(redis14: str) -> None:
    locks = RedisLocks(redis14, timeout_s=2)
    client = redis.Redis.from_url(redis14)
    try:
        with locks.hold("conv:9", ttl_s=30, wait_s=0) as ok:
            assert ok
            assert 29_000 <= client.pttl("kefu:lock:conv:9") <= 30_000
        assert client.exists("kefu:lock:conv:9") == 0
    finally:
        client.close()


def test_redis_expired_lock_lets_another_holder_in_and_stale_release_is_harmless(redis14: str) -> None:
    locks = RedisLocks(redis14, timeout_s=2)
    client = redis.Redis.from_url(redis14)
    try:
        first = locks.hold("conv:1", ttl_s=0.2, wait_s=0)
        assert first.__enter__() is True
        time.sleep(0.3)  # the first holder outlives its TTL
        second = locks.hold("conv:1", ttl_s=10, wait_s=0)
        assert second.__enter__() is True
        token = client.get("kefu:lock:conv:1")
        first.__exit__(None, None, None)  # the stale holder releases
        assert client.get("kefu:lock:conv:1") == token  # ... and does not delete the second holder's key
        with locks.hold("conv:1", ttl_s=10, wait_s=0) as third:
            assert third is False
        second.__exit__(None, None, None)
        assert client.exists("kefu:lock:conv:1") == 0
    finally:
        client.close()


def test_redis_errors_propagate() -> None:
    locks = RedisLocks("redis://127.0.0.1:1/0", timeout_s=0.5)
    with pytest.raises(redis.ConnectionError), locks.hold("conv:1", ttl_s=1, wait_s=0):
        pass


def test_make_locks_picks_the_backend(tmp_path: Path, clean_env: Path, redis14: str) -> None:
    assert isinstance(make_locks(Settings(data_dir=tmp_path)), FileLocks)
    assert isinstance(make_locks(Settings(data_dir=tmp_path, redis_url=redis14)), RedisLocks)
