"""Opening a WeChat / WeCom callback (the guard): every check, in order, before anything is parsed or stored.

Shared by the official account (``wechat_mp``), the WeCom app (``wecom``) and WeChat Customer
Service (``wecom_kf``). Order, so that nothing unauthenticated is parsed or stored: body size (413,
before reading it all) → strict safe mode (403 ``encryption_required`` for a plaintext callback to an
account that accepts only encrypted ones) → timestamp window → signature (constant time) →
[encrypted: message signature, then decryption] → XML (DTDs refused) → nonce replay.

The platforms retry a callback with the very same query string and body, so a nonce seen before
with the *same* body is a platform retry (the message id deduplicates it further on); the same
nonce with a different body is a replay attack (403).

When the nonce store (Redis) fails or hangs, an *encrypted* callback is let through unrecorded: its
``msg_signature`` covers the ciphertext, so a replay can only repeat the very same message, which the
inbound's ``UNIQUE(channel, account, external_id)`` turns into a no-op — refusing it would lose the
message once WeChat's three retries are spent. A *plaintext* callback's signature does not cover its
body, so without the nonce check a captured signature could carry a forged body: it gets 503
``replay_check_unavailable`` and WeChat retries it.

The official account signs plaintext callbacks with ``signature`` and encrypted ones additionally
with ``msg_signature``; WeCom (app and kf) always encrypts and signs only with ``msg_signature``,
and its URL verification sends an encrypted ``echostr`` to be answered in plaintext.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Annotated, Any

import redis
from pydantic import AfterValidator, SecretStr

from channels import wechat_protocol as wx
from channels.errors import RequestRejected
from models.infra.kv import KV

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class CallbackKeys:
    """What one configured account verifies its callbacks with."""

    scope: str  # replay-nonce namespace, e.g. "mp:shop"
    token: str
    aes_key: str | None  # EncodingAESKey; None: plaintext only (official account)
    receive_id: str  # appid (official account) or corpid (WeCom)
    corp: bool  # WeCom: always encrypted, signed with msg_signature only
    # strict safe mode: a plaintext callback is refused, so a forger needs the AES key, not only the token
    encrypted_only: bool = False


@dataclass(frozen=True)
class Opened:
    """A verified, decrypted callback."""

    plain: bytes  # the message XML
    fields: dict[str, Any]  # its parsed <xml> element
    encrypted: bool
    timestamp: str
    nonce: str
    retry: bool = False  # the same timestamp, nonce and body were opened before: the platform retried


class CallbackGuard:
    def __init__(self, kv: KV, window_s: int) -> None:
        self._kv = kv
        self._window = window_s

    def echo(self, keys: CallbackKeys, params: dict[str, str]) -> str:
        """The answer to the platform's URL verification (GET)."""
        timestamp, nonce = params.get("timestamp", ""), params.get("nonce", "")
        wx.require_fresh(timestamp, time.time(), self._window)
        echostr = params.get("echostr", "")
        if not keys.corp:
            wx.require_signature(wx.signature(keys.token, timestamp, nonce), params.get("signature"))
            return echostr
        wx.require_signature(wx.signature(keys.token, timestamp, nonce, echostr), params.get("msg_signature"))
        return wx.decrypt(self._key(keys), keys.receive_id, echostr, corp=True).decode()

    def open(self, keys: CallbackKeys, params: dict[str, str], body: bytes) -> Opened:
        encrypted = keys.corp or params.get("encrypt_type", "raw").lower() == "aes"
        if keys.encrypted_only and not encrypted:
            raise RequestRejected(403, "encryption_required",
                                  "this account accepts only encrypted (safe mode) callbacks")
        timestamp, nonce = params.get("timestamp", ""), params.get("nonce", "")
        wx.require_fresh(timestamp, time.time(), self._window)
        if not keys.corp:
            wx.require_signature(wx.signature(keys.token, timestamp, nonce), params.get("signature"))
        if encrypted:
            envelope = wx.parse_xml(body)
            cipher_text = envelope.get("Encrypt")
            if not isinstance(cipher_text, str):
                raise RequestRejected(400, "malformed_xml", "encrypted message without Encrypt")
            wx.require_signature(wx.signature(keys.token, timestamp, nonce, cipher_text), params.get("msg_signature"))
            plain = wx.decrypt(self._key(keys), keys.receive_id, cipher_text, corp=keys.corp)
        else:
            plain = body
        fields = wx.parse_xml(plain)  # refuses DTDs and malformed XML before anything else reads it
        retry = self._check_replay(keys.scope, timestamp, nonce, body, authenticated_body=encrypted)
        return Opened(plain, fields, encrypted, timestamp, nonce, retry)

    def seal(self, keys: CallbackKeys, opened: Opened, xml: str) -> str:
        """A passive reply, encrypted when the callback was."""
        if not opened.encrypted:
            return xml
        return wx.encrypt_envelope(keys.token, self._key(keys), keys.receive_id, xml, opened.nonce, opened.timestamp,
                                   corp=keys.corp)

    @staticmethod
    def _key(keys: CallbackKeys) -> bytes:
        if keys.aes_key is None:
            raise RequestRejected(400, "aes_not_configured", "this account has no EncodingAESKey configured")
        return wx.aes_key(keys.aes_key)

    def _check_replay(self, scope: str, timestamp: str, nonce: str, body: bytes, *, authenticated_body: bool) -> bool:
        """True for a platform retry (seen before with this body); raises for a replay with another body."""
        digest = hashlib.sha256(body).hexdigest()
        slot = f"wxnonce:{scope}:{timestamp}:{nonce}"
        try:
            if self._kv.add(slot, digest, 2 * self._window):
                return False
            seen = self._kv.get(slot)
        except (redis.RedisError, OSError) as exc:
            if authenticated_body:  # a replay can only repeat this very message: the inbound's UNIQUE dedups it
                log.warning("replay check skipped for an encrypted callback (%s: %s): nonce store unavailable",
                            scope, type(exc).__name__)
                return False
            raise RequestRejected(503, "replay_check_unavailable",
                                  "the replay check is unavailable; the platform will retry") from None
        if seen != digest:
            raise RequestRejected(403, "replayed_nonce", "nonce already used")
        return True


def _valid_aes_key(value: SecretStr) -> SecretStr:
    """``value`` when it is a 43-character EncodingAESKey; a ValueError otherwise (a settings check)."""
    try:
        key = value.get_secret_value()
        if len(key) == 43 and len(base64.b64decode(key + "=", validate=True)) == 32:
            return value
    except (binascii.Error, ValueError):
        pass
    raise ValueError("aes_key must be the 43-character EncodingAESKey from the platform console")


AesKey = Annotated[SecretStr, AfterValidator(_valid_aes_key)]  # an account's EncodingAESKey, checked at start-up
