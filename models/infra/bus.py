"""Live events from workers to whichever gateway process holds a customer's socket.

Two interchangeable buses, both fire-and-forget like Redis pub/sub itself:

- :class:`RedisBus`: ``PUBLISH kefu:bus:<topic>``; each gateway holds one pattern subscription
  and dispatches to its local sockets.
- :class:`SocketBus` (embedded, no server): each gateway binds a Unix datagram socket in a shared
  directory; a publisher sends the event to every socket there. Works across processes on one host.

A lost event only costs liveness, never data: the reply row is the durable copy, and gateways
re-send undelivered replies from the database (see ``channels.web``). Publishing never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import queue as queues
import secrets
import socket
import tempfile
import threading
import weakref
from collections import defaultdict
from pathlib import Path
from typing import Any, Protocol

import redis
import redis.asyncio as aioredis

from models.settings import Settings

log = logging.getLogger(__name__)

Event = dict[str, Any]
_PREFIX = "kefu:bus:"
_MAX_DATAGRAM = 60_000
LIVENESS_S = 5.0  # a subscription quiet this long is PINGed; one that stays silent is replaced


class Bus(Protocol):
    def publish(self, topic: str, event: Event) -> None: ...


class Listener(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def subscribe(self, topic: str) -> asyncio.Queue[Event]: ...
    def unsubscribe(self, topic: str, queue: asyncio.Queue[Event]) -> None: ...


class _LocalFanout:
    """Topic → local subscriber queues; the half both listeners share."""

    def __init__(self) -> None:
        self._queues: dict[str, set[asyncio.Queue[Event]]] = defaultdict(set)

    def subscribe(self, topic: str) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=10_000)
        self._queues[topic].add(queue)
        return queue

    def unsubscribe(self, topic: str, queue: asyncio.Queue[Event]) -> None:
        queues = self._queues.get(topic)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._queues[topic]

    def dispatch(self, raw: bytes) -> None:
        try:
            topic, event = _decode(raw)
        except ValueError:
            log.warning("bus: dropped a malformed event")
            return
        for queue in tuple(self._queues.get(topic, ())):
            with contextlib.suppress(asyncio.QueueFull):  # a stuck socket must not stall the others
                queue.put_nowait(event)


def _encode(topic: str, event: Event) -> bytes:
    return json.dumps({"t": topic, "e": event}, ensure_ascii=False, separators=(",", ":")).encode()


def _decode(raw: bytes) -> tuple[str, Event]:
    try:
        obj = json.loads(raw)
        return str(obj["t"]), dict(obj["e"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError("malformed bus event") from exc


# --- Redis -----------------------------------------------------------------------------------


class RedisBus:
    def __init__(self, url: str, timeout_s: float) -> None:
        # no retry (redis-py's default here): a Redis that does not answer costs a publisher one socket timeout
        self._client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    def publish(self, topic: str, event: Event) -> None:
        try:
            self._client.publish(_PREFIX + topic, _encode(topic, event))
        except redis.RedisError as exc:
            log.warning("bus: publish failed (%s); the reply stays in the database", type(exc).__name__)


class RedisListener(_LocalFanout):
    def __init__(self, url: str, timeout_s: float) -> None:
        super().__init__()
        self._url = url
        self._timeout_s = timeout_s
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="kefu-bus-redis")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.connected.wait(), self._timeout_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            client = aioredis.Redis.from_url(self._url, socket_connect_timeout=self._timeout_s)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.psubscribe(_PREFIX + "*")
                    self.connected.set()
                    backoff = 0.1
                    await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reconnect on any Redis/socket failure
                self.connected.clear()
                log.warning("bus: Redis subscription lost (%s); retrying in %.1fs", type(exc).__name__, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                await client.aclose()


    async def _listen(self, pubsub: Any) -> None:
        """Dispatch events; PING when quiet, and give up on a subscription that stays silent (a hung Redis or a
        dropped route sends no RST: without this, live events would stop for good)."""
        heard = asyncio.get_running_loop().time()
        pinged = False
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=False, timeout=1.0)
            now = asyncio.get_running_loop().time()
            if message is not None:
                heard, pinged = now, False
                if message["type"] == "pmessage":
                    self.dispatch(message["data"])
            elif now - heard > LIVENESS_S + self._timeout_s:
                raise ConnectionError("no answer to PING")
            elif now - heard > LIVENESS_S and not pinged:
                await pubsub.ping()
                pinged = True


# --- embedded: Unix datagram sockets ----------------------------------------------------------


def socket_dir(settings: Settings) -> Path:
    """Where gateways bind their sockets; short enough for the 108-byte sun_path limit."""
    path = (settings.data_dir / "bus").resolve()
    if len(str(path)) > 80:
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
        path = Path(tempfile.gettempdir()) / f"kefu-bus-{digest}"
    return path


class SocketBus:
    # A receiver queues at most net.unix.max_dgram_qlen datagrams (10 by default); a sender waits this
    # long for room instead of dropping a streamed token the moment a gateway is a little behind.
    SEND_WAIT_S = 0.05

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.settimeout(self.SEND_WAIT_S)
        # closed when the bus is collected, if nobody called close(): every process's ingress holds one bus
        self._close = weakref.finalize(self, self._sock.close)

    def publish(self, topic: str, event: Event) -> None:
        raw = _encode(topic, event)
        if len(raw) > _MAX_DATAGRAM:
            log.warning("bus: event of %d bytes too large for the embedded bus; dropped", len(raw))
            return
        try:
            entries = list(os.scandir(self._dir))
        except FileNotFoundError:
            return  # no gateway is listening
        for entry in entries:
            if not entry.name.endswith(".sock"):
                continue
            try:
                self._sock.sendto(raw, entry.path)
            except ConnectionRefusedError:  # the gateway that bound it is gone
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
            except (TimeoutError, BlockingIOError, FileNotFoundError):
                pass  # a stuck or vanished receiver; the database copy covers it
            except OSError as exc:
                log.warning("bus: send failed (%s)", exc.strerror)

    def close(self) -> None:
        self._close()


class SocketListener(_LocalFanout):
    def __init__(self, directory: Path) -> None:
        super().__init__()
        self._dir = directory
        self._path = directory / f"{os.getpid()}-{secrets.token_hex(3)}.sock"
        self._sock: socket.socket | None = None

    async def start(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.bind(str(self._path))
        sock.setblocking(False)
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                raw = self._sock.recv(_MAX_DATAGRAM + 1024)
            except BlockingIOError:
                return
            self.dispatch(raw)

    async def stop(self) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()


class BackgroundBus:
    """Publishes from a daemon thread, so a caller on a request's path never waits for Redis (a hung Redis would
    cost every customer message a socket timeout before its acknowledgement). Events beyond :data:`BACKLOG`
    waiting are dropped, like any lost event: the database holds the truth."""

    BACKLOG = 1000

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._queue: queues.Queue[tuple[str, Event] | None] = queues.Queue(maxsize=self.BACKLOG)
        self._thread = threading.Thread(target=self._run, name="kefu-bus", daemon=True)
        self._thread.start()

    def publish(self, topic: str, event: Event) -> None:
        with contextlib.suppress(queues.Full):
            self._queue.put_nowait((topic, event))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            self._bus.publish(*item)

    def close(self, timeout_s: float = 1.0) -> None:
        with contextlib.suppress(queues.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(timeout_s)
        getattr(self._bus, "close", lambda: None)()


def make_bus(settings: Settings) -> Bus:
    url = settings.effective_redis_url
    if url:
        return RedisBus(url, settings.redis_timeout_s)
    return SocketBus(socket_dir(settings))


def make_listener(settings: Settings) -> Listener:
    url = settings.effective_redis_url
    if url:
        return RedisListener(url, settings.redis_timeout_s)
    return SocketListener(socket_dir(settings))
