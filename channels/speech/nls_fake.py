"""A fake Aliyun NLS: the token service, the REST speech gateway and the real-time WebSocket gateway.

Kefu's own stand-in for Aliyun Intelligent Speech Interaction, beside the clients it fakes
(``nls_token.py``, ``nls_rest.py``, ``nls_realtime.py``): the tests run against it, and an operator
can try ``KEFU_SPEECH_PROVIDER=nls`` without an Aliyun account (``kefu fake nls``). Each server is
real (HTTP or WebSocket on 127.0.0.1 and a free port unless told otherwise) and speaks the real
protocol; it "recognizes" a fixed text and "speaks" a tone.

- :class:`FakeNlsMeta`: the nls-meta POP RPC ``CreateToken`` action, signature checked. Requests are
  signed with HMAC-SHA1 over the canonicalized query (``POST&%2F&…``, key = AccessKeySecret + "&");
  a wrong key id or signature gets the real error shapes (HTTP 404 ``InvalidAccessKeyId.NotFound``,
  HTTP 400 ``SignatureDoesNotMatch``). Tokens live ``token_ttl`` seconds; :meth:`FakeNlsMeta.fail_next`
  injects errors.
- :class:`FakeNlsGateway`: the REST gateway (``/stream/v1/asr``, ``/stream/v1/tts``).
- :class:`FakeNlsRealtime`: the WebSocket gateway (``/ws/v1``): SpeechTranscriber, SpeechSynthesizer.

Each passes a one-line account of every request it served to ``on_heard`` (``kefu fake nls`` prints
them). Nothing is raised into a client: every failure is the platform's own error answer.

What the recognition fakes check about audio, and where it comes from:

- An appkey's project is bound to one recognition model in the NLS console, built for 8 kHz (telephone)
  or 16 kHz (general) audio; recognition accepts 8,000 and 16,000 Hz only ("Speech recognition supports
  sample rates of 16,000 Hz and 8,000 Hz. Telephone audio typically uses 8,000 Hz ... Do not convert
  8,000 Hz audio to 16,000 Hz. Instead, select a model that supports an 8,000 Hz sample rate for the
  project", help.aliyun.com/en/isi/getting-started/concepts; the real-time and REST API references list
  the same two rates). ``model_rate`` is that binding.
- A request whose ``sample_rate`` is not the model's is refused with status 41010101
  ``UNSUPPORTED_SAMPLE_RATE``: the entry for real-time and one-sentence recognition in Aliyun's
  error-code table (help.aliyun.com/document_detail/459864.html) as we recall it; our search tools only
  returned that page's beginning, so it is corroborated by a third-party NLS-compatible server's code
  table (41010101 → UNSUPPORTED_SAMPLE_RATE) and by the file recognition service's sibling, 41050008
  ``UNSUPPORTED_SAMPLE_RATE`` (developer.aliyun.com/ask/518646: "采样率不匹配"; a community FAQ adds
  "检查调用时设置的采样率和管控台上appkey绑定的ASR模型采样率是否一致"). The exact ``status_text`` wording and
  the REST answer's HTTP status (400 here) are our assumption.
- Audio frames: whole 16-bit samples (an odd byte count is refused, 40000002 — the fake's rule). No
  NLS page we could read gives a frame size: the Python SDK's ``send_audio`` (alibabacloud-nls-python-sdk,
  ``nls/speech_transcriber.py``) says "audio size prefer 20ms length", and a sibling Aliyun WebSocket
  API (Model Studio's multimodal interaction protocol) recommends 3,200 bytes per 100 ms at 16 kHz,
  which at 8 kHz would be 1,600 bytes (our arithmetic). Kefu sends each 20 ms call frame as it comes
  (320 bytes at 8 kHz); the fake accepts any whole-sample frame.
- Synthesis (``StartSynthesis``, REST ``/tts``): the fake accepts 8,000, 16,000 or 24,000 Hz pcm; the
  real-time fake sends its first audio after ``first_audio_ms``, then 100 ms frames at ``speed`` × real
  time, then ``SynthesisCompleted``, as NLS streams a sentence while it is still synthesizing it. The
  REST fake answers the whole body at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import parse_qsl, quote, urlsplit

import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import serve

from channels.fake_http import Answer, LoopbackFake, Request

Listener = Callable[[str], None]
UNSUPPORTED_SAMPLE_RATE = 41010101  # NLS: the request's sample rate is not the appkey's model's (see above)


def unsupported_rate(rate: object, model_rate: int) -> str:
    return (f"UNSUPPORTED_SAMPLE_RATE:sample_rate {rate} does not match this appkey's {model_rate} Hz model "
            "(8000 or 16000, chosen in the NLS console)")


def _encode(value: str) -> str:
    return quote(value, safe="-_.~")


def pop_signature(method: str, params: dict[str, str], secret: str) -> str:
    canonical = "&".join(f"{_encode(k)}={_encode(v)}" for k, v in sorted(params.items()))
    to_sign = f"{method}&{_encode('/')}&{_encode(canonical)}"
    digest = hmac.new(f"{secret}&".encode(), to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


class _Fake:
    on_heard: Listener | None = None

    def _heard(self, line: str) -> None:
        if self.on_heard is not None:
            self.on_heard(line)


class _HttpFake(_Fake):
    """One NLS HTTP service on a :class:`~channels.fake_http.FakeHTTPServer`: :meth:`respond` answers each request.

    One request per connection, so a client that never closes its connection pool leaves nothing open.
    """

    def __init__(self, host: str, port: int, on_heard: Listener | None) -> None:
        self.on_heard = on_heard
        self._loopback = LoopbackFake(self.respond, host=host, port=port, name=type(self).__name__, keep_alive=False)

    @property
    def port(self) -> int:
        return self._loopback.port

    def respond(self, request: Request) -> Answer:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._loopback.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._loopback.stop()


class FakeNlsMeta(_HttpFake):
    def __init__(self, access_key_id: str, access_key_secret: str, token_ttl: float = 24 * 3600, *,
                 host: str = "127.0.0.1", port: int = 0, on_heard: Listener | None = None) -> None:
        self.key_id, self.secret, self.token_ttl = access_key_id, access_key_secret, token_ttl
        self.issued: list[str] = []
        self._failures: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        super().__init__(host, port, on_heard)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def respond(self, request: Request) -> Answer:
        params = dict(request.query)
        params.update(dict(parse_qsl(request.body.decode(), keep_blank_values=True)))
        status, answer = self._answer(params)
        self._heard(f"nls-meta {params.get('Action')}: {answer.get('Code') or answer.get('Token', {}).get('Id')}")
        return Answer.json(status, answer)

    def fail_next(self, status: int, code: str) -> None:
        with self._lock:
            self._failures.append((status, code))

    def _answer(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        request_id = f"req-{len(self.issued) + 1}"
        with self._lock:
            if self._failures:
                status, code = self._failures.pop(0)
                return status, {"Code": code, "Message": "injected", "RequestId": request_id}
        if params.get("Action") != "CreateToken" or params.get("Version") != "2019-02-28":
            return 400, {"Code": "InvalidAction.NotFound", "Message": "unknown action", "RequestId": request_id}
        if params.get("AccessKeyId") != self.key_id:
            return 404, {"Code": "InvalidAccessKeyId.NotFound", "Message": "Specified access key is not found.",
                         "RequestId": request_id}
        signature = params.pop("Signature", "")
        if not hmac.compare_digest(signature, pop_signature("POST", params, self.secret)):
            canonical = "&".join(f"{_encode(k)}={_encode(v)}" for k, v in sorted(params.items()))
            to_sign = f"POST&{_encode('/')}&{_encode(canonical)}"
            message = f"Specified signature does not match our calculation. server string to sign is:{to_sign}"
            return 400, {"Code": "SignatureDoesNotMatch", "RequestId": request_id, "Message": message}
        token = f"nls-token-{len(self.issued) + 1:04d}"
        with self._lock:
            self.issued.append(token)
        return 200, {"Token": {"Id": token, "ExpireTime": int(time.time() + self.token_ttl), "UserId": "1"},
                     "RequestId": request_id, "NlsRequestId": request_id}


class FakeNlsGateway(_HttpFake):
    """The REST speech gateway: ``/stream/v1/asr`` and ``/stream/v1/tts``, tokens checked against ``meta``.

    Recognition answers ``recognized`` (what a real engine would hear) when the body is whole PCM at
    ``model_rate``, the appkey's model's rate (another rate: 41010101 UNSUPPORTED_SAMPLE_RATE);
    :attr:`rates` and :attr:`audio_bytes` record each recognition's rate and body length. Synthesis
    answers 150 ms of a 16-bit tone per character at the requested rate. ``down`` makes every request a
    503; :meth:`revoke_tokens` makes issued tokens answer 40000001.
    """

    def __init__(self, meta: FakeNlsMeta, appkey: str, recognized: str = "我要转人工", *, model_rate: int = 16000,
                 host: str = "127.0.0.1", port: int = 0, on_heard: Listener | None = None) -> None:
        self.meta, self.appkey, self.recognized, self.model_rate = meta, appkey, recognized, model_rate
        self.down = False
        self.revoked: set[str] = set()
        self.requests: list[str] = []
        self.rates: list[int] = []  # the sample_rate of each recognition request
        self.audio_bytes: list[int] = []  # the audio length of each recognition that was accepted
        super().__init__(host, port, on_heard)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def respond(self, request: Request) -> Answer:
        answer = self._answer(request.path, request.query, request.headers, request.body)
        self._heard(f"nls-gateway {request.path}: {len(request.body)} bytes in, HTTP {answer.status}, "
                    f"{len(answer.body)} bytes out ({answer.content_type})")
        return answer

    def revoke_tokens(self) -> None:
        self.revoked.update(self.meta.issued)

    def _error(self, status: int, code: int, message: str) -> Answer:
        return Answer.json(status, {"task_id": "t", "status": code, "message": message})

    def _answer(self, path: str, query: dict[str, str], headers: dict[str, str], body: bytes) -> Answer:
        self.requests.append(path)
        if self.down:
            return Answer(503, b"<html>503 Service Unavailable</html>", "text/html")
        if path == "/stream/v1/asr":
            token = headers.get("x-nls-token", "")
            appkey, rate = query.get("appkey"), query.get("sample_rate", "16000")  # NLS defaults to 16000
        elif path == "/stream/v1/tts":
            request = json.loads(body or b"{}")
            token, appkey, rate = request.get("token", ""), request.get("appkey"), str(request.get("sample_rate"))
        else:
            return Answer(404, b"not found", "text/plain")
        if token not in self.meta.issued or token in self.revoked:
            return self._error(403, 40000001, "The token is invalid!")
        if appkey != self.appkey:
            return self._error(400, 40000003, "The appkey is invalid!")
        if path == "/stream/v1/asr":
            self.rates.append(int(rate) if (rate or "").isdigit() else 0)
            if rate != str(self.model_rate):
                return self._error(400, UNSUPPORTED_SAMPLE_RATE, unsupported_rate(rate, self.model_rate))
            if len(body) % 2:
                return self._error(400, 40000002, "Invalid audio")
            self.audio_bytes.append(len(body))
            return Answer.json(200, {"task_id": "t", "result": self.recognized, "status": 20000000, "message": "SUCCESS"})
        text = str(request.get("text", ""))
        return Answer(200, tone(int(rate or 0), 150 * max(1, len(text))), "audio/pcm")


def tone(sample_rate: int, ms: int) -> bytes:
    """A 300 Hz 16-bit tone: what the fakes 'speak'."""
    positions = np.arange(sample_rate * ms // 1000)  # numpy: twenty calls' answers at once stay cheap
    return (6000 * np.sin(2 * np.pi * 300 * positions / sample_rate)).astype("<i2").tobytes()


class FakeNlsRealtime(_Fake):
    """The real-time WebSocket gateway (``/ws/v1``): SpeechTranscriber and SpeechSynthesizer.

    Real message shapes: commands need 32-hex ``message_id``/``task_id``, the namespace, the name and
    the appkey; answers carry ``status`` 20000000 and ``status_text``; every failure is a
    ``TaskFailed`` frame (40000001 bad token, 40000003 wrong appkey, 40000002 bad parameters such as a
    sample rate other than 16 kHz for recognition, 40000000 for :meth:`fail_next`). Recognition sends
    ``SentenceBegin`` on the first audio, a ``TranscriptionResultChanged`` per 200 ms when
    intermediate results were asked for, and one ``SentenceEnd`` with ``recognized`` at
    ``StopTranscription``. Recognition needs ``sample_rate`` = ``model_rate`` (the appkey's model's:
    8000 telephone or 16000 general); any other is a TaskFailed 41010101 UNSUPPORTED_SAMPLE_RATE.
    Synthesis streams 150 ms of tone per character in 100 ms frames, the first after ``first_audio_ms``
    and the rest at ``speed`` × real time. ``down`` refuses the handshake with HTTP 503;
    :attr:`audio_bytes` records each recognition task's audio length and :attr:`rates` its sample rate
    (8 kHz: 16,000 bytes a second; 16 kHz: 32,000).
    """

    def __init__(self, meta: FakeNlsMeta, appkey: str, recognized: str = "我要转人工", *, model_rate: int = 16000,
                 first_audio_ms: float = 60, speed: float = 4.0, host: str = "127.0.0.1", port: int = 0,
                 on_heard: Listener | None = None) -> None:
        self.meta, self.appkey, self.recognized, self.on_heard = meta, appkey, recognized, on_heard
        self.model_rate, self.first_audio_ms, self.speed = model_rate, first_audio_ms, speed
        self.down = False
        self.revoked: set[str] = set()
        self.tasks: list[str] = []  # "SpeechTranscriber" / "SpeechSynthesizer", one per started task
        self.audio_bytes: list[int] = []
        self.rates: list[int] = []  # the sample_rate of each recognition task that started
        self._failures: list[str] = []
        self._lock = threading.Lock()
        self._server = serve(self._session, host, port, process_request=self._handshake, compression=None)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.socket.getsockname()[1])

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/v1"

    def __enter__(self) -> FakeNlsRealtime:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()

    def revoke_tokens(self) -> None:
        self.revoked.update(self.meta.issued)

    def fail_next(self, name: str) -> None:
        """The next command called ``name`` (e.g. "StartSynthesis", "StopTranscription") gets a TaskFailed."""
        with self._lock:
            self._failures.append(name)

    def _handshake(self, connection: Any, request: Any) -> Any:
        if self.down:
            return connection.respond(503, "Service Unavailable\n")
        if urlsplit(request.path).path != "/ws/v1":
            return connection.respond(404, "Not Found\n")
        return None

    @staticmethod
    def _answer(namespace: str, name: str, task_id: str, payload: dict[str, Any] | None = None,
                status: int = 20000000, text: str = "Gateway:SUCCESS:Success.") -> str:
        header = {"namespace": namespace, "name": name, "status": status, "message_id": uuid4_hex(),
                  "task_id": task_id, "status_text": text}
        return json.dumps({"header": header, "payload": payload or {}}, ensure_ascii=False)

    def _failed(self, task_id: str, status: int, text: str) -> str:
        self._heard(f"nls-realtime TaskFailed {status}: {text}")
        return self._answer("Default", "TaskFailed", task_id, status=status, text=text)

    def _session(self, ws: Any) -> None:
        token = ws.request.headers.get("X-NLS-Token") or dict(parse_qsl(urlsplit(ws.request.path).query)).get("token")
        task = _RealtimeTask()
        try:
            for frame in ws:
                if isinstance(frame, bytes):
                    replies, done = self._on_audio(task, frame)
                else:
                    replies, done = self._on_command(task, token, json.loads(frame))
                for reply in replies:
                    if isinstance(reply, _Pause):
                        time.sleep(reply.seconds)
                    else:
                        ws.send(reply)
                if done:
                    return
        except ConnectionClosed:
            return

    def _on_audio(self, task: _RealtimeTask, frame: bytes) -> tuple[list[str | bytes | _Pause], bool]:
        if task.namespace != "SpeechTranscriber" or not task.started:
            return [self._failed(task.task_id, 40000002, "Gateway:CLIENT_ERROR:audio before start")], True
        if len(frame) % 2:
            return [self._failed(task.task_id, 40000002, "Gateway:CLIENT_ERROR:odd number of PCM bytes")], True
        before, task.audio = task.audio, task.audio + len(frame)
        replies: list[str | bytes | _Pause] = []
        if before == 0:
            replies.append(self._answer(task.namespace, "SentenceBegin", task.task_id, {"index": 1, "time": 0}))
        per_200ms = task.bytes_per_second // 5
        if task.intermediate and task.audio // per_200ms > before // per_200ms:
            partial = self.recognized[: max(1, len(self.recognized) * task.audio // (2 * task.bytes_per_second))]
            replies.append(self._answer(task.namespace, "TranscriptionResultChanged", task.task_id,
                                        {"index": 1, "time": task.audio * 1000 // task.bytes_per_second,
                                         "result": partial}))
        return replies, False

    def _refusal(self, header: dict[str, Any], token: str | None) -> str | None:
        """The TaskFailed frame for a command the real gateway would refuse (ids, token, appkey, an injected failure)."""
        if not all(re.fullmatch(r"[0-9a-f]{32}", str(header.get(k, ""))) for k in ("message_id", "task_id")):
            return self._failed(str(header.get("task_id", "")), 40000002,
                                "Gateway:CLIENT_ERROR:message_id and task_id must be 32 hex characters")
        if token not in self.meta.issued or token in self.revoked:
            return self._failed(header["task_id"], 40000001, f"Gateway:ACCESS_DENIED:The token '{token}' is invalid!")
        if header.get("appkey") != self.appkey:
            return self._failed(header["task_id"], 40000003, "Gateway:ACCESS_DENIED:The appkey is invalid!")
        with self._lock:
            injected = str(header.get("name", "")) in self._failures
            if injected:
                self._failures.remove(str(header.get("name", "")))
        if injected:
            return self._failed(header["task_id"], 40000000, "Gateway:SERVER_ERROR:injected failure")
        return None

    def _on_command(self, task: _RealtimeTask, token: str | None, message: dict[str, Any]
                    ) -> tuple[list[str | bytes | _Pause], bool]:
        header, payload = message.get("header", {}), message.get("payload") or {}
        refused = self._refusal(header, token)
        if refused is not None:
            return [refused], True
        name, namespace = str(header.get("name", "")), header.get("namespace")
        if name == "StartTranscription" and namespace == "SpeechTranscriber" and not task.started:
            return self._start_transcription(task, header, payload)
        if name == "StopTranscription" and task.started and header["task_id"] == task.task_id:
            return self._stop_transcription(task), True
        if name == "StartSynthesis" and namespace == "SpeechSynthesizer":
            return self._synthesize(header["task_id"], payload), True
        return [self._failed(header["task_id"], 40000002, f"Gateway:CLIENT_ERROR:unexpected {name}")], True

    def _start_transcription(self, task: _RealtimeTask, header: dict[str, Any], payload: dict[str, Any]
                             ) -> tuple[list[str | bytes | _Pause], bool]:
        task.task_id, task.namespace = header["task_id"], "SpeechTranscriber"
        if payload.get("format") != "pcm":
            return [self._failed(task.task_id, 40000002, "Gateway:CLIENT_ERROR:this fake hears pcm only")], True
        rate = payload.get("sample_rate", 16000)  # NLS's default when none is given
        if rate != self.model_rate:
            return [self._failed(task.task_id, UNSUPPORTED_SAMPLE_RATE, unsupported_rate(rate, self.model_rate))], True
        task.started, task.intermediate = True, bool(payload.get("enable_intermediate_result"))
        task.bytes_per_second = 2 * self.model_rate
        self.tasks.append(task.namespace)
        self.rates.append(self.model_rate)
        return [self._answer(task.namespace, "TranscriptionStarted", task.task_id, {"session_id": uuid4_hex()})], False

    def _stop_transcription(self, task: _RealtimeTask) -> list[str | bytes | _Pause]:
        self.audio_bytes.append(task.audio)
        self._heard(f"nls-realtime SpeechTranscriber: {task.audio} bytes of {self.model_rate // 1000} kHz audio, "
                    f"heard {self.recognized!r}")
        replies: list[str | bytes | _Pause] = []
        if task.audio:
            replies.append(self._answer(task.namespace, "SentenceEnd", task.task_id, {
                "index": 1, "time": task.audio * 1000 // task.bytes_per_second, "begin_time": 0,
                "result": self.recognized, "confidence": 0.9}))
        replies.append(self._answer(task.namespace, "TranscriptionCompleted", task.task_id))
        return replies

    def _synthesize(self, task_id: str, payload: dict[str, Any]) -> list[str | bytes | _Pause]:
        text = str(payload.get("text", ""))
        sample_rate = int(payload.get("sample_rate", 16000))
        if not text or sample_rate not in (8000, 16000, 24000) or payload.get("format") != "pcm":
            return [self._failed(task_id, 40000002, "Gateway:CLIENT_ERROR:bad text, format or sample_rate")]
        self.tasks.append("SpeechSynthesizer")
        self._heard(f"nls-realtime SpeechSynthesizer: {len(text)} characters, {150 * len(text)} ms of tone")
        audio_out = tone(sample_rate, 150 * len(text))
        step = sample_rate * 2 // 10  # 100 ms frames
        replies: list[str | bytes | _Pause] = [_Pause(self.first_audio_ms / 1000)]
        for i in range(0, len(audio_out), step):
            if i:
                replies.append(_Pause(0.1 / self.speed))
            replies.append(audio_out[i:i + step])
        replies.append(self._answer("SpeechSynthesizer", "SynthesisCompleted", task_id))
        return replies


@dataclass(frozen=True)
class _Pause:
    """In a list of replies: wait this long before sending the next (the fake's pacing of synthesis)."""

    seconds: float


@dataclass
class _RealtimeTask:
    """What one real-time connection's task has been told so far."""

    task_id: str = ""
    namespace: str = ""
    audio: int = 0  # PCM bytes received
    bytes_per_second: int = 32000  # at the task's sample rate
    started: bool = False
    intermediate: bool = False


def uuid4_hex() -> str:
    return uuid.uuid4().hex
