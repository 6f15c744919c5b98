"""One voice gateway's WebSocket as a call's wire: frames in as events, actions out as frames, and a close
frame with a code however the call ends.

An ASGI app that returns without closing leaves the server to drop the TCP connection, which the gateway
sees as 1006 (abnormal closure) and cannot tell from a crash. So Kefu always closes first:

====  ===========================================================================================
1000  Kefu hung up (reason: the hang-up's, e.g. ``silence``), transferred the call (``transfer``), or
      the caller hung up with a ``{"type": "hangup"}`` frame and left the socket open (``call ended``)
1003  a frame broke the protocol (reason: what was wrong, :class:`~channels.telephony.gateway_ws.ProtocolError`)
1011  the call failed inside Kefu (``internal error``; logged with its traceback)
====  ===========================================================================================

Nothing is sent after the close frame (audio still queued when a transfer closes the socket is dropped),
and nothing at all when the gateway closed first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from channels.telephony.audiosocket_server import Drive  # the call driver's type, the same for both wires
from channels.telephony.events import CallAction, CallEvent, HangupOut, Transfer
from channels.telephony.gateway_ws import GatewayDecoder, ProtocolError, encode

log = logging.getLogger(__name__)

NORMAL, UNSUPPORTED_DATA, INTERNAL_ERROR = 1000, 1003, 1011
MAX_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes, two of them the code


class GatewaySocket:
    """An accepted ``/v1/voice/ws`` connection; :meth:`serve` runs one call on it."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self._decoder = GatewayDecoder()
        self._send_lock = asyncio.Lock()
        self._closed = False  # Kefu's close frame went out

    async def serve(self, drive: Drive) -> None:
        """Drive the call from this socket's frames, then close with the code that says how it ended."""
        try:
            await drive(self.events(), self.act)
        except ProtocolError as exc:
            code, reason = UNSUPPORTED_DATA, str(exc)
        except WebSocketDisconnect:
            return  # the gateway is gone: there is nobody to close to
        except Exception:
            log.exception("call on the voice-gateway WebSocket failed")
            code, reason = INTERNAL_ERROR, "internal error"
        else:
            code, reason = NORMAL, "call ended"  # a no-op when Kefu hung up or transferred, or the gateway closed
        async with self._send_lock:
            await self._close(code, reason)

    async def events(self) -> AsyncGenerator[CallEvent, None]:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                yield self._decoder.binary(message["bytes"])
            else:
                yield self._decoder.text(message.get("text") or "")

    async def act(self, action: CallAction) -> None:
        frame = encode(action)
        async with self._send_lock:
            if self._closed:
                return
            if isinstance(frame, bytes):
                await self.ws.send_bytes(frame)
            else:
                await self.ws.send_text(frame)
            if isinstance(action, HangupOut):
                await self._close(NORMAL, action.reason)
            elif isinstance(action, Transfer):
                await self._close(NORMAL, "transfer")  # the gateway bridges the caller to the agent: the call is over

    async def _close(self, code: int, reason: str) -> None:
        """Kefu's close frame, once; called under ``_send_lock``."""
        if self._closed or self.ws.client_state is WebSocketState.DISCONNECTED:
            return
        self._closed = True
        with contextlib.suppress(WebSocketDisconnect):  # the gateway went away meanwhile
            await self.ws.close(code=code, reason=reason.encode()[:MAX_REASON_BYTES].decode(errors="ignore"))
