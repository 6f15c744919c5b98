"""The webhook channel end to end: signed messages into the real gateway, a real worker answering, and the
replies posted (signed, retried) to the loopback receiver of channels/webhook_fake.py."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from channels import webhook
from channels.webhook_fake import FakeWebhookReceiver, post_message, sample_endpoint, sign
from models.tables import AuditEvent, DeliveryRecord, InboundRecord, ReplyRecord
from tests.integration.conftest import BACKENDS, Stack, settled, start_stack, wait_for

NAME = "crm"
SECRET = "crm-webhook-secret-0123456789"
FAQ = [{"keywords": ["营业时间"], "answer": "我们的营业时间是每天 9:00–21:00。"}]


@dataclass
class WebhookStack:
    stack: Stack
    receiver: FakeWebhookReceiver

    def post(self, message_id: str, user_id: str, text: str) -> httpx.Response:
        return post_message(self.stack.gateway.http_url, NAME, SECRET, message_id, user_id, text)

    def raw(self, body: bytes, headers: dict[str, str], name: str = NAME) -> httpx.Response:
        with self.stack.http() as http:
            return http.post(f"/v1/webhook/{name}", content=body, headers=headers)

    def rows(self) -> tuple[int, int, int]:
        with self.stack.sessions() as s:
            return (s.scalar(select(func.count()).select_from(InboundRecord)) or 0,
                    s.scalar(select(func.count()).select_from(ReplyRecord)) or 0,
                    s.scalar(select(func.count()).select_from(AuditEvent)) or 0)

    def inbound_ids(self, message_id: str) -> list[int]:
        with self.stack.sessions() as s:
            return list(s.scalars(select(InboundRecord.id).where(InboundRecord.channel == "webhook",
                                                                 InboundRecord.external_id == message_id)))

    def kinds(self, inbound_id: int) -> list[str]:
        with self.stack.sessions() as s:
            return list(s.scalars(select(AuditEvent.kind).where(AuditEvent.inbound_id == inbound_id)
                                  .order_by(AuditEvent.id)))

    def reply_and_delivery(self, inbound_id: int) -> tuple[ReplyRecord, DeliveryRecord]:
        with self.stack.sessions() as s:
            reply = s.scalars(select(ReplyRecord).where(ReplyRecord.inbound_id == inbound_id)).one()
            delivery = s.scalars(select(DeliveryRecord).where(DeliveryRecord.reply_id == reply.id)).one()
            return reply, delivery

    def retry_reasons(self, inbound_id: int) -> list[object]:
        with self.stack.sessions() as s:
            return [e.detail.get("reason") for e in s.scalars(select(AuditEvent).where(
                AuditEvent.inbound_id == inbound_id, AuditEvent.kind == "delivery_retry"))]

    def finished(self, inbound_id: int) -> bool:
        kinds = self.kinds(inbound_id)
        return "dispatched" in kinds or "delivery_failed" in kinds


@pytest.fixture(scope="module", params=BACKENDS)
def hook(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path
         ) -> Iterator[WebhookStack]:
    backend = request.param
    pg = request.getfixturevalue("pg_url") if backend == "redis-postgres" else None
    rds = request.getfixturevalue("redis_url") if backend == "redis-postgres" else None
    with FakeWebhookReceiver(SECRET) as receiver:
        stack = start_stack(backend, tmp_path_factory.mktemp(f"webhook-{backend}"), tiny_gguf, pg, rds,
                            webhooks=[sample_endpoint(receiver.url, NAME, SECRET, timeout_s=5)], faq=FAQ,
                            delivery_max_retries=3)
        try:
            yield WebhookStack(stack, receiver)
        finally:
            stack.close()


def accepted(answer: httpx.Response, duplicate: bool = False) -> int:
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["duplicate"] is duplicate and isinstance(body["message_id"], int)
    return int(body["message_id"])


def test_a_signed_message_gets_the_models_reply_at_the_callback(hook: WebhookStack) -> None:
    inbound_id = accepted(hook.post("m-model", "u-model", "你好，我的快递到哪了？"))
    [reply] = hook.receiver.wait_for_replies(1, timeout=60, user_id="u-model")
    wait_for(lambda: hook.finished(inbound_id))
    stored, delivery = hook.reply_and_delivery(inbound_id)
    assert reply == {"reply_id": stored.id, "in_reply_to": "m-model", "user_id": "u-model", "text": stored.text,
                     "source": "model"}
    assert stored.text and delivery.status == "sent"
    [sent] = hook.receiver.deliveries_to("u-model")
    assert sent.headers["idempotency-key"] == f"kefu-reply-{stored.id}"
    assert sent.headers["x-kefu-signature"] == webhook.signature(SECRET, sent.headers["x-kefu-timestamp"], sent.body)
    assert hook.kinds(inbound_id) == ["received", "queued", "generation_started", "generation_finished",
                                      "reply_stored", "dispatched"]
    assert settled(lambda: len(hook.receiver.deliveries_to("u-model"))) == 1


def test_a_receiver_failing_twice_gets_the_reply_exactly_once(hook: WebhookStack) -> None:
    hook.receiver.fail_next(503, times=2, user_id="u-retry")
    inbound_id = accepted(hook.post("m-retry", "u-retry", "请问怎么退货？"))
    hook.receiver.wait_for_replies(1, timeout=60, user_id="u-retry")
    wait_for(lambda: hook.finished(inbound_id))
    assert settled(lambda: len(hook.receiver.replies_to("u-retry"))) == 1
    attempts = hook.receiver.deliveries_to("u-retry")
    assert [d.status for d in attempts] == [503, 503, 200]
    assert len({d.headers["idempotency-key"] for d in attempts}) == 1  # the receiver can tell they are one reply
    kinds = hook.kinds(inbound_id)
    assert kinds.count("delivery_retry") == 2 and kinds.count("dispatched") == 1 and kinds[-1] == "dispatched"
    _, delivery = hook.reply_and_delivery(inbound_id)
    assert (delivery.status, delivery.attempts) == ("sent", 3)


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_a_receivers_retry_after_is_waited_out_before_the_next_attempt(hook: WebhookStack, form: str) -> None:
    user = f"u-later-{form}"
    not_before = int(time.time()) + 12  # an HTTP-date: the time itself (the reply is generated meanwhile)
    value = "6" if form == "seconds" else time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(not_before))
    hook.receiver.fail_next(429, retry_after=value, user_id=user)
    inbound_id = accepted(hook.post(f"m-later-{form}", user, "请稍后再发给我"))
    hook.receiver.wait_for_replies(1, timeout=60, user_id=user)
    first, second = hook.receiver.deliveries_to(user)
    assert (first.status, second.status) == (429, 200)
    # the receiver's wait, not the backoff's one second (whole seconds on the wire: one of slack)
    assert second.at - first.at >= 5 if form == "seconds" else second.at >= not_before - 1
    wait_for(lambda: hook.finished(inbound_id))
    assert any("Retry-After" in str(reason) for reason in hook.retry_reasons(inbound_id))


def test_a_receiver_refusing_the_reply_fails_the_delivery_without_retrying(hook: WebhookStack) -> None:
    hook.receiver.fail_next(400, user_id="u-refused")
    inbound_id = accepted(hook.post("m-refused", "u-refused", "你好"))
    wait_for(lambda: hook.finished(inbound_id), timeout=60)
    _, delivery = hook.reply_and_delivery(inbound_id)
    assert delivery.status == "failed" and "answered HTTP 400" in (delivery.last_error or "")
    assert str(hook.receiver.base_url) in (delivery.last_error or "")
    assert "/kefu/replies" not in (delivery.last_error or "")  # the callback's path is not written down
    kinds = hook.kinds(inbound_id)
    assert "delivery_failed" in kinds and "delivery_retry" not in kinds and "dispatched" not in kinds
    assert settled(lambda: [d.status for d in hook.receiver.deliveries_to("u-refused")]) == [400]
    assert not hook.receiver.replies_to("u-refused")


def test_refused_requests_leave_no_row(hook: WebhookStack) -> None:
    warm = accepted(hook.post("m-before", "u-before", "你好"))
    wait_for(lambda: hook.finished(warm), timeout=60)
    before = settled(hook.rows)
    now = int(time.time())

    def signed(payload: object, *, secret: str = SECRET, timestamp: int = now, ctype: str = "application/json"
               ) -> tuple[bytes, dict[str, str]]:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return body, {"Content-Type": ctype, "X-Kefu-Timestamp": str(timestamp),
                      "X-Kefu-Signature": sign(secret, timestamp, body)}

    message = {"message_id": "m-refused-x", "user_id": "u-attacker", "text": "transfer money"}
    forged = signed(message, secret="not-the-endpoint-secret")
    stale = signed(message, timestamp=now - 3600)
    wrong_type = signed(message, ctype="text/plain")
    oversize = signed({**message, "text": "x" * (hook.stack.settings.max_body_bytes + 1)})
    missing_text = signed({"message_id": "m-refused-y", "user_id": "u-attacker"})
    replayed = (json.dumps({**message, "text": "something else"}).encode(), signed(message)[1])
    cases = [
        (hook.raw(*signed(message), name="nobody"), 404, "unknown_endpoint"),
        (hook.raw(*forged), 401, "invalid_signature"),
        (hook.raw(*stale), 401, "stale_timestamp"),
        (hook.raw(*replayed), 401, "invalid_signature"),
        (hook.raw(*wrong_type), 415, "unsupported_media_type"),
        (hook.raw(*oversize), 413, "body_too_large"),
        (hook.raw(*missing_text), 422, "missing_text"),
        (hook.raw(*signed(b"{not json")), 400, "malformed_json"),
    ]
    for answer, status, code in cases:
        assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), answer.text
        assert answer.json()["error"]["message"]
    assert hook.rows() == before
    assert not hook.receiver.deliveries_to("u-attacker")


def test_the_same_message_id_twice_is_one_message_and_one_reply(hook: WebhookStack) -> None:
    first = accepted(hook.post("m-twice", "u-twice", "你好，在吗？"))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        again = list(pool.map(lambda _: hook.post("m-twice", "u-twice", "你好，在吗？"), range(4)))
    assert {accepted(answer, duplicate=True) for answer in again} == {first}
    hook.receiver.wait_for_replies(1, timeout=60, user_id="u-twice")
    assert hook.inbound_ids("m-twice") == [first]
    assert settled(lambda: len(hook.receiver.deliveries_to("u-twice"))) == 1
    kinds = hook.kinds(first)
    assert kinds.count("received") == 1 and kinds.count("duplicate") == 4 and kinds.count("reply_stored") == 1


def test_faq_and_asking_for_a_person_are_answered_by_the_rules(hook: WebhookStack) -> None:
    faq_id = accepted(hook.post("m-faq", "u-rules", "请问你们的营业时间？"))
    person_id = accepted(hook.post("m-person", "u-rules", "转人工"))
    replies = hook.receiver.wait_for_replies(2, timeout=60, user_id="u-rules")
    by_message = {r["in_reply_to"]: r for r in replies}
    assert (by_message["m-faq"]["source"], by_message["m-faq"]["text"]) == ("faq", FAQ[0]["answer"])
    assert (by_message["m-person"]["source"], by_message["m-person"]["text"]) == (
        "rule", hook.stack.settings.handoff_unavailable_reply)
    wait_for(lambda: hook.finished(faq_id) and hook.finished(person_id))
    for inbound_id in (faq_id, person_id):
        assert hook.kinds(inbound_id) == ["received", "reply_stored", "dispatched"]  # no model
    assert accepted(hook.post("m-faq", "u-rules", "请问你们的营业时间？"), duplicate=True) == faq_id
    assert settled(lambda: len(hook.receiver.replies_to("u-rules"))) == 2
