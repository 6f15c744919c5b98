"""Tests for models.infra.bus: the embedded Unix-socket bus across processes and the Redis bus (real Redis, db 14)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from models.infra import bus as bus_module
from models.infra.bus import RedisBus, RedisListener, SocketBus, SocketListener, make_bus, make_listener, socket_dir
from models.settings import Settings
from tests.chaos.faults import FaultProxy

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def bus_dir() -> Iterator[Path]:
    # A short path: Unix socket paths are limited to 108 bytes, pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="kefu-bus-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


_PUBLISHER = """
import json, sys
from pathlib import Path
from models.infra.bus import SocketBus
bus = SocketBus(Path(sys.argv[1]))
for topic, event in json.loads(sys.argv[2]):
    bus.publish(topic, event)
"""


async def _publish_from_another_process(directory: Path, events: list[tuple[str, dict[str, object]]]) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _PUBLISHER, str(directory), json.dumps(events),
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()


@contextmanager
def socket_bus(directory: Path) -> Iterator[SocketBus]:
    """A SocketBus whose socket is closed afterwards (-W error turns a leaked socket into a failure)."""
    bus = SocketBus(directory)
    try:
        yield bus
    finally:
        bus.close()


def _drain(queue: asyncio.Queue[dict[str, object]]) -> list[dict[str, object]]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


# --- SocketBus / SocketListener ---------------------------------------------------------------


def test_socket_listener_receives_events_from_another_process(bus_dir: Path) -> None:
    async def scenario() -> None:
        listener = SocketListener(bus_dir)
        await listener.start()
        try:
            mine = listener.subscribe("conv:1")
            also_mine = listener.subscribe("conv:1")
            await _publish_from_another_process(
                bus_dir,
                [
                    ("conv:2", {"n": 0}),
                    ("conv:1", {"n": 1, "text": "您好"}),
                    ("conv:3", {"n": 2}),
                    ("conv:1", {"n": 3}),
                ],
            )
            first = await asyncio.wait_for(mine.get(), 5)
            second = await asyncio.wait_for(mine.get(), 5)
            assert [first, second] == [{"n": 1, "text": "您好"}, {"n": 3}]
            await asyncio.sleep(0.05)  # anything else would have arrived by now
            assert _drain(mine) == []  # other topics never reach this subscriber
            assert _drain(also_mine) == [{"n": 1, "text": "您好"}, {"n": 3}]  # every local subscriber gets a copy
        finally:
            await listener.stop()
        assert list(bus_dir.glob("*.sock")) == []  # stop() removes its socket file

    asyncio.run(scenario())


def test_unsubscribed_queue_gets_nothing(bus_dir: Path) -> None:
    async def scenario() -> None:
        listener = SocketListener(bus_dir)
        await listener.start()
        try:
            queue = listener.subscribe("conv:1")
            listener.unsubscribe("conv:1", queue)
            listener.unsubscribe("conv:1", queue)  # twice is harmless
            with socket_bus(bus_dir) as bus:
                bus.publish("conv:1", {"n": 1})
            await asyncio.sleep(0.05)
            assert queue.empty()
        finally:
            await listener.stop()

    asyncio.run(scenario())


def test_two_listeners_both_receive(bus_dir: Path) -> None:
    async def scenario() -> None:
        a, b = SocketListener(bus_dir), SocketListener(bus_dir)
        await a.start()
        await b.start()
        try:
            qa, qb = a.subscribe("t"), b.subscribe("t")
            with socket_bus(bus_dir) as bus:
                bus.publish("t", {"x": 1})
            assert await asyncio.wait_for(qa.get(), 5) == {"x": 1}
            assert await asyncio.wait_for(qb.get(), 5) == {"x": 1}
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(scenario())


def test_malformed_datagram_is_dropped(bus_dir: Path) -> None:
    async def scenario() -> None:
        listener = SocketListener(bus_dir)
        await listener.start()
        try:
            queue = listener.subscribe("t")
            (path,) = bus_dir.glob("*.sock")
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as raw:
                raw.sendto(b"not json", str(path))
                raw.sendto(b'{"t": "t"}', str(path))
            with socket_bus(bus_dir) as bus:
                bus.publish("t", {"ok": True})
            assert await asyncio.wait_for(queue.get(), 5) == {"ok": True}
            assert queue.empty()
        finally:
            await listener.stop()

    asyncio.run(scenario())


def test_publish_without_listeners_does_not_raise(bus_dir: Path) -> None:
    with socket_bus(bus_dir / "never-created") as bus:
        bus.publish("t", {"x": 1})
    with socket_bus(bus_dir) as bus:
        bus.publish("t", {"x": 1})  # directory exists but is empty


def test_publish_removes_a_stale_socket_file(bus_dir: Path) -> None:
    stale = bus_dir / "12345-dead.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(stale))
    sock.close()  # the gateway died without unlinking
    unrelated = bus_dir / "notes.txt"
    unrelated.write_text("not a socket")
    assert stale.exists()
    with socket_bus(bus_dir) as bus:
        bus.publish("t", {"x": 1})
    assert not stale.exists()
    assert unrelated.exists()  # only *.sock entries are touched


def test_oversized_event_is_dropped_without_raising(bus_dir: Path) -> None:
    async def scenario() -> None:
        listener = SocketListener(bus_dir)
        await listener.start()
        try:
            queue = listener.subscribe("t")
            with socket_bus(bus_dir) as bus:
                bus.publish("t", {"text": "x" * 70_000})
                bus.publish("t", {"text": "small"})
            assert await asyncio.wait_for(queue.get(), 5) == {"text": "small"}
        finally:
            await listener.stop()

    asyncio.run(scenario())


def test_socket_dir_short_data_dir(tmp_path: Path, clean_env: Path) -> None:
    short = Path(tempfile.gettempdir()) / "kd"
    assert socket_dir(Settings(data_dir=short)) == (short / "bus").resolve()


def test_socket_dir_falls_back_to_a_short_tmp_path(tmp_path: Path, clean_env: Path) -> None:
    long_dir = tmp_path / ("d" * 120)
    path = socket_dir(Settings(data_dir=long_dir))
    assert path.parent == Path(tempfile.gettempdir())
    assert path.name.startswith("kefu-bus-")
    assert len(str(path)) <= 80
    # every process with the same data_dir agrees on the directory; another data_dir gets another one
    assert socket_dir(Settings(data_dir=long_dir)) == path
    assert socket_dir(Settings(data_dir=tmp_path / ("e" * 120))) != path


def test_make_bus_and_listener_pick_the_backend(tmp_path: Path, clean_env: Path, redis14: str) -> None:
    embedded = Settings(data_dir=tmp_path)
    bus = make_bus(embedded)
    assert isinstance(bus, SocketBus)
    bus._sock.close()
    assert isinstance(make_listener(embedded), SocketListener)
    with_redis = Settings(data_dir=tmp_path, redis_url=redis14)
    assert isinstance(make_bus(with_redis), RedisBus)
    assert isinstance(make_listener(with_redis), RedisListener)


# --- RedisBus / RedisListener (real Redis) ----------------------------------------------------


def test_redis_listener_receives_published_events(redis14: str) -> None:
    async def scenario() -> None:
        listener = RedisListener(redis14, timeout_s=5)
        await listener.start()
        try:
            assert listener.connected.is_set()
            queue = listener.subscribe("conv:1")
            bus = RedisBus(redis14, timeout_s=2)
            bus.publish("conv:2", {"n": 0})
            bus.publish("conv:1", {"n": 1, "text": "您好"})
            assert await asyncio.wait_for(queue.get(), 5) == {"n": 1, "text": "您好"}
            await asyncio.sleep(0.05)
            assert queue.empty()
        finally:
            await listener.stop()

    asyncio.run(scenario())


def test_redis_publish_to_a_closed_port_does_not_raise() -> None:
    RedisBus("redis://127.0.0.1:1/0", timeout_s=0.5).publish("t", {"x": 1})


def test_redis_listener_start_returns_when_redis_is_down() -> None:
    async def scenario() -> None:
        listener = RedisListener("redis://127.0.0.1:1/0", timeout_s=0.3)
        await listener.start()  # does not hang or raise; keeps retrying in the background
        try:
            assert not listener.connected.is_set()
        finally:
            await listener.stop()

    asyncio.run(scenario())


def test_a_redis_subscription_that_goes_silent_is_replaced(redis14: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hung Redis or a dropped route sends no RST: the listener PINGs a quiet subscription and replaces one that
    does not answer (live events stopped for good before)."""
    monkeypatch.setattr(bus_module, "LIVENESS_S", 0.5)
    url = redis.Redis.from_url(redis14).connection_pool.connection_kwargs

    async def until(condition: Callable[[], bool]) -> None:
        while not condition():
            await asyncio.sleep(0.05)

    async def scenario(proxy: FaultProxy) -> None:
        listener = RedisListener(proxy.url("redis", f"/{url['db']}"), timeout_s=0.5)
        await listener.start()
        try:
            assert listener.connected.is_set()
            proxy.blackhole()  # the open subscription stays open and hears nothing
            await asyncio.wait_for(until(lambda: not listener.connected.is_set()), 10)
            proxy.passthrough()
            await asyncio.wait_for(listener.connected.wait(), 10)
            queue = listener.subscribe("conv:1")
            RedisBus(redis14, timeout_s=2).publish("conv:1", {"n": 1})
            assert await asyncio.wait_for(queue.get(), 5) == {"n": 1}
        finally:
            await listener.stop()

    with FaultProxy(url.get("host", "127.0.0.1"), int(url.get("port", 6379))) as proxy:
        asyncio.run(scenario(proxy))


def test_a_burst_larger_than_the_kernel_datagram_queue_arrives_whole(bus_dir: Path) -> None:
    """Linux queues only net.unix.max_dgram_qlen (often 10) datagrams per receiver; a token burst is longer."""

    async def scenario() -> None:
        listener = SocketListener(bus_dir)
        await listener.start()
        try:
            queue = listener.subscribe("web:burst")
            events = [("web:burst", {"type": "token", "n": n}) for n in range(300)]
            await _publish_from_another_process(bus_dir, events)
            await asyncio.sleep(0.2)
            assert [e["n"] for e in _drain(queue)] == list(range(300))
        finally:
            await listener.stop()

    asyncio.run(scenario())
