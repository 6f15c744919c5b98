"""Asterisk AudioSocket over TCP: the same :class:`~channels.telephony.call.Call`, another wire.

Started with the gateway when ``KEFU_AUDIOSOCKET_PORT`` is set. AudioSocket carries no credentials,
so a connection is accepted only from the addresses in ``KEFU_AUDIOSOCKET_ALLOWED_IPS`` (default:
loopback); anything else is closed unread. It has no "clear" (Kefu simply stops sending audio) and
no "transfer": Kefu hangs up, and records how the call ended (``transfer:<number>`` or
``hangup:<reason>``) for the dialplan to read from ``GET /v1/voice/outcome/<uuid>`` before it decides
whether to dial the agent (docs/telephony.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING

from channels.telephony import audiosocket
from channels.telephony.config import PhoneSettings
from channels.telephony.events import CallAction, CallEvent, CallStarted, HangupOut, Transfer

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
        decoder = audiosocket.AudioSocketDecoder()
        lock = asyncio.Lock()

        call_id = ""

        async def act(action: CallAction) -> None:
            if isinstance(action, (Transfer, HangupOut)) and call_id:
                outcome = f"transfer:{action.to}" if isinstance(action, Transfer) else f"hangup:{action.reason}"
                await asyncio.to_thread(self.ctx.kv.set, OUTCOME_KEY.format(call_id), outcome, OUTCOME_TTL_S)
            if isinstance(action, Transfer):
                log.info("AudioSocket call: transfer to %s is left to the dialplan; hanging up", action.to)
                action = HangupOut("transfer")
            wire = audiosocket.encode_action(action)
            if wire is None:
                return  # clear: nothing to send, the player already stopped
            async with lock:
                writer.write(wire)
                await writer.drain()
                if isinstance(action, HangupOut):
                    writer.close()

        async def events() -> AsyncGenerator[CallEvent, None]:
            nonlocal call_id
            while data := await reader.read(READ_CHUNK):
                for event in decoder.feed(data):
                    if isinstance(event, CallStarted):
                        call_id = event.call_id
                    yield event

        try:
            await self.drive(events(), act)
        except audiosocket.AudioSocketError as exc:
            log.warning("AudioSocket protocol error: %s", exc)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if not writer.is_closing():
                writer.close()
