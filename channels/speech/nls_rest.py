"""Aliyun NLS over its REST gateway: one-sentence recognition and speech synthesis (the simpler mode).

- Recognition: ``POST {gateway}/stream/v1/asr?appkey=…&format=pcm&sample_rate=…`` with the raw PCM
  and ``X-NLS-Token``; the answer is JSON with ``status`` 20000000 and ``result``. The rate must be the
  appkey's model's (8000 or 16000): ``sample_rate`` when given, else the audio's own
  (:func:`~channels.speech.audio.recognition_rate`).
- Synthesis: ``POST {gateway}/stream/v1/tts`` with a JSON request (appkey, token, text, format
  ``pcm``, sample_rate, voice); the answer is the audio, or JSON with an error ``status``.
  :meth:`NlsRestSynthesizer.synthesize_stream` reads the body as it arrives and yields it in chunks.

A token the gateway rejects (status 40000001) is refreshed once (:meth:`~channels.speech.nls_token.NlsTokens.use`)
and the request repeated; any other failure raises :class:`~channels.speech.base.SpeechError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx

from channels.speech.audio import recognition_rate, resample
from channels.speech.base import SpeechError
from channels.speech.nls_token import TOKEN_INVALID, NlsTokens, TokenRejected
from channels.wechat_api import make_http

SUCCESS = 20000000


class _NlsRest:
    def __init__(self, tokens: NlsTokens, *, gateway: str, appkey: str, timeout_s: float = 10.0) -> None:
        self._tokens, self._gateway, self._appkey = tokens, gateway.rstrip("/"), appkey
        self._http = make_http(timeout_s)

    def _with_token(self, call: Callable[[str], httpx.Response]) -> httpx.Response:
        return self._tokens.use(lambda token: self._checked(call, token))

    def _checked(self, call: Callable[[str], httpx.Response], token: str) -> httpx.Response:
        try:
            response = call(token)
        except httpx.HTTPError as exc:
            raise SpeechError(f"NLS unreachable: {type(exc).__name__}") from None
        if response.headers.get("content-type", "").startswith("application/json"):
            if _json(response).get("status") == TOKEN_INVALID:
                raise TokenRejected("NLS rejected the token")
        if response.status_code >= 500:
            raise SpeechError(f"NLS answered HTTP {response.status_code}")
        return response

    def close(self) -> None:
        self._http.close()


class NlsRestRecognizer(_NlsRest):
    """One-sentence recognition at ``sample_rate`` (the appkey's model's), or at the audio's own rate when None."""

    def __init__(self, tokens: NlsTokens, *, gateway: str, appkey: str, sample_rate: int | None = None,
                 timeout_s: float = 10.0) -> None:
        super().__init__(tokens, gateway=gateway, appkey=appkey, timeout_s=timeout_s)
        self.sample_rate = sample_rate

    def transcribe(self, pcm: bytes, sample_rate: int) -> str:
        rate = recognition_rate(sample_rate, self.sample_rate)
        audio = resample(pcm, sample_rate, rate)
        response = self._with_token(lambda token: self._http.post(
            f"{self._gateway}/stream/v1/asr",
            params={"appkey": self._appkey, "format": "pcm", "sample_rate": rate},
            headers={"X-NLS-Token": token, "Content-Type": "application/octet-stream"}, content=audio))
        answer = _json(response)
        if answer.get("status") != SUCCESS:
            raise SpeechError(f"NLS recognition failed: {answer.get('status')} {answer.get('message', '')}")
        return str(answer.get("result") or "")


class NlsRestSynthesizer(_NlsRest):
    def __init__(self, tokens: NlsTokens, *, gateway: str, appkey: str, voice: str = "xiaoyun",
                 timeout_s: float = 10.0) -> None:
        super().__init__(tokens, gateway=gateway, appkey=appkey, timeout_s=timeout_s)
        self._voice = voice

    def synthesize(self, text: str, sample_rate: int) -> bytes:
        return b"".join(self.synthesize_stream(text, sample_rate))

    def synthesize_stream(self, text: str, sample_rate: int) -> Iterator[bytes]:
        """The answer's audio in chunks of whole samples as the body arrives. A rejected token is refreshed and
        the request repeated (that answer is JSON: no audio has been handed out yet)."""
        if not text.strip():
            return
        token = self._tokens.get()
        for attempt in (1, 2):
            try:
                yield from self._audio(token, text, sample_rate)
                return
            except TokenRejected as exc:
                if attempt == 2:
                    raise SpeechError(f"NLS rejected a freshly issued token: {exc}") from None
            token = self._tokens.refresh(stale=token)

    def _audio(self, token: str, text: str, sample_rate: int) -> Iterator[bytes]:
        request = {"appkey": self._appkey, "token": token, "text": text, "format": "pcm",
                   "sample_rate": sample_rate, "voice": self._voice}
        try:
            with self._http.stream("POST", f"{self._gateway}/stream/v1/tts", json=request) as response:
                if response.headers.get("content-type", "").startswith("application/json"):
                    response.read()
                    answer = _json(response)
                    if answer.get("status") == TOKEN_INVALID:
                        raise TokenRejected("NLS rejected the token")
                    raise SpeechError(f"NLS synthesis failed: {answer.get('status')} {answer.get('message', '')}")
                if response.status_code >= 400:
                    raise SpeechError(f"NLS answered HTTP {response.status_code}")
                odd = b""
                for chunk in response.iter_bytes():
                    audio = odd + chunk
                    whole = len(audio) - len(audio) % 2
                    odd = audio[whole:]
                    if whole:
                        yield audio[:whole]
        except httpx.HTTPError as exc:
            raise SpeechError(f"NLS unreachable: {type(exc).__name__}") from None


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        raise SpeechError(f"NLS answered HTTP {response.status_code} without JSON") from None
    return data if isinstance(data, dict) else {}
