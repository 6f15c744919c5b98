"""The other side of the webhook channel (``channels/webhook.py``): a loopback receiver of replies, and a sender.

Kefu's own stand-in for an integrator's system, beside the channel it fakes, the way httpx ships
``MockTransport``: the tests run against it, and an operator can try the channel without writing a
receiver (``kefu fake webhook``, ``workers/fakes.py``). It implements the protocol from docs/webhook.md
on its own (its :func:`sign` is not the channel's), so a mistake in one side shows up as a refusal.

- :class:`FakeWebhookReceiver`: a real HTTP server (``channels/fake_http.py``, one request per
  connection) on 127.0.0.1 and a free port unless told otherwise; point an endpoint's
  ``callback_url`` at :attr:`FakeWebhookReceiver.url`. Every request is checked as a careful receiver
  would: ``POST`` to its path (else 405/404), JSON (415), a ``X-Kefu-Timestamp`` within ``window_s``
  and a valid ``X-Kefu-Signature`` (401), a JSON object body (400) and an ``Idempotency-Key`` (400).
  Every request is kept in :attr:`~FakeWebhookReceiver.deliveries` with what the fake answered; the
  replies it accepted (200), repeats included so that a double send shows, in
  :attr:`~FakeWebhookReceiver.replies` and passed to ``on_reply``.
  Controls (thread-safe): :meth:`~FakeWebhookReceiver.fail_next` answers the next N verified
  deliveries (of one user, or any) with a status (503, 400…), with a ``Retry-After`` header when given
  one (seconds or an HTTP-date, sent as given, as RFC 9110 §10.2.3 allows on 429 and 503);
  :meth:`~FakeWebhookReceiver.delay_next` answers them late (a timeout); :meth:`~FakeWebhookReceiver.wait_for_replies`.
- The sender: :func:`sign`, :func:`signed_message` and :func:`post_message`, which pushes a customer's
  message to a Kefu gateway as an integrator would.

Raises nothing into the client: what it refuses it answers with a status and
``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from channels.fake_http import Answer, LoopbackFake, Request

SECRET = "kefu-webhook-sample-secret"  # noqa: S105 - the sample endpoint's secret (fake)
NAME = "demo"  # the sample endpoint's name: Kefu serves it at /v1/webhook/demo
PATH = "/kefu/replies"  # where the receiver takes replies
WINDOW_S = 300


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """The ``X-Kefu-Signature`` value for ``body`` sent at ``timestamp``: ``sha256=<hex HMAC-SHA256>``."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def sample_endpoint(callback_url: str, name: str = NAME, secret: str = SECRET, **extra: object) -> dict[str, object]:
    """A ``KEFU_WEBHOOKS`` entry whose replies go to ``callback_url`` (a receiver's :attr:`url`)."""
    return {"name": name, "secret": secret, "callback_url": callback_url, **extra}


# ---- the sender ---------------------------------------------------------------------------------------


def signed_message(secret: str, message_id: str, user_id: str, text: str, *, timestamp: int | None = None
                   ) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a customer's message, signed as an integrator does it."""
    body = json.dumps({"message_id": message_id, "user_id": user_id, "text": text}, ensure_ascii=False).encode()
    ts = int(time.time()) if timestamp is None else timestamp
    return body, {"Content-Type": "application/json", "X-Kefu-Timestamp": str(ts),
                  "X-Kefu-Signature": sign(secret, ts, body)}


def post_message(base_url: str, name: str, secret: str, message_id: str, user_id: str, text: str, *,
                 timestamp: int | None = None, timeout: float = 10.0) -> httpx.Response:
    """POST a signed message to a Kefu gateway at ``base_url`` (e.g. ``http://127.0.0.1:8000``), endpoint ``name``.

    Kefu answers 202 ``{"message_id", "duplicate"}``; the reply arrives later at the endpoint's callback_url.
    """
    body, headers = signed_message(secret, message_id, user_id, text, timestamp=timestamp)
    with httpx.Client(timeout=timeout) as http:
        return http.post(f"{base_url.rstrip('/')}/v1/webhook/{name}", content=body, headers=headers)


# ---- the receiver --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One request the receiver got, and what it answered."""

    method: str
    path: str  # without the query
    headers: dict[str, str]  # names in lower case
    body: bytes
    status: int
    error: str | None  # the code of a refusal; None when accepted (200) or failed on purpose
    at: float = field(default_factory=time.time)  # when it arrived (unix time: comparable with an HTTP-date)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _Plan:
    """What to do to the next deliveries (of one user, or any): answer ``status`` and/or wait ``delay_s`` first."""

    times: int
    user_id: str | None
    status: int | None = None
    delay_s: float = 0.0
    retry_after: str | None = None


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class FakeWebhookReceiver(LoopbackFake):
    """An integrator's receiver of Kefu's replies. Use as a context manager, or call :meth:`start` / :meth:`stop`."""

    def __init__(self, secret: str = SECRET, *, host: str = "127.0.0.1", port: int = 0, path: str = PATH,
                 window_s: int = WINDOW_S, on_reply: Callable[[dict[str, Any]], None] | None = None) -> None:
        # one request per connection: nothing idle is left at stop()
        super().__init__(self._respond, host=host, port=port, name="fake-webhook", keep_alive=False)
        self.secret = secret
        self.path = path
        self.window_s = window_s
        self.on_reply = on_reply
        self.deliveries: list[Delivery] = []
        self.replies: list[dict[str, Any]] = []
        self._plans: list[_Plan] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    # ---- lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """What to configure as the endpoint's ``callback_url``."""
        return self.base_url + self.path

    # ---- controls --------------------------------------------------------------------------------

    def fail_next(self, status: int, times: int = 1, *, user_id: str | None = None,
                  retry_after: str | None = None) -> None:
        """Answer the next ``times`` verified deliveries (to ``user_id``, or any) with HTTP ``status`` (and
        ``Retry-After: <retry_after>`` when given: ``"120"`` or ``"Wed, 21 Oct 2026 07:28:00 GMT"``)."""
        with self._lock:
            self._plans.append(_Plan(times, user_id, status=status, retry_after=retry_after))

    def delay_next(self, seconds: float, times: int = 1, *, user_id: str | None = None) -> None:
        """Answer the next ``times`` verified deliveries only after ``seconds`` (past the sender's timeout)."""
        with self._lock:
            self._plans.append(_Plan(times, user_id, delay_s=seconds))

    def wait_for_replies(self, count: int, timeout: float = 30.0, *, user_id: str | None = None
                         ) -> list[dict[str, Any]]:
        """Block until at least ``count`` replies (to ``user_id``, or any) were accepted; returns them."""
        def mine() -> list[dict[str, Any]]:
            return [r for r in self.replies if user_id is None or r.get("user_id") == user_id]

        with self._changed:
            if not self._changed.wait_for(lambda: len(mine()) >= count, timeout):
                raise TimeoutError(f"{len(mine())} of {count} replies after {timeout} s")
            return mine()

    def replies_to(self, user_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.replies if r.get("user_id") == user_id]

    def deliveries_to(self, user_id: str) -> list[Delivery]:
        """Every verified request for ``user_id``, accepted or failed on purpose (refused ones cannot be read)."""
        with self._lock:
            found = [d for d in self.deliveries if d.error is None]
        return [d for d in found if d.json().get("user_id") == user_id]

    # ---- the protocol ----------------------------------------------------------------------------

    def _respond(self, request: Request) -> Answer:
        def delivery(status: int, error: str | None = None) -> Delivery:
            return Delivery(request.method, request.path, request.headers, request.body, status, error)

        try:
            reply = self._verify(request)
        except _Refused as refused:
            self._record(delivery(refused.status, refused.code))
            return Answer.json(refused.status, {"error": {"code": refused.code, "message": refused.message}})
        plan = self._take_plan(reply.get("user_id"))
        if plan is not None and plan.delay_s:
            self.stopping.wait(plan.delay_s)
        if plan is not None and plan.status is not None:
            self._record(delivery(plan.status))
            answer = Answer.json(plan.status, {"error": {"code": "failing_on_purpose",
                                                         "message": f"fake answers {plan.status}"}})
            if plan.retry_after is not None:
                answer.headers["Retry-After"] = plan.retry_after
            return answer
        self._record(delivery(200), reply)
        if self.on_reply is not None:
            self.on_reply(reply)
        return Answer.json(200, {"ok": True})

    def _verify(self, request: Request) -> dict[str, Any]:
        headers, body = request.headers, request.body
        if request.method != "POST":
            raise _Refused(405, "method_not_allowed", "replies are POSTed")
        if request.path != self.path:  # a query (?token=…) is the receiver's own business
            raise _Refused(404, "not_found", f"replies go to {self.path}")
        if headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise _Refused(415, "unsupported_media_type", "expected application/json")
        timestamp = headers.get("x-kefu-timestamp", "")
        if not timestamp.isdigit() or abs(int(timestamp) - time.time()) > self.window_s:
            raise _Refused(401, "stale_timestamp", f"X-Kefu-Timestamp missing or more than {self.window_s} s off")
        if not hmac.compare_digest(sign(self.secret, timestamp, body), headers.get("x-kefu-signature", "")):
            raise _Refused(401, "invalid_signature", "X-Kefu-Signature does not match the body")
        try:
            reply = json.loads(body)
        except ValueError:
            raise _Refused(400, "malformed_json", "the body is not JSON") from None
        if not isinstance(reply, dict):
            raise _Refused(400, "malformed_json", "the body is not a JSON object")
        if not headers.get("idempotency-key"):
            raise _Refused(400, "missing_idempotency_key", "every delivery carries an Idempotency-Key")
        return reply

    def _take_plan(self, user_id: object) -> _Plan | None:
        with self._lock:
            for plan in self._plans:
                if plan.user_id is None or plan.user_id == user_id:
                    plan.times -= 1
                    if plan.times <= 0:
                        self._plans.remove(plan)
                    return plan
        return None

    def _record(self, delivery: Delivery, reply: dict[str, Any] | None = None) -> None:
        with self._changed:
            self.deliveries.append(delivery)
            if reply is not None:
                self.replies.append(reply)
            self._changed.notify_all()
