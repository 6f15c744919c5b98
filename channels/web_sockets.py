"""The web chat's open sockets in one gateway process: a cap per visitor, one shared resend poll, the service state.

Guarantees:

- **Cap**: a visitor holds at most ``KEFU_WEB_MAX_SOCKETS_PER_VISITOR`` sockets in this process. Opening one
  more closes the visitor's *oldest* socket with close code :data:`REPLACED` (4008) and a reason; the new one
  is kept (the newest tab is the one the person is looking at). Clients must not reconnect on 4008.
- **Idle sockets are cheap**: no socket polls the database on its own. One poll per process every
  ``RESEND_INTERVAL_S`` reads the unconfirmed replies of every open conversation in one statement (only while
  sockets are open) and hands each socket its rows; a socket reads the database itself only when it opens
  and when a live reply arrives for its conversation.
- **Service state**: when a database read fails the hub tells every socket ``{"type": "status", "state":
  "degraded"}`` (sockets stay open), and ``"ok"`` once the next poll succeeds. A socket opened meanwhile is
  told at once.

Nothing here raises to a socket's task: database errors become the degraded state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from models import transcript
from models.transcript import ReplyRow

log = logging.getLogger(__name__)

RESEND_INTERVAL_S = 3.0
REPLACED = 4008
REPLACED_REASON = "too many open chats for this visitor; a newer one replaced this one"


class Socket(Protocol):
    """What the hub needs of one open socket (``channels.web._WebSession``)."""

    peer: str

    async def offer(self, rows: Sequence[ReplyRow]) -> None: ...
    async def send_status(self, state: str) -> None: ...
    async def replace(self) -> None: ...


class SocketHub:
    def __init__(self, sessions: sessionmaker[Session], channel: str, account: str, max_per_visitor: int) -> None:
        self._sessions = sessions
        self._channel, self._account = channel, account
        self._max = max_per_visitor
        self._by_peer: dict[str, list[Socket]] = defaultdict(list)
        self._poll: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()  # held until done: the loop keeps only weak references
        self.degraded = False

    # --- membership ------------------------------------------------------------------------------------------
    def register(self, socket: Socket) -> None:
        """Add a socket; the visitor's oldest is closed (4008) when this one is over the cap."""
        mine = self._by_peer[socket.peer]
        mine.append(socket)
        while len(mine) > self._max:
            closing = asyncio.get_running_loop().create_task(mine.pop(0).replace())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        if self._poll is None or self._poll.done():
            self._poll = asyncio.get_running_loop().create_task(self._run(), name="kefu-web-resend")

    def unregister(self, socket: Socket) -> None:
        mine = self._by_peer.get(socket.peer)
        if mine is not None and socket in mine:
            mine.remove(socket)
            if not mine:
                del self._by_peer[socket.peer]

    async def stop(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll

    # --- reading -----------------------------------------------------------------------------------------------
    async def replies(self, peer: str, since: datetime) -> list[ReplyRow] | None:
        """One conversation's replies to show (:func:`~models.transcript.unconfirmed_replies`); None when the
        database failed (now degraded)."""
        try:
            rows = await run_in_threadpool(self._read, [peer], since)
        except Exception as exc:
            await self.report(False, exc)
            return None
        return rows.get(peer, [])

    def _read(self, peers: Sequence[str], since: datetime | None) -> dict[str, list[ReplyRow]]:
        with self._sessions() as session:
            return transcript.unconfirmed_replies(session, self._channel, self._account, peers, since)

    async def report(self, ok: bool, exc: BaseException | None = None) -> None:
        """Record whether the database answered; tell every socket when the state changes."""
        if ok == (not self.degraded):
            return
        self.degraded = not ok
        if exc is not None:
            log.warning("web sockets: database unavailable (%s); sockets stay open, degraded", type(exc).__name__)
        else:
            log.info("web sockets: database available again")
        state = "degraded" if self.degraded else "ok"
        everyone = [s for sockets in self._by_peer.values() for s in sockets]
        await asyncio.gather(*(s.send_status(state) for s in everyone), return_exceptions=True)

    async def _run(self) -> None:
        """The one resend poll: every interval, while sockets are open."""
        while self._by_peer:
            await asyncio.sleep(RESEND_INTERVAL_S)
            peers = list(self._by_peer)
            if not peers:
                return
            try:
                rows = await run_in_threadpool(self._read, peers, None)
            except Exception as exc:
                await self.report(False, exc)
                continue
            await self.report(True)
            offers = [socket.offer(found) for peer, found in rows.items() for socket in self._by_peer.get(peer, ())]
            await asyncio.gather(*offers, return_exceptions=True)
