"""Voice messages the platform did not transcribe: download, decode and recognize them in the worker.

WeChat (official account, WeCom app, WeChat Customer Service) leaves a voice message's audio on
the platform for three days under a media id. The callback only stores that id (it must answer
within 5 seconds); :func:`transcribe` runs in ``handle_inbound``, under the conversation's lock and
before the dialogue rules, so a voice message keeps its place in the conversation: later messages
wait for it like for any earlier message.

Steps: ``media/get`` through the channel's own API client and access token
(:meth:`channels.wechat_api.PlatformAPI.media`) → :func:`channels.speech.voice_file.decode` (AMR,
SILK or Ogg to PCM, out of process) → the configured recognizer
(:class:`channels.speech.providers.SpeechProviders`, one per worker process).

Guarantees:

- the transcription becomes the inbound's text in one conditional UPDATE (only while the text is
  still empty), with the rules' intent (models.intents) and a ``transcribed`` audit row holding format,
  duration, character count, intent and timings — never the text;
- a transient download failure (timeout, 5xx, errcode -1/45009, a token being refreshed) raises
  :class:`TryAgain` with a backoff, counted by ``transcription_retry`` audit rows, so it survives a
  worker restart; after ``voice_download_retries`` of them it is given up as unclear;
- everything else that leaves no text — an expired or unknown media id (40007), a file too large,
  audio that does not decode, a recognizer that is down or hears nothing — raises :class:`Unclear`
  with a ``transcription_failed`` audit row; the caller answers with ``voice_unclear_reply``.
  Nothing is lost: the message is answered either way.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, NoReturn

from sqlalchemy import func, select, update

from channels.base import DeliveryPermanent
from channels.speech.voice_file import DecoderUnavailable, VoiceFileError, decode
from channels.wechat_api import AppCredentials
from models import audit, intents, privacy
from models.envelope import ConversationKey, printable
from models.errors import Permanent, Retryable
from models.infra.db import transaction
from models.tables import AuditEvent, InboundRecord

if TYPE_CHECKING:
    from workers.runtime import Runtime

log = logging.getLogger(__name__)

UNRECOGNIZED = "[voice]"  # the text kept for a voice message nothing could be made of
MAX_BACKOFF_S = 30


class Unclear(Exception):
    """No text could be had from the voice message; ``reason`` says why (for the audit log)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TryAgain(Exception):
    """Downloading the voice failed transiently; run the task again after ``countdown`` seconds."""

    def __init__(self, reason: str, countdown: float) -> None:
        super().__init__(reason)
        self.countdown = countdown


def pending(row: InboundRecord) -> bool:
    """True for a voice message still waiting for its transcription."""
    return row.media_id is not None and row.text == ""


def media_credentials(rt: Runtime, key: ConversationKey) -> AppCredentials | None:
    """The app whose ``media/get`` serves this conversation's files (None: the account is gone, or the channel
    has no voice files)."""
    media_app = rt.channel(key.channel).media_app
    return media_app(rt.settings, key.account) if media_app is not None else None


def transcribe(rt: Runtime, row: InboundRecord, key: ConversationKey) -> InboundRecord:
    """The inbound row with its transcription stored as its text. Raises TryAgain or Unclear."""
    assert row.media_id is not None
    s = rt.settings
    ids: dict[str, Any] = {"channel": key.channel, "conversation_id": row.conversation_id, "inbound_id": row.id}
    started = time.monotonic()
    try:
        app = media_credentials(rt, key)
        if app is None:
            raise DeliveryPermanent(f"{key.channel} account {key.account!r} is no longer configured")
        media = rt.platform.media(app, row.media_id, max_bytes=s.voice_max_bytes)
    except Retryable as exc:
        attempt = _retries(rt, row.id) + 1
        if attempt > s.voice_download_retries:
            _failed(rt, ids, f"download failed {attempt} times: {exc}")
        with transaction(rt.sessions) as session:
            audit.record(session, audit.TRANSCRIPTION_RETRY, **ids, attempt=attempt, reason=str(exc)[:200])
        raise TryAgain(str(exc), min(2 ** (attempt - 1), MAX_BACKOFF_S)) from exc
    except Permanent as exc:  # 40007: expired or unknown media id; too large; account removed
        _failed(rt, ids, f"download: {exc}")
    downloaded = time.monotonic()
    try:
        voice = decode(media.content, max_seconds=s.voice_max_seconds, timeout_s=s.voice_decode_timeout_s)
    except DecoderUnavailable as exc:
        log.error("voice message %s not decoded: %s", row.id, exc)  # the operator has to install or fix it
        _failed(rt, ids, f"decoder: {exc}", media_bytes=len(media.content))
    except VoiceFileError as exc:
        _failed(rt, ids, f"undecodable: {exc}", media_bytes=len(media.content))
    decoded = time.monotonic()
    try:
        recognizer = rt.speech.recognizer()
        heard = printable(recognizer.transcribe(voice.pcm, voice.sample_rate)).strip()
        text = heard[: s.max_text_chars]
    except Exception as exc:  # the recognizer down, a model that failed to load: the customer still gets an answer
        log.exception("recognizing voice message %s failed", row.id)
        _failed(rt, ids, f"recognizer: {type(exc).__name__}: {exc}"[:500], format=voice.format,
                duration_ms=round(voice.duration_s * 1000))
    if not text:
        _failed(rt, ids, "nothing recognized", format=voice.format, duration_ms=round(voice.duration_s * 1000))
    intent = intents.label(s, text)  # the rules' intent, as the gateway gives a typed message (models.intents)
    with transaction(rt.sessions) as session:
        session.execute(update(InboundRecord).where(InboundRecord.id == row.id, InboundRecord.text == "")
                        .values(text=privacy.stored_text(s, text)[0], intent=intent))  # masked as at ingress
        audit.record(session, audit.TRANSCRIBED, **ids, format=voice.format, media_bytes=len(media.content),
                     duration_ms=round(voice.duration_s * 1000), chars=len(text), intent=intent,
                     download_ms=_ms(downloaded - started), decode_ms=_ms(decoded - downloaded),
                     recognize_ms=_ms(time.monotonic() - decoded))
        if len(heard) > len(text):  # cut like a typed text: the reply tells the customer (channels.truncation)
            audit.record(session, audit.TRUNCATED, **ids, chars=len(heard), kept=len(text))
    with rt.sessions() as session:
        fresh = session.get(InboundRecord, row.id)
        assert fresh is not None
        return fresh


def _failed(rt: Runtime, ids: dict[str, Any], reason: str, **detail: Any) -> NoReturn:
    with transaction(rt.sessions) as session:
        audit.record(session, audit.TRANSCRIPTION_FAILED, **ids, reason=reason[:500], **detail)
    raise Unclear(reason)


def _retries(rt: Runtime, inbound_id: int) -> int:
    with rt.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.inbound_id == inbound_id, AuditEvent.kind == audit.TRANSCRIPTION_RETRY)) or 0)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
