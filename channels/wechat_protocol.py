"""The WeChat / WeCom callback protocol: signatures, XML guard, AES envelope, reply splitting. Pure.

Shared by the official-account, WeCom-app and WeChat Customer Service adapters. AES encryption and
decryption go through wechatpy's ``PrpCrypto`` (the platforms' AES-256-CBC envelope); signatures
are computed here so they can be compared in constant time (wechatpy compares with ``!=``).

Every failure raises :class:`~channels.base.RequestRejected` with the status the gateway answers:
403 for anything that fails authentication (signature, timestamp, replay), 400 for a body that
cannot be read, decrypted or parsed — one generic message for every decryption failure, so the
response tells an attacker nothing about which check failed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import xmltodict
from wechatpy.crypto import PrpCrypto as MPCrypto
from wechatpy.enterprise.crypto import PrpCrypto as CorpCrypto

from channels.base import DeliveryPermanent, RequestRejected

TEXT_LIMIT_BYTES = 2048  # custom-service / app / kf text messages
MAX_PARTS = 5  # official account: at most 5 customer-service messages per customer message

_DTD = re.compile(rb"<!(DOCTYPE|ENTITY)", re.IGNORECASE)
DECRYPT_FAILED = RequestRejected(400, "undecryptable", "the message could not be decrypted")


SERVICE_WINDOW = timedelta(hours=48)  # official-account custom messages and kf/send_msg


def require_service_window(inbound_at: datetime | None) -> None:
    """Refuse (permanently) to answer a customer message older than the 48-hour service window."""
    if inbound_at is not None and datetime.now(UTC) - inbound_at > SERVICE_WINDOW:
        raise DeliveryPermanent("outside the 48-hour customer-service window")


def signature(token: str, *parts: str) -> str:
    """SHA-1 over the sorted, concatenated strings (token, timestamp, nonce[, encrypted body])."""
    return hashlib.sha1("".join(sorted((token, *parts))).encode()).hexdigest()  # noqa: S324 - the platform's scheme


def require_signature(expected: str, given: str | None) -> None:
    if not given or not hmac.compare_digest(expected.encode(), given.encode()):
        raise RequestRejected(403, "bad_signature", "signature does not match")


def require_fresh(timestamp: str | None, now: float, window_s: int) -> int:
    """The request's timestamp as an int, if it lies within ``window_s`` of now."""
    if not timestamp or not timestamp.isascii() or not timestamp.isdigit():
        raise RequestRejected(403, "bad_timestamp", "timestamp missing or malformed")
    value = int(timestamp)
    if abs(now - value) > window_s:
        raise RequestRejected(403, "stale_timestamp", f"timestamp is outside the {window_s}s window")
    return value


def parse_xml(body: bytes) -> dict[str, Any]:
    """The ``<xml>`` element as a dict. DTDs (entity expansion, external entities) are refused unread."""
    if _DTD.search(body):
        raise RequestRejected(400, "xml_dtd_refused", "XML with a DOCTYPE or ENTITY declaration is refused")
    try:
        document = xmltodict.parse(body, disable_entities=True)
        root = document["xml"]
    except Exception:  # expat errors, a missing <xml> root, non-UTF-8 bytes
        raise RequestRejected(400, "malformed_xml", "the body is not a WeChat XML message") from None
    if not isinstance(root, dict):
        raise RequestRejected(400, "malformed_xml", "the body is not a WeChat XML message")
    return root


def aes_key(encoding_aes_key: str) -> bytes:
    try:
        key = base64.b64decode(encoding_aes_key + "=", validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise ValueError("EncodingAESKey must be the 43-character key from the platform console")
    return key


def decrypt(key: bytes, receive_id: str, encrypted: str, *, corp: bool = False) -> bytes:
    """Open an ``Encrypt`` envelope; the receive id (appid / corpid) inside must match."""
    crypto = (CorpCrypto if corp else MPCrypto)(key)
    try:
        _check_padding(key, encrypted)
        text: str = crypto.decrypt(encrypted, receive_id)
    except Exception:  # wrong key, bad padding, wrong receive id, truncated data: all look alike
        raise DECRYPT_FAILED from None
    return text.encode()


def _check_padding(key: bytes, encrypted: str) -> None:
    # wechatpy does not validate PKCS#7 padding; a wrong key then yields garbage instead of an error.
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    raw = base64.b64decode(encrypted, validate=True)
    if not raw or len(raw) % 16:
        raise ValueError("ciphertext length")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    plain = decryptor.update(raw) + decryptor.finalize()
    pad = plain[-1]
    if not 1 <= pad <= 32 or plain[-pad:] != bytes([pad]) * pad:
        raise ValueError("padding")


def encrypt_envelope(token: str, key: bytes, receive_id: str, xml: str, nonce: str, timestamp: str,
                     *, corp: bool = False) -> str:
    """A passive reply in safe mode: the encrypted ``<xml><Encrypt>…`` envelope."""
    encrypted = (CorpCrypto if corp else MPCrypto)(key).encrypt(xml, receive_id)
    encrypted = encrypted.decode() if isinstance(encrypted, bytes) else str(encrypted)
    sig = signature(token, timestamp, nonce, encrypted)
    return (f"<xml><Encrypt><![CDATA[{encrypted}]]></Encrypt><MsgSignature><![CDATA[{sig}]]></MsgSignature>"
            f"<TimeStamp>{timestamp}</TimeStamp><Nonce><![CDATA[{nonce}]]></Nonce></xml>")


def text_reply_xml(to_user: str, from_user: str, content: str, now: int) -> str:
    return (f"<xml><ToUserName><![CDATA[{_cdata(to_user)}]]></ToUserName>"
            f"<FromUserName><![CDATA[{_cdata(from_user)}]]></FromUserName><CreateTime>{now}</CreateTime>"
            f"<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{_cdata(content)}]]></Content></xml>")


def transfer_reply_xml(to_user: str, from_user: str, now: int) -> str:
    """The passive reply that passes the message to the official account's customer-service staff."""
    return (f"<xml><ToUserName><![CDATA[{_cdata(to_user)}]]></ToUserName>"
            f"<FromUserName><![CDATA[{_cdata(from_user)}]]></FromUserName><CreateTime>{now}</CreateTime>"
            f"<MsgType><![CDATA[transfer_customer_service]]></MsgType></xml>")


def _cdata(text: str) -> str:
    return text.replace("]]>", "]]]]><![CDATA[>")


_BREAKS = ("\n", "。", "！", "？", "；", ". ", "! ", "? ", "，", ", ", " ")


def split_utf8(text: str, limit: int = TEXT_LIMIT_BYTES, max_parts: int | None = MAX_PARTS) -> list[str]:
    """Split into parts of at most ``limit`` UTF-8 bytes, never inside a character.

    Prefers to break after a newline or sentence punctuation in the second half of a part. With
    ``max_parts``, the last allowed part is cut short and ends with "…" rather than exceeding it.
    """
    parts: list[str] = []
    rest = text.strip()
    while rest:
        if len(rest.encode()) <= limit:
            parts.append(rest)
            break
        cut = _fit(rest, limit)
        window = rest[:cut]
        for mark in _BREAKS:
            at = window.rfind(mark)
            if at >= cut // 2:
                cut = at + len(mark)
                break
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if max_parts is not None and len(parts) > max_parts:
        kept = parts[: max_parts - 1]
        tail = " ".join(parts[max_parts - 1 :])
        kept.append(tail[: _fit(tail, limit - len("…".encode()))].rstrip() + "…")
        parts = kept
    return parts


def _fit(text: str, limit: int) -> int:
    """The longest prefix (in characters) whose UTF-8 encoding fits in ``limit`` bytes."""
    encoded = text.encode()[:limit]
    return len(encoded.decode("utf-8", errors="ignore"))


MEDIA_ID_MAX = 256  # inbound.media_id


def media_id_of(value: object) -> str | None:
    """A platform media id fit to store and to send back in a query string, or None."""
    media_id = str(value or "").strip()
    if not media_id or len(media_id) > MEDIA_ID_MAX or not (media_id.isascii() and media_id.isprintable()) \
            or " " in media_id:
        return None
    return media_id
