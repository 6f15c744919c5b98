"""Asterisk AudioSocket over TCP: the same :class:`~channels.telephony.call.Call`, another wire.

Started with the gateway when ``KEFU_AUDIOSOCKET_PORT`` is set. AudioSocket carries no credentials,
so a connection is accepted only from the addresses in ``KEFU_AUDIOSOCKET_ALLOWED_IPS`` (default:
loopback); anything else is closed unread. It has no "clear" (Kefu simply stops sending audio) and
no "transfer": Kefu hangs up (a 0x00 message, then it closes the socket), and records how the call
ended for the dialplan to read from ``GET /v1/voice/outcome/<uuid>`` before it decides whether to
dial the agent (docs/telephony.md):

- ``transfer:<number>``: the caller asked for a person (key 0, 转人工, an agent's claim);
- ``hangup:<reason>``: Kefu ended the call (``silence``, ``no agent available``);
- ``error:<what>``: bytes that are not AudioSocket (``error:unknown type 0x42``: Kefu still sends its
  0x00 before closing), ``error:asterisk <code>`` after Asterisk's 0xff message, ``error:internal``
  when the call failed inside Kefu.

A caller who hangs up (Asterisk's 0x00, or the socket closing) leaves no outcome: the channel is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING

from channels.telephony import audiosocket
from channels.telephony.config import PhoneSettings
from channels.telephony.events import CallAction, CallEvent, GatewayError, HangupIn, HangupOut, Transfer

if TYPE_CHECKING:
    from channels.base import ChannelContext

log = logging.getLogger(__name__)

Drive = Callable[[AsyncGenerator[CallEvent, None], Callable[[CallAction], Awaitable[None]]], Awaitable[None]]
READ_CHUNK = 4096
OUTCOME_KEY = "phone:outcome:{}"
OUTCOME_TTL_S = 600


class AudioSocketServer:
    def __init__(self, ctx: ChannelContext, drive: Drive) -> None:
        self.ctx, self.drive = ctx, drive  # the call driver (TelephonyAdapter.drive), wire-independent
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._serve, host, port)
        bound = int(self._server.sockets[0].getsockname()[1])
        log.info("AudioSocket listening on %s:%d", host, bound)
        return bound

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if not peer or peer[0] not in self.ctx.settings.section(PhoneSettings).audiosocket_allowed_ips:
            log.warning("AudioSocket connection from %s refused (not in KEFU_AUDIOSOCKET_ALLOWED_IPS)", peer and peer[0])
            writer.close()
            return
        await _AudioSocketCall(self.ctx, reader, writer).serve(self.drive)


class _AudioSocketCall:
    """One accepted connection: Asterisk's messages in as events, Kefu's actions out as messages. However Kefu
    ends the call, its outcome is recorded (once the UUID came) before the 0x00 hangup goes out, so the dialplan
    finds it as soon as ``AudioSocket()`` returns; then the socket is closed."""

    def __init__(self, ctx: ChannelContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.ctx, self.reader, self.writer = ctx, reader, writer
        self.decoder = audiosocket.AudioSocketDecoder()
        self._lock = asyncio.Lock()
        self._done = False  # our hangup went out, or Asterisk's came / it closed: nothing more is sent
        self._ending = False  # Kefu is hanging up: the first outcome is the call's

    async def serve(self, drive: Drive) -> None:
        try:
            await drive(self.events(), self.act)
        except audiosocket.AudioSocketError as exc:
            log.warning("AudioSocket protocol error: %s", exc)
            await self._hang_up(f"error:{exc.short}")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # Asterisk is gone
        except Exception:
            log.exception("AudioSocket call failed")
            await self._hang_up("error:internal")
        else:
            await self._hang_up(None)  # after Asterisk's 0xff error; a no-op when the call already ended
        finally:
            if not self.writer.is_closing():
                self.writer.close()

    async def events(self) -> AsyncGenerator[CallEvent, None]:
        while data := await self.reader.read(READ_CHUNK):
            for event in self.decoder.feed(data):
                if isinstance(event, HangupIn):
                    self._done = True
                elif isinstance(event, GatewayError):
                    log.warning("AudioSocket call %s: Asterisk reported error %d", self.decoder.call_id, event.code)
                    await self._record(f"error:asterisk {event.code}")
                yield event
        self._done = True  # Asterisk closed the socket

    async def act(self, action: CallAction) -> None:
        if isinstance(action, Transfer):
            log.info("AudioSocket call: transfer to %s is left to the dialplan; hanging up", action.to)
            await self._hang_up(f"transfer:{action.to}")
        elif isinstance(action, HangupOut):
            await self._hang_up(f"hangup:{action.reason}")
        elif (wire := audiosocket.encode_action(action)) is not None:  # clear: nothing to send, the player stopped
            await self._send(wire)

    async def _hang_up(self, outcome: str | None) -> None:
        """Record ``outcome``, then send 0x00 and close; once, and not after Asterisk hung up."""
        if self._done or self._ending:
            return
        self._ending = True
        try:
            if outcome is not None:
                await self._record(outcome)
        finally:  # the store failing must not keep the line open
            with contextlib.suppress(ConnectionError):
                await self._send(audiosocket.encode_message(audiosocket.KIND_HANGUP), last=True)

    async def _record(self, outcome: str) -> None:
        if self.decoder.call_id:
            await asyncio.to_thread(self.ctx.kv.set, OUTCOME_KEY.format(self.decoder.call_id), outcome, OUTCOME_TTL_S)

    async def _send(self, wire: bytes, last: bool = False) -> None:
        async with self._lock:
            if self._done:
                return
            self._done = last
            self.writer.write(wire)
            await self.writer.drain()
            if last:
                self.writer.close()  # the reader then sees EOF: the call's events end
