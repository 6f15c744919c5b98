"""The voice-gateway WebSocket endpoint: ``/v1/voice/ws``.

A gateway authenticates with its own secret (``Authorization: Bearer <secret>``, or ``?token=``
for gateways that cannot set headers); a connection without a valid one is closed with 1008
before anything is read. Then :mod:`~channels.telephony.gateway_ws` frames drive a
:class:`~channels.telephony.call.Call`; a protocol error closes the socket (1003) with its message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, QueryParams
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from channels.base import ChannelAdapter, HandOffPort
from channels.speech.base import Recognizer, Synthesizer
from channels.speech.pool import SpeechPool
from channels.speech.providers import SpeechProviders
from channels.telephony import asr_language
from channels.telephony.call import CHANNEL, Act, Call
from channels.telephony.config import PhoneSettings
from channels.telephony.events import CallEvent, CallStarted
from channels.telephony.gateway_socket import GatewaySocket
from models.dialogue import HandOff
from models.infra.locks import make_locks

if TYPE_CHECKING:
    from channels.base import ChannelContext
    from channels.telephony.audiosocket_server import AudioSocketServer

log = logging.getLogger(__name__)


class TelephonyAdapter(ChannelAdapter):
    name = CHANNEL

    def __init__(self, context: ChannelContext) -> None:
        super().__init__(context)
        asr_language.check(context.settings)  # Chinese greetings, an English-only recognizer: refused
        phone = context.settings.section(PhoneSettings)
        self._speech: SpeechProviders | SpeechPool
        if phone.speech_processes() > 0:
            self._speech = SpeechPool(context.settings, phone.speech_processes())
        else:
            self._speech = SpeechProviders(context.settings, context.kv, make_locks(context.settings))
        self._audiosocket: AudioSocketServer | None = None

    async def start(self) -> None:
        """The speech processes, when calls can arrive (a voice gateway or AudioSocket is configured), and the
        Asterisk AudioSocket listener, when ``KEFU_AUDIOSOCKET_PORT`` is set."""
        phone = self.ctx.settings.section(PhoneSettings)
        port = phone.audiosocket_port
        if isinstance(self._speech, SpeechPool) and (phone.voice_gateways or port is not None):
            await asyncio.to_thread(self._speech.start)
        if port is not None:
            from channels.telephony.audiosocket_server import AudioSocketServer

            self._audiosocket = AudioSocketServer(self.ctx, self.drive)
            await self._audiosocket.start(self.ctx.settings.host, port)

    async def stop(self) -> None:
        if self._audiosocket is not None:
            await self._audiosocket.stop()
        if isinstance(self._speech, SpeechPool):
            await asyncio.to_thread(self._speech.stop)

    def routes(self) -> list[BaseRoute]:
        return [WebSocketRoute("/v1/voice/ws", self.connect),
                Route("/v1/voice/outcome/{call_id}", self.outcome, methods=["GET"])]

    def _authorized(self, headers: Headers, query: QueryParams) -> bool:
        header = headers.get("authorization", "")
        secret = header[7:] if header.lower().startswith("bearer ") else query.get("token", "")
        return bool(secret) and self.ctx.settings.section(PhoneSettings).voice_gateway(secret) is not None

    async def outcome(self, request: Request) -> Response:
        """How an AudioSocket call ended, for the dialplan: ``transfer:<number>`` or ``hangup:<reason>``."""
        if not self._authorized(request.headers, request.query_params):
            return PlainTextResponse("a valid voice-gateway secret is required", status_code=401)
        from channels.telephony.audiosocket_server import OUTCOME_KEY

        value = await run_in_threadpool(self.ctx.kv.get, OUTCOME_KEY.format(request.path_params["call_id"]))
        if value is None:
            return PlainTextResponse("unknown call, or it has not ended", status_code=404)
        return PlainTextResponse(value)

    def speech(self) -> tuple[Recognizer, Synthesizer]:
        """The configured providers (in the speech processes, or built here on the first call)."""
        return self._speech.get()

    async def connect(self, ws: WebSocket) -> None:
        if not self._authorized(ws.headers, ws.query_params):
            log.warning("voice gateway refused: missing or wrong secret")
            await ws.close(code=1008, reason="a valid voice-gateway secret is required")
            return
        await ws.accept()
        await GatewaySocket(ws).serve(self.drive)  # closes with a code however the call ends

    async def drive(self, events: AsyncGenerator[CallEvent, None], act: Act) -> None:
        """One call from any wire's events: ``CallStarted`` begins it; it runs until the caller or Kefu hangs
        up or the events stop, and is always ended (the wire's own errors propagate after that)."""
        call: Call | None = None
        try:
            async with contextlib.aclosing(events):  # a call ended by Kefu leaves the wire's reader closed
                async for event in events:
                    if isinstance(event, CallStarted):
                        if call is None:
                            asr, tts = await asyncio.to_thread(self.speech)
                            call = Call(self.ctx, event, act, asr, tts)
                            await call.begin()
                    elif call is not None:
                        await call.on_event(event)
                    if call is not None and call.ended:
                        return
        finally:
            if call is not None:
                await call.end()


class PhoneHandOff(HandOffPort):
    """A caller who asks for a person is transferred (the call itself carries it out) where the hotline (the account:
    the called number) has an agent number, its own ``transfer_to`` or ``KEFU_PHONE_TRANSFER_TO``; elsewhere they
    are told honestly that nobody can take the call, and the conversation goes on."""

    from_worker = False  # the call transfers itself; a worker's hand-off would be a notice without a transfer

    def availability(self, account_name: str) -> HandOff:
        phone = self.settings.section(PhoneSettings)
        return HandOff.PERSON if phone.hotline(account_name).transfer_to or phone.phone_transfer_to else HandOff.NOBODY
