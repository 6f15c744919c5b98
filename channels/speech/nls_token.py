"""Aliyun Intelligent Speech Interaction (NLS) access tokens, shared by every process.

The token comes from the ``CreateToken`` action of the ``nls-meta`` POP API (version 2019-02-28),
called with aliyun-python-sdk-core's ``CommonRequest`` (it signs the request with the AccessKey).
It is cached in the shared KV store until shortly before its ``ExpireTime`` and refreshed
single-flight under a lock, like the WeChat access tokens; a caller told that its token was
rejected asks for a refresh naming the stale token, so concurrent callers never fetch twice.
The endpoint is configurable (``KEFU_NLS_META_ENDPOINT``), which is also how tests point it at a
loopback server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from channels.speech.base import SpeechError
from models.infra.kv import KV
from models.infra.locks import Locks

API_VERSION = "2019-02-28"
REFRESH_BEFORE_S = 600  # refresh ten minutes before the token expires
MIN_TTL_S = 30
TOKEN_INVALID = 40000001  # NLS status for a token it no longer accepts (REST and WebSocket alike)

T = TypeVar("T")


class TokenRejected(SpeechError):
    """NLS refused the token (status 40000001, or HTTP 401/403 on the WebSocket handshake)."""


class NlsTokens:
    def __init__(self, kv: KV, locks: Locks, *, access_key_id: str, access_key_secret: str, region: str,
                 endpoint: str, protocol: str = "https", timeout_s: float = 5.0,
                 refresh_before_s: float = REFRESH_BEFORE_S, min_ttl_s: float = MIN_TTL_S) -> None:
        self._kv, self._locks = kv, locks
        self._id, self._secret, self._region = access_key_id, access_key_secret, region
        self._endpoint, self._protocol, self._timeout = endpoint, protocol, timeout_s
        self._key = f"nls:token:{access_key_id}:{region}"
        self._refresh_before, self._min_ttl = refresh_before_s, min_ttl_s

    def get(self) -> str:
        return self._kv.get(self._key) or self.refresh(stale=None)

    def use(self, attempt: Callable[[str], T]) -> T:
        """``attempt(token)``; when NLS rejects the token (expired, revoked), once more with a fresh one."""
        token = self.get()
        try:
            return attempt(token)
        except TokenRejected:
            fresh = self.refresh(stale=token)
        try:
            return attempt(fresh)
        except TokenRejected as exc:
            raise SpeechError(f"NLS rejected a freshly issued token: {exc}") from None

    def refresh(self, stale: str | None) -> str:
        """A valid token; fetched only when the cached one is missing or is ``stale``."""
        with self._locks.hold(f"lock:{self._key}", ttl_s=30, wait_s=15) as acquired:
            if not acquired:
                raise SpeechError("another process is fetching the NLS token; try again")
            current = self._kv.get(self._key)
            if current and current != stale:
                return current
            token, expires_at = self._create()
            ttl = max(self._min_ttl, expires_at - time.time() - self._refresh_before)
            self._kv.set(self._key, token, ttl)
            return token

    def _create(self) -> tuple[str, float]:
        from aliyunsdkcore.acs_exception.exceptions import ClientException, ServerException
        from aliyunsdkcore.client import AcsClient
        from aliyunsdkcore.request import CommonRequest

        client = AcsClient(self._id, self._secret, self._region)
        request = CommonRequest()
        request.set_method("POST")
        request.set_domain(self._endpoint)
        request.set_protocol_type(self._protocol)
        request.set_version(API_VERSION)
        request.set_action_name("CreateToken")
        request.set_connect_timeout(min(self._timeout, 3.0))
        request.set_read_timeout(self._timeout)
        try:
            raw: Any = client.do_action_with_exception(request)
        except ServerException as exc:
            raise SpeechError(f"NLS CreateToken refused: {exc.get_error_code()}: {exc.get_error_msg()}") from None
        except ClientException as exc:
            raise SpeechError(f"NLS CreateToken failed: {exc.get_error_code()}: {exc.get_error_msg()}") from None
        try:
            token = json.loads(raw)["Token"]
            return str(token["Id"]), float(token["ExpireTime"])
        except (ValueError, KeyError, TypeError):
            raise SpeechError("NLS CreateToken answered without Token.Id / Token.ExpireTime") from None
