"""Generic signed webhook channel: any system posts a customer's message; the reply is posted to its callback URL.

Each endpoint is one entry of ``KEFU_WEBHOOKS`` (:class:`WebhookEndpoint`: ``name``, ``secret``,
``callback_url``, ``timeout_s``). The protocol is that of Stripe or GitHub webhooks, in both
directions (docs/webhook.md):

- In: ``POST /v1/webhook/{name}``, ``Content-Type: application/json``, body ``{"message_id", "user_id",
  "text"}``, headers ``X-Kefu-Timestamp: <unix seconds>`` and ``X-Kefu-Signature: sha256=<hex>``, the
  HMAC-SHA256 of ``"<timestamp>." + raw body`` with the endpoint's secret. Checked in this order, and
  nothing is parsed or stored before the signature is verified: unknown endpoint 404, body over
  ``max_body_bytes`` 413 (never buffered beyond the limit), not JSON 415, timestamp missing or outside
  ``webhook_timestamp_window_s`` 401, signature missing or wrong 401, malformed JSON 400, missing or
  invalid fields 422 (text over ``max_text_chars`` 413). Answer: 202 ``{"message_id": <Kefu's id>,
  "duplicate": bool}``; errors are ``{"error": {"code", "message"}}``. A message_id already received
  on the endpoint is a no-op answered ``duplicate: true`` (ingress's ``UNIQUE(channel, account,
  external_id)``), which also makes the replay of a captured request inside the window harmless.
- The message goes through :func:`models.dialogue.decide` like every channel's: FAQ and "asking for
  a person" are answered at once by the rules (nobody can take over here, so honestly), the rest by
  the model.
- Out (:class:`WebhookOutbound`, in a worker): ``POST callback_url`` with ``{"reply_id", "in_reply_to"
  (the integrator's message_id), "user_id", "text", "source"}``, signed the same way with a fresh
  timestamp on every attempt, and ``Idempotency-Key: kefu-reply-<reply_id>`` (the same on every
  attempt: a receiver drops repeats). 2xx: sent. Timeout, connection failure, 408, 425, 429, 5xx:
  :class:`~channels.errors.DeliveryRetryable` (the deliver task backs off and retries); a ``Retry-After``
  on a retryable answer (delay-seconds or an HTTP-date, RFC 9110 §10.2.3) replaces the backoff for that
  retry (``retry_after_s`` on the error), capped by ``webhook_retry_after_max_s``; an unreadable one is
  ignored. Any other status, or an endpoint no longer configured: :class:`~channels.errors.DeliveryPermanent`.

Logs name the endpoint and Kefu's ids only: never a body, a user id or a callback URL's path or query.
The loopback receiver and sender that speak this protocol are :mod:`channels.webhook_fake`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import Field, SecretStr, field_validator
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from channels.base import (
    Account,
    Accounts,
    Channel,
    ChannelAdapter,
    DeliveryPermanent,
    DeliveryProgress,
    DeliveryRetryable,
    Outbound,
    RequestRejected,
    find,
)
from channels.http import clean_text, parse_json_object, read_limited
from models.envelope import ConversationKey, Inbound, Reply
from models.settings import Section, Settings
from models.tables import InboundRecord

log = logging.getLogger(__name__)

CHANNEL = "webhook"
PATH = "/v1/webhook/{name}"
TIMESTAMP_HEADER = "X-Kefu-Timestamp"
SIGNATURE_HEADER = "X-Kefu-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SCHEME = "sha256="
MIN_SECRET_CHARS = 16
ID_MAX_CHARS = 128  # inbound.external_id and conversation.peer are String(128)
RETRYABLE_STATUSES = frozenset({408, 425, 429})  # and every 5xx
USER_AGENT = "kefu-webhook/1"
_CONTROL = re.compile("[\x00-\x1f\x7f]")  # not in an id (newlines and tabs included)


# ---- settings --------------------------------------------------------------------------------------


class WebhookEndpoint(Account):
    """One system that posts messages to ``/v1/webhook/{name}`` and receives the replies at ``callback_url``."""

    secret: SecretStr  # signs both directions
    callback_url: str
    timeout_s: float = Field(10.0, gt=0, le=60)  # the whole callback request, connect included

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MIN_SECRET_CHARS:
            raise ValueError(f"secret must be at least {MIN_SECRET_CHARS} characters; generate one with "
                             "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'")
        return value

    @field_validator("callback_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"callback_url must be an http:// or https:// URL with a host (got scheme {parts.scheme!r}, "
                             f"host {parts.hostname!r})")
        if parts.username is not None or parts.password is not None:
            raise ValueError("callback_url must not carry credentials: the receiver checks X-Kefu-Signature instead")
        return value


class WebhookSettings(Section):
    webhooks: Accounts[WebhookEndpoint] = Field(default_factory=list)  # JSON list in KEFU_WEBHOOKS
    # how far X-Kefu-Timestamp may be from this gateway's clock, either way (KEFU_WEBHOOK_TIMESTAMP_WINDOW_S)
    webhook_timestamp_window_s: int = Field(300, ge=1)
    # the longest wait a receiver's Retry-After is obeyed for; a longer one waits this long (KEFU_WEBHOOK_RETRY_AFTER_MAX_S)
    webhook_retry_after_max_s: float = Field(300.0, gt=0)


def endpoint(settings: Settings, name: str) -> WebhookEndpoint | None:
    return find(settings.section(WebhookSettings).webhooks, name)


# ---- the signature (pure) ----------------------------------------------------------------------------


def signature(secret: str, timestamp: str | int, body: bytes) -> str:
    """The ``X-Kefu-Signature`` value: ``sha256=`` + hex HMAC-SHA256(secret, ``"<timestamp>."`` + body)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return SCHEME + digest


def signed_headers(secret: str, body: bytes, now: float) -> dict[str, str]:
    timestamp = str(int(now))
    return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: signature(secret, timestamp, body)}


def require_fresh(timestamp: str | None, now: float, window_s: int) -> str:
    """The timestamp header, if it is unix seconds within ``window_s`` of ``now``; else a 401."""
    if not timestamp:
        raise RequestRejected(401, "missing_timestamp", f"send {TIMESTAMP_HEADER}: the current unix time in seconds")
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        raise RequestRejected(401, "invalid_timestamp", f"{TIMESTAMP_HEADER} must be unix time in whole seconds")
    skew = int(timestamp) - int(now)
    if abs(skew) > window_s:
        raise RequestRejected(401, "stale_timestamp",
                              f"{TIMESTAMP_HEADER} is {abs(skew)} s {'ahead of' if skew > 0 else 'behind'} Kefu's clock; "
                              f"the limit is {window_s} s: sign with the current time and check the sender's clock")
    return timestamp


def require_signature(secret: str, timestamp: str, body: bytes, header: str | None) -> None:
    """A 401 unless ``header`` is the signature of exactly these bytes (compared in constant time)."""
    if not header:
        raise RequestRejected(401, "missing_signature",
                              f"send {SIGNATURE_HEADER}: sha256=<hex HMAC-SHA256 of '<timestamp>.<raw body>' "
                              "with the endpoint's secret>")
    expected = signature(secret, timestamp, body)
    if not hmac.compare_digest(expected.encode(), header.strip().encode("utf-8", "replace")):
        raise RequestRejected(401, "invalid_signature",
                              f"{SIGNATURE_HEADER} does not match: sign the {TIMESTAMP_HEADER} value, a '.', then the "
                              "exact bytes of the body as sent, with HMAC-SHA256 and the endpoint's secret; hex-encode "
                              "it after 'sha256='")


# ---- the request (pure) --------------------------------------------------------------------------------


def require_json(content_type: str | None) -> None:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise RequestRejected(415, "unsupported_media_type", "send the message as Content-Type: application/json")


def clean_id(data: Mapping[str, Any], field: str) -> str:
    value = data.get(field)
    if value is None:
        raise RequestRejected(422, f"missing_{field}", f"field {field!r} is required")
    if not isinstance(value, str) or _CONTROL.search(value) or not value.strip() or len(value) > ID_MAX_CHARS:
        raise RequestRejected(422, f"invalid_{field}",
                              f"field {field!r} must be a string of 1-{ID_MAX_CHARS} printable characters")
    return value


def read_message(endpoint: WebhookEndpoint, headers: Mapping[str, str], body: bytes, now: float,
                 settings: Settings, window_s: int) -> Inbound:
    """Verify one request's body (already size-checked) and turn it into an Inbound; RequestRejected otherwise."""
    headers = {name.lower(): value for name, value in headers.items()}
    require_json(headers.get("content-type"))
    timestamp = require_fresh(headers.get(TIMESTAMP_HEADER.lower()), now, window_s)
    require_signature(endpoint.secret.get_secret_value(), timestamp, body, headers.get(SIGNATURE_HEADER.lower()))
    data = parse_json_object(body, settings.max_body_bytes)
    message_id = clean_id(data, "message_id")
    user_id = clean_id(data, "user_id")
    text = clean_text(data.get("text"), settings.max_text_chars)
    return Inbound(ConversationKey(CHANNEL, endpoint.name, user_id), message_id, text)


# ---- gateway side ----------------------------------------------------------------------------------------


class WebhookAdapter(ChannelAdapter):

    def routes(self) -> list[BaseRoute]:
        return [Route(PATH, self.receive, methods=["POST"])]

    async def receive(self, request: Request) -> Response:
        settings = self.ctx.settings
        name = request.path_params["name"]
        try:
            found = endpoint(settings, name)
            if found is None:
                raise RequestRejected(404, "unknown_endpoint",
                                      f"no webhook endpoint is configured under {name!r} (KEFU_WEBHOOKS)")
            body = await read_limited(request, settings.max_body_bytes)
            window = settings.section(WebhookSettings).webhook_timestamp_window_s
            inbound = read_message(found, request.headers, body, time.time(), settings, window)
        except RequestRejected as exc:
            if exc.status == 401:
                log.warning("webhook %s: request refused: %s", name, exc.code)
            return JSONResponse(exc.body(), status_code=exc.status)
        accepted = await run_in_threadpool(self.take, inbound)
        return JSONResponse({"message_id": accepted.inbound_id, "duplicate": accepted.duplicate}, status_code=202)


# ---- worker side -----------------------------------------------------------------------------------------


def where(url: str) -> str:
    """The callback's scheme, host and port, for errors and logs (its path or query may hold a token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def retry_after_s(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds or an HTTP-date (a past date: 0); None when
    absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() alone takes "²", which int() refuses
        return float(int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP-dates are GMT
        return None
    return max(0.0, when.timestamp() - now)


def classify(status: int, url: str, retry_after: float | None = None) -> None:
    """Nothing for 2xx; DeliveryRetryable for statuses worth retrying (carrying ``retry_after`` seconds, when the
    receiver said); DeliveryPermanent for the rest."""
    if 200 <= status < 300:
        return
    if status >= 500 or status in RETRYABLE_STATUSES:
        error = DeliveryRetryable(f"callback {where(url)} answered HTTP {status}"
                                  + (f", Retry-After {retry_after:g} s" if retry_after is not None else ""))
        error.retry_after_s = retry_after
        raise error
    if 300 <= status < 400:
        raise DeliveryPermanent(f"callback {where(url)} answered HTTP {status}, a redirect; Kefu does not follow "
                                "redirects: configure the final URL as callback_url")
    raise DeliveryPermanent(f"callback {where(url)} answered HTTP {status}; it refuses this reply, so it is not retried")


def post_reply(found: WebhookEndpoint, payload: dict[str, Any], reply_id: int, *, now: float | None = None,
               transport: httpx.BaseTransport | None = None, retry_after_max_s: float = 300.0) -> None:
    """POST one signed reply to the endpoint's callback; raises DeliveryRetryable (its ``retry_after_s`` the
    receiver's ``Retry-After``, at most ``retry_after_max_s``) or DeliveryPermanent."""
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        IDEMPOTENCY_HEADER: f"kefu-reply-{reply_id}",
        **signed_headers(found.secret.get_secret_value(), body, time.time() if now is None else now),
    }
    try:
        with httpx.Client(timeout=found.timeout_s, transport=transport, follow_redirects=False) as client:
            response = client.post(found.callback_url, content=body, headers=headers)
    except httpx.TimeoutException:
        raise DeliveryRetryable(f"callback {where(found.callback_url)} did not answer within {found.timeout_s} s") from None
    except httpx.TransportError as exc:
        raise DeliveryRetryable(f"callback {where(found.callback_url)} unreachable: {type(exc).__name__}") from None
    wait = retry_after_s(response.headers.get("retry-after"), time.time())
    classify(response.status_code, found.callback_url, None if wait is None else min(wait, retry_after_max_s))


class WebhookOutbound(Outbound):
    """The reply, signed, to the endpoint's ``callback_url``."""

    def send(self, reply: Reply, progress: DeliveryProgress) -> None:
        found = endpoint(self.deps.settings, reply.key.account)
        if found is None:
            raise DeliveryPermanent(f"webhook endpoint {reply.key.account!r} is no longer configured (KEFU_WEBHOOKS)")
        with self.deps.sessions() as session:
            in_reply_to = session.scalar(select(InboundRecord.external_id).where(InboundRecord.id == reply.inbound_id))
        payload = {"reply_id": reply.reply_id, "in_reply_to": in_reply_to, "user_id": reply.key.peer,
                   "text": reply.text, "source": str(reply.source)}
        post_reply(found, payload, reply.reply_id,
                   retry_after_max_s=self.deps.settings.section(WebhookSettings).webhook_retry_after_max_s)


# Nobody can take a webhook conversation (the base hand-off port): 转人工 gets the honest answer.
descriptor = Channel(name=CHANNEL, adapter=WebhookAdapter, outbound=WebhookOutbound, section=WebhookSettings)
