"""The start-up check that a phone line greeting callers in Chinese can understand what they answer.

Out of the box (``KEFU_SPEECH_PROVIDER=local`` without ``KEFU_LOCAL_ASR_MODEL_DIR``) calls are recognized by
pocketsphinx, which knows English only: a Mandarin caller's 我要转人工 becomes English nonsense, is stored as
such, and nobody is transferred. So when the phone channel is in use (``KEFU_VOICE_GATEWAYS``,
``KEFU_HOTLINES``, or ``KEFU_AUDIOSOCKET_PORT`` with ``KEFU_AUDIOSOCKET_ALLOWED_IPS`` opened beyond this host)
and a hotline greets in Chinese (CJK characters in its greeting, or in ``KEFU_PHONE_GREETING`` for a hotline
without one, or when no hotline is configured), the recognizer must be one that can output Chinese:

* ``KEFU_SPEECH_PROVIDER=nls``: taken as able (the NLS project's language is chosen in the NLS console);
* a sherpa-onnx model (``KEFU_LOCAL_ASR_MODEL_DIR``): able when its ``tokens.txt`` holds Chinese characters
  (an English model's symbol table has none, so it could never write one; a byte-level BPE model, whose
  symbols are bytes, would be taken for unable: ``warn`` starts it);
* pocketsphinx: not able.

A hotline whose keypad menu is ``keys_only`` takes no speech, so it needs no recognizer.

:func:`check` raises :class:`~models.settings.ConfigError` saying how to fix it, or, with
``KEFU_PHONE_ASR_LANGUAGE_CHECK=warn``, logs the same text as an ERROR line and lets the gateway start.
Only the AudioSocket port, accepting this host alone (the compose file sets it for every gateway, used or not),
is logged as an ERROR but does not stop the gateway: a deployment without phones must not need a recognizer.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from channels.telephony.config import PhoneSettings
from models.settings import ConfigError, Settings

log = logging.getLogger(__name__)

# CJK Unified Ideographs (and extension A), the compatibility ideographs: what a Chinese greeting or symbol has
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def has_chinese(text: str) -> bool:
    return _HAN.search(text) is not None


_THIS_HOST = frozenset({"127.0.0.1", "::1", "localhost"})


def phone_in_use(phone: PhoneSettings) -> bool:
    """The operator set the phone up: a voice gateway may connect, hotlines are configured, or the AudioSocket
    listener accepts a PBX on another host."""
    opened = phone.audiosocket_port is not None and not set(phone.audiosocket_allowed_ips) <= _THIS_HOST
    return bool(phone.voice_gateways or phone.hotlines) or opened


def chinese_lines(phone: PhoneSettings) -> list[str]:
    """The lines that greet in Chinese and listen to the caller: hotline numbers, ``KEFU_PHONE_GREETING`` for the
    default (the greeting of a number not in ``KEFU_HOTLINES``, checked when none is configured)."""
    lines = [f"hotline {h.number or '(any number)'}" for h in phone.hotlines
             if not h.keypad().keys_only and has_chinese(h.greeting or phone.phone_greeting)]
    if not phone.hotlines and has_chinese(phone.phone_greeting):
        lines.append("KEFU_PHONE_GREETING")
    return lines


def deaf_to_chinese(settings: Settings) -> str | None:
    """Why the configured recognizer cannot understand Chinese; None when it can (or Kefu cannot tell)."""
    if settings.speech_provider == "nls":
        return None
    model_dir = settings.local_asr_model_dir
    if model_dir is None:
        return "the phone recognizes speech with pocketsphinx, which understands English only"
    if _symbols_have_chinese(model_dir / "tokens.txt"):
        return None
    return f"the sherpa-onnx model in KEFU_LOCAL_ASR_MODEL_DIR={model_dir} has no Chinese character in its tokens.txt"


def problem(settings: Settings) -> str | None:
    """The start-up problem, as an operator should read it; None when there is none."""
    phone = settings.section(PhoneSettings)
    if not phone_in_use(phone) and phone.audiosocket_port is None:
        return None
    lines = chinese_lines(phone)
    why = deaf_to_chinese(settings) if lines else None
    if why is None:
        return None
    return (f"{', '.join(lines)} greet{'s' if len(lines) == 1 else ''} callers in Chinese, but {why}: Mandarin "
            "callers would not be understood (转人工 would not transfer them). Fix it with one of: "
            "(1) a Mandarin sherpa-onnx model: `kefu speech pull paraformer-zh-small` (`kefu speech list` for the "
            "others), then set the KEFU_LOCAL_ASR_MODEL_DIR=... line it prints; "
            "(2) KEFU_SPEECH_PROVIDER=nls with KEFU_NLS_ACCESS_KEY_ID, KEFU_NLS_ACCESS_KEY_SECRET and KEFU_NLS_APPKEY; "
            "(3) a keypad-only hotline: \"menu\": {\"prompt\": ..., \"keys\": {...}, \"keys_only\": true} in "
            "KEFU_HOTLINES; or KEFU_PHONE_ASR_LANGUAGE_CHECK=warn to start anyway (docs/telephony.md, "
            "\"Mandarin callers\")")


def check(settings: Settings) -> None:
    """Raise ConfigError on the problem (or log it as an ERROR with ``KEFU_PHONE_ASR_LANGUAGE_CHECK=warn``)."""
    found = problem(settings)
    if found is None:
        return
    phone = settings.section(PhoneSettings)
    if not phone_in_use(phone):
        log.error("KEFU_AUDIOSOCKET_PORT is set: if calls arrive there, %s", found)
    elif phone.phone_asr_language_check == "warn":
        log.error("KEFU_PHONE_ASR_LANGUAGE_CHECK=warn: starting anyway, but %s", found)
    else:
        raise ConfigError(found)


def _symbols_have_chinese(tokens: Path) -> bool:
    """Whether a symbol table has a Chinese character; True when it cannot be read (the recognizer's own checks
    report that, better than a guess here)."""
    try:
        with tokens.open(encoding="utf-8") as table:
            return any(has_chinese(line) for line in table)
    except (OSError, UnicodeDecodeError):
        return True
