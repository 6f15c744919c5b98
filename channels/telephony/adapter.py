"""The voice-gateway WebSocket endpoint: ``/v1/voice/ws``.

A gateway authenticates with its own secret (``Authorization: Bearer <secret>``, or ``?token=``
for gateways that cannot set headers); a connection without a valid one is closed with 1008
before anything is read. Then :mod:`~channels.telephony.gateway_ws` frames drive a
:class:`~channels.telephony.call.Call`; a protocol error closes the socket (1003) with its message.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING

from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from channels.base import ChannelAdapter
from channels.speech.base import Recognizer, Synthesizer
from channels.telephony.call import CHANNEL, Call
from channels.telephony.events import CallAction, CallEvent, CallStarted, HangupOut
from channels.telephony.gateway_ws import GatewayDecoder, ProtocolError, encode

if TYPE_CHECKING:
    from channels.app import Gateway

log = logging.getLogger(__name__)


class TelephonyAdapter(ChannelAdapter):
    name = CHANNEL

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self._speech: tuple[Recognizer, Synthesizer] | None = None
        self._speech_lock = threading.Lock()

    def routes(self) -> list[BaseRoute]:
        return [WebSocketRoute("/v1/voice/ws", self.connect)]

    def speech(self) -> tuple[Recognizer, Synthesizer]:
        """The configured providers, built on the first call (a local recognizer loads a model)."""
        with self._speech_lock:
            if self._speech is None:
                from channels.speech.espeak import EspeakSynthesizer

                s = self.gw.settings
                if s.phone_speech == "nls":
                    from channels.speech.fallback import FallbackSynthesizer
                    from channels.speech.nls_rest import NlsRestRecognizer, NlsRestSynthesizer
                    from channels.speech.nls_token import NlsTokens
                    from models.locks import make_locks

                    assert s.nls_access_key_id and s.nls_access_key_secret and s.nls_appkey  # checked at start
                    tokens = NlsTokens(self.gw.kv, make_locks(s), access_key_id=s.nls_access_key_id,
                                       access_key_secret=s.nls_access_key_secret.get_secret_value(),
                                       region=s.nls_region, endpoint=s.nls_meta_endpoint, protocol=s.nls_meta_protocol)
                    synthesizer = NlsRestSynthesizer(tokens, gateway=s.nls_gateway, appkey=s.nls_appkey, voice=s.nls_voice)
                    self._speech = (NlsRestRecognizer(tokens, gateway=s.nls_gateway, appkey=s.nls_appkey),
                                    FallbackSynthesizer(synthesizer, EspeakSynthesizer()))
                else:
                    from channels.speech.pocketsphinx_asr import PocketSphinxRecognizer

                    self._speech = (PocketSphinxRecognizer(), EspeakSynthesizer())
            return self._speech

    async def connect(self, ws: WebSocket) -> None:
        header = ws.headers.get("authorization", "")
        secret = header[7:] if header.lower().startswith("bearer ") else ws.query_params.get("token", "")
        if not secret or self.gw.settings.voice_gateway(secret) is None:
            log.warning("voice gateway refused: missing or wrong secret")
            await ws.close(code=1008, reason="a valid voice-gateway secret is required")
            return
        await ws.accept()
        decoder = GatewayDecoder()
        send_lock = asyncio.Lock()

        async def act(action: CallAction) -> None:
            frame = encode(action)
            async with send_lock:
                if isinstance(frame, bytes):
                    await ws.send_bytes(frame)
                else:
                    await ws.send_text(frame)
                if isinstance(action, HangupOut):
                    await ws.close(code=1000, reason=action.reason)

        call: Call | None = None
        try:
            while call is None or not call.ended:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                event: CallEvent
                if message.get("bytes") is not None:
                    event = decoder.binary(message["bytes"])
                else:
                    event = decoder.text(message.get("text") or "")
                if isinstance(event, CallStarted):
                    asr, tts = await asyncio.to_thread(self.speech)
                    call = Call(self.gw, event, act, asr, tts)
                    await call.begin()
                elif call is not None:
                    await call.on_event(event)
        except ProtocolError as exc:
            await ws.close(code=1003, reason=str(exc)[:120])
        except WebSocketDisconnect:
            pass
        finally:
            if call is not None:
                await call.end()
