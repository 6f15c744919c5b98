"""Calling the WeChat and WeCom server APIs: shared access tokens and errcode handling.

- One access token per app, shared by every process through the KV store (Redis or the embedded
  SQLite file). A refresh is single-flight under a lock, and a process that was told its token is
  invalid refreshes only if the stored token is still the one that failed, so concurrent workers
  never invalidate each other's fresh token (the cause of errcode 40001 storms).
- The official account uses ``stable_token`` (it returns the same token until it expires instead of
  revoking the previous one); WeCom uses ``gettoken`` per (corpid, app secret).
- A call that fails with 40001/40014/42001 is retried once with a refreshed token — bounded,
  unlike wechatpy's recursive ``auto_retry``. Every HTTP call has an explicit timeout.
- Temporary media (``GET /cgi-bin/media/get``, the same path on both platforms) come back as the raw
  file on success and as errcode JSON on failure (e.g. 40007: the media id is unknown or expired —
  media live three days); a file is read only up to a size limit.

Errors: :class:`~channels.errors.DeliveryPermanent` for errcodes that will not change on retry
(45015 outside the 48-hour window, 45047 quota, 43004 unsubscribed, 95018 session state …),
:class:`~channels.errors.DeliveryRetryable` for timeouts, 5xx, -1 (busy) and 45009 (rate limit).
Both carry ``errcode`` (0 for transport failures).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import httpx

from channels.errors import DeliveryPermanent, DeliveryRetryable
from models.infra.kv import KV
from models.infra.locks import Locks

log = logging.getLogger(__name__)

TOKEN_ERRORS = frozenset({40001, 40014, 42001})
RETRYABLE = frozenset({-1, 45009, 45011, 44002})
REFRESH_MARGIN_S = 300
MEDIA_PATH = "/cgi-bin/media/get"


class PlatformPermanent(DeliveryPermanent):
    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(f"errcode {errcode}: {errmsg}")
        self.errcode = errcode


class PlatformRetryable(DeliveryRetryable):
    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(f"errcode {errcode}: {errmsg}" if errcode else errmsg)
        self.errcode = errcode


def classify(errcode: int, errmsg: str) -> PlatformPermanent | PlatformRetryable:
    if errcode in RETRYABLE or errcode in TOKEN_ERRORS:
        return PlatformRetryable(errcode, errmsg)
    return PlatformPermanent(errcode, errmsg)


@dataclass(frozen=True)
class AppCredentials:
    kind: str  # "mp" (official account) | "corp" (WeCom app / kf)
    app_id: str  # appid or corpid
    secret: str

    @property
    def cache_key(self) -> str:
        # WeCom issues one token per app secret of a corp; never put the secret itself in a key.
        digest = hashlib.sha256(self.secret.encode()).hexdigest()[:12]
        return f"wxtoken:{self.kind}:{self.app_id}:{digest}"


class AccessTokens:
    def __init__(self, http: httpx.Client, kv: KV, locks: Locks, *, mp_base: str, corp_base: str) -> None:
        self._http, self._kv, self._locks = http, kv, locks
        self._bases = {"mp": mp_base.rstrip("/"), "corp": corp_base.rstrip("/")}

    def get(self, app: AppCredentials) -> str:
        return self._kv.get(app.cache_key) or self.refresh(app, stale=None)

    def refresh(self, app: AppCredentials, stale: str | None) -> str:
        """A valid token; fetched only if the stored one is missing or is the ``stale`` one."""
        with self._locks.hold(f"token:{app.cache_key}", ttl_s=30, wait_s=15) as acquired:
            if not acquired:
                raise PlatformRetryable(0, "another process is refreshing the access token")
            current = self._kv.get(app.cache_key)
            if current and current != stale:
                return current
            token, expires_in = self._fetch(app)
            self._kv.set(app.cache_key, token, max(60, expires_in - REFRESH_MARGIN_S))
            log.info("access token refreshed for %s app %s", app.kind, app.app_id)
            return token

    def _fetch(self, app: AppCredentials) -> tuple[str, int]:
        base = self._bases[app.kind]
        try:
            if app.kind == "mp":
                response = self._http.post(
                    f"{base}/cgi-bin/stable_token",
                    json={"grant_type": "client_credential", "appid": app.app_id, "secret": app.secret,
                          "force_refresh": False},
                )
            else:
                response = self._http.get(f"{base}/cgi-bin/gettoken",
                                          params={"corpid": app.app_id, "corpsecret": app.secret})
        except httpx.HTTPError as exc:
            raise PlatformRetryable(0, f"token request failed: {type(exc).__name__}") from exc
        data = _json(response)
        if data.get("errcode", 0) != 0 or "access_token" not in data:
            raise classify(int(data.get("errcode", -1)), str(data.get("errmsg", "no access_token")))
        return str(data["access_token"]), int(data.get("expires_in", 7200))


class PlatformAPI:
    """POSTs JSON to an API path with the app's access token; returns the decoded answer on errcode 0."""

    def __init__(self, http: httpx.Client, tokens: AccessTokens, *, mp_base: str, corp_base: str) -> None:
        self._http, self._tokens = http, tokens
        self._bases = {"mp": mp_base.rstrip("/"), "corp": corp_base.rstrip("/")}

    def post(self, app: AppCredentials, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        token = self._tokens.get(app)
        body = json.dumps(payload, ensure_ascii=False).encode()  # the platforms count UTF-8 bytes
        for attempt in (1, 2):
            try:
                response = self._http.post(f"{self._bases[app.kind]}{path}", params={"access_token": token},
                                           content=body, headers={"Content-Type": "application/json"})
            except httpx.HTTPError as exc:
                raise PlatformRetryable(0, f"{path} failed: {type(exc).__name__}") from exc
            data = _json(response)
            errcode = int(data.get("errcode", 0))
            if errcode == 0:
                return data
            if errcode in TOKEN_ERRORS and attempt == 1:
                token = self._tokens.refresh(app, stale=token)
                continue
            raise classify(errcode, str(data.get("errmsg", "")))
        raise AssertionError("unreachable")

    def media(self, app: AppCredentials, media_id: str, *, max_bytes: int) -> Media:
        """The temporary media file ``media_id``.

        PlatformPermanent for an unknown or expired id (40007) or a file over ``max_bytes``; PlatformRetryable
        for what may pass (timeouts, 5xx, -1, a token refresh under way).
        """
        token = self._tokens.get(app)
        for attempt in (1, 2):
            try:
                with self._http.stream("GET", f"{self._bases[app.kind]}{MEDIA_PATH}",
                                       params={"access_token": token, "media_id": media_id}) as response:
                    content_type = response.headers.get("content-type", "")
                    body = _read_limited(response, max_bytes)
            except httpx.HTTPError as exc:
                raise PlatformRetryable(0, f"{MEDIA_PATH} failed: {type(exc).__name__}") from exc
            if response.status_code >= 500:
                raise PlatformRetryable(0, f"HTTP {response.status_code} from the platform")
            if _is_json_answer(content_type, body):  # an error: the file itself is never JSON or text
                try:
                    data = json.loads(body)
                except ValueError:
                    raise PlatformRetryable(0, f"HTTP {response.status_code}: {content_type or 'no type'}, "
                                               "neither the file nor JSON") from None
                if not isinstance(data, dict):
                    raise PlatformRetryable(0, "unexpected answer from the platform")
                errcode = int(data.get("errcode", 0))
                if errcode in TOKEN_ERRORS and attempt == 1:
                    token = self._tokens.refresh(app, stale=token)
                    continue
                if errcode == 0:
                    raise PlatformPermanent(0, "media/get answered JSON without the file")
                raise classify(errcode, str(data.get("errmsg", "")))
            if response.status_code != 200 or not body:
                raise PlatformRetryable(0, f"HTTP {response.status_code} with {len(body)} bytes from {MEDIA_PATH}")
            return Media(body, content_type)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._http.close()


@dataclass(frozen=True)
class Media:
    """A file downloaded with ``media/get``."""

    content: bytes
    content_type: str  # as the platform labelled it, e.g. audio/amr


def _read_limited(response: httpx.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            raise PlatformPermanent(0, f"media file larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _is_json_answer(content_type: str, body: bytes) -> bool:
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime.endswith("json") or mime.startswith("text/") or (not mime and body.lstrip().startswith(b"{"))


def _json(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 500:
        raise PlatformRetryable(0, f"HTTP {response.status_code} from the platform")
    try:
        data = response.json()
    except ValueError:
        raise PlatformRetryable(0, f"HTTP {response.status_code}: not JSON") from None
    if not isinstance(data, dict):
        raise PlatformRetryable(0, "unexpected answer from the platform")
    return data


def make_http(timeout_s: float) -> httpx.Client:
    return httpx.Client(timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 3.0)), trust_env=False)
