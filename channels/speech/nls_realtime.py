"""Aliyun NLS over its real-time WebSocket protocol: SpeechTranscriber (recognition while the caller
speaks) and SpeechSynthesizer (one sentence of speech per task).

The wire (``wss://nls-gateway-cn-shanghai.aliyuncs.com/ws/v1``, token in the ``X-NLS-Token`` header):
every command is a JSON text frame ``{"header": {message_id, task_id, namespace, name, appkey},
"payload": {…}}`` with 32-hex ids; audio travels as binary frames.

- Recognition: ``StartTranscription`` (pcm, sample rate) → ``TranscriptionStarted``; binary audio as it
  arrives, while NLS answers ``SentenceBegin`` / ``TranscriptionResultChanged`` / ``SentenceEnd``;
  ``StopTranscription`` → ``TranscriptionCompleted``. The text is the ``SentenceEnd`` results in order.
  The sample rate must be the one of the appkey's model (chosen in the NLS console: 8 kHz telephone or
  16 kHz general); NLS refuses any other. It is ``sample_rate`` when given (``KEFU_NLS_ASR_SAMPLE_RATE``),
  else the call's own (:func:`~channels.speech.audio.recognition_rate`): 8 kHz telephone audio goes out
  as it came in, not upsampled, as Aliyun advises for an 8 kHz model.
- Synthesis: ``StartSynthesis`` (text, pcm, sample rate, voice) → binary audio frames →
  ``SynthesisCompleted``. :meth:`NlsRealtimeSynthesizer.synthesize_stream` yields each frame as it
  arrives (whole samples), so a caller hears the start of a sentence before NLS has finished it.
- Any failure is a ``TaskFailed`` frame whose header carries ``status`` and ``status_text``.

A rejected token (status 40000001, or HTTP 401/403 at the handshake) is refreshed once and the task
repeated — for a transcription the audio already sent is replayed, so the caller loses nothing; for a
synthesis only before its first audio was handed out (afterwards the failure is a SpeechError).
Everything else raises :class:`~channels.speech.base.SpeechError`. The client is websockets' sync
API on a thread per transcription, so ``feed`` never blocks the call's event loop.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from channels.speech.audio import recognition_rate, resample
from channels.speech.base import SpeechError, Transcription
from channels.speech.nls_token import TOKEN_INVALID, NlsTokens, TokenRejected

TRANSCRIBER, SYNTHESIZER = "SpeechTranscriber", "SpeechSynthesizer"
MAX_TTS_CHARS = 300  # SpeechSynthesizer's limit for one task; longer text goes in several tasks


def _command(namespace: str, name: str, task_id: str, appkey: str, payload: dict[str, Any] | None = None) -> str:
    header = {"message_id": uuid.uuid4().hex, "task_id": task_id, "namespace": namespace, "name": name,
              "appkey": appkey}
    return json.dumps({"header": header, "payload": payload} if payload is not None else {"header": header},
                      ensure_ascii=False)


def _event(frame: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(name, header, payload) of a JSON frame from NLS; a ``TaskFailed`` raises."""
    try:
        message = json.loads(frame)
        header, payload = dict(message["header"]), dict(message.get("payload") or {})
    except (ValueError, KeyError, TypeError):
        raise SpeechError("NLS sent a frame that is not a protocol message") from None
    name = str(header.get("name", ""))
    if name == "TaskFailed":
        status, text = header.get("status"), str(header.get("status_text", ""))
        if status == TOKEN_INVALID:
            raise TokenRejected(f"NLS rejected the token: {text}")
        raise SpeechError(f"NLS task failed: {status} {text}")
    return name, header, payload


class _NlsSocket:
    def __init__(self, tokens: NlsTokens, *, url: str, appkey: str, timeout_s: float = 10.0) -> None:
        self._tokens, self._url, self._appkey, self._timeout = tokens, url, appkey, timeout_s

    def _connect(self, token: str) -> ClientConnection:
        try:
            return connect(self._url, additional_headers={"X-NLS-Token": token}, open_timeout=min(self._timeout, 5.0),
                           close_timeout=1.0, max_size=2**22, compression=None)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise TokenRejected(f"NLS refused the WebSocket handshake: HTTP {status}") from None
            raise SpeechError(f"NLS refused the WebSocket handshake: HTTP {status}") from None
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise SpeechError(f"NLS unreachable: {type(exc).__name__}") from None

    def _receive(self, ws: ClientConnection, timeout: float | None = None) -> str | bytes:
        try:
            return ws.recv(timeout=self._timeout if timeout is None else timeout)
        except TimeoutError:
            if timeout == 0:
                raise
            raise SpeechError(f"NLS sent nothing for {self._timeout:.0f} s") from None
        except WebSocketException as exc:
            raise SpeechError(f"NLS closed the connection: {type(exc).__name__}") from None

    def _send(self, ws: ClientConnection, frame: str | bytes) -> None:
        try:
            ws.send(frame)
        except WebSocketException as exc:
            raise SpeechError(f"NLS closed the connection: {type(exc).__name__}") from None


class NlsRealtimeRecognizer(_NlsSocket):
    """SpeechTranscriber at ``sample_rate`` (the appkey's model's), or at the audio's own rate when None."""

    def __init__(self, tokens: NlsTokens, *, url: str, appkey: str, sample_rate: int | None = None,
                 timeout_s: float = 10.0) -> None:
        super().__init__(tokens, url=url, appkey=appkey, timeout_s=timeout_s)
        self.sample_rate = sample_rate

    def begin(self, sample_rate: int) -> NlsTranscription:
        """Recognize while the caller is still speaking: ``feed`` frames as they come, ``finish()`` at the end."""
        return NlsTranscription(self, sample_rate)

    def transcribe(self, pcm: bytes, sample_rate: int) -> str:
        transcription = self.begin(sample_rate)
        transcription.feed(pcm)
        return transcription.finish()


class NlsTranscription(Transcription):
    """One utterance streamed to SpeechTranscriber as the audio arrives."""

    def __init__(self, recognizer: NlsRealtimeRecognizer, sample_rate: int) -> None:
        self._nls = recognizer
        self._rate = recognition_rate(sample_rate, recognizer.sample_rate)  # what NLS is sent
        self._sent: list[bytes] = []  # audio already sent: replayed on a new connection after a refresh
        self._sentences: dict[int, str] = {}
        super().__init__(sample_rate)

    def _recognize(self) -> str:
        self._nls._tokens.use(self._session)
        return "".join(text for _, text in sorted(self._sentences.items()))

    def _session(self, token: str) -> None:
        nls, task_id = self._nls, uuid.uuid4().hex
        self._sentences.clear()
        with nls._connect(token) as ws:
            nls._send(ws, _command(TRANSCRIBER, "StartTranscription", task_id, nls._appkey, {
                "format": "pcm", "sample_rate": self._rate, "enable_intermediate_result": False,
                "enable_punctuation_prediction": True, "enable_inverse_text_normalization": True}))
            self._until(ws, "TranscriptionStarted")
            for audio in self._sent:
                nls._send(ws, audio)
            while (pcm := self._next_frame()) is not None:
                audio = resample(pcm, self.sample_rate, self._rate)
                self._sent.append(audio)
                nls._send(ws, audio)
                self._drain(ws)  # a TaskFailed mid-utterance surfaces now, not at the end
            nls._send(ws, _command(TRANSCRIBER, "StopTranscription", task_id, nls._appkey))
            self._until(ws, "TranscriptionCompleted")

    def _drain(self, ws: ClientConnection) -> None:
        while True:
            try:
                frame = self._nls._receive(ws, timeout=0)
            except TimeoutError:
                return
            self._handle(frame)

    def _until(self, ws: ClientConnection, wanted: str) -> None:
        while self._handle(self._nls._receive(ws)) != wanted:
            pass

    def _handle(self, frame: str | bytes) -> str:
        if isinstance(frame, bytes):
            return ""
        name, _, payload = _event(frame)
        if name == "SentenceEnd":
            self._sentences[int(payload.get("index", len(self._sentences) + 1))] = str(payload.get("result") or "")
        return name


class NlsRealtimeSynthesizer(_NlsSocket):
    def __init__(self, tokens: NlsTokens, *, url: str, appkey: str, voice: str = "xiaoyun",
                 timeout_s: float = 10.0) -> None:
        super().__init__(tokens, url=url, appkey=appkey, timeout_s=timeout_s)
        self._voice = voice

    def synthesize(self, text: str, sample_rate: int) -> bytes:
        return b"".join(self.synthesize_stream(text, sample_rate))

    def synthesize_stream(self, text: str, sample_rate: int) -> Iterator[bytes]:
        """16-bit PCM at ``sample_rate`` in chunks of whole samples, each as soon as NLS sends it."""
        text = text.strip()
        for piece in (text[i:i + MAX_TTS_CHARS] for i in range(0, len(text), MAX_TTS_CHARS)):
            yield from self._task(piece, sample_rate)

    def _task(self, text: str, sample_rate: int) -> Iterator[bytes]:
        """One SpeechSynthesizer task; a rejected token is refreshed and the task repeated only while no audio
        has been handed out (a repeat would say the start of the sentence twice)."""
        token, yielded = self._tokens.get(), False
        for attempt in (1, 2):
            try:
                for chunk in self._frames(token, text, sample_rate):
                    yielded = True
                    yield chunk
                return
            except TokenRejected as exc:
                if yielded:
                    raise SpeechError(f"NLS rejected the token in the middle of a sentence: {exc}") from None
                if attempt == 2:
                    raise SpeechError(f"NLS rejected a freshly issued token: {exc}") from None
            token = self._tokens.refresh(stale=token)

    def _frames(self, token: str, text: str, sample_rate: int) -> Iterator[bytes]:
        odd = b""  # a frame that ends inside a sample: its last byte waits for the next frame
        with self._connect(token) as ws:
            self._send(ws, _command(SYNTHESIZER, "StartSynthesis", uuid.uuid4().hex, self._appkey, {
                "text": text, "format": "pcm", "sample_rate": sample_rate, "voice": self._voice,
                "volume": 50, "speech_rate": 0, "pitch_rate": 0}))
            while True:
                frame = self._receive(ws)
                if isinstance(frame, bytes):
                    audio = odd + frame
                    whole = len(audio) - len(audio) % 2
                    odd = audio[whole:]
                    if whole:
                        yield audio[:whole]
                elif _event(frame)[0] == "SynthesisCompleted":
                    return
