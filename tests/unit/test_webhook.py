"""The webhook channel without a stack: the signature recipe, its settings, the order of the request checks,
and the outbound's retryable/permanent split against the loopback receiver (channels/webhook_fake.py)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from channels import registry, webhook, webhook_fake
from channels.base import (
    ChannelContext,
    DeliveryPermanent,
    DeliveryProgress,
    DeliveryRetryable,
    HandOffPort,
    OutboundDeps,
    find,
)
from channels.ingress import Accepted
from models.envelope import ConversationKey, Inbound, Reply
from models.replies import Answer
from models.settings import ConfigError, Settings
from workers.demo.processes import free_port

pytestmark = pytest.mark.usefixtures("clean_env")

SECRET = "whsec-example-0123456789"
# printf '%s' '1700000000.{"message_id":"m-1","user_id":"u-42","text":"hello"}' |
#   openssl dgst -sha256 -hmac 'whsec-example-0123456789'   (the recipe in docs/webhook.md)
VECTOR_BODY = b'{"message_id":"m-1","user_id":"u-42","text":"hello"}'
VECTOR = "sha256=c794310b84194011814776c8ba37d238c7738df8b3ccbc58b91da39e105b00bc"
FAQ = [{"keywords": ["营业时间"], "answer": "每天 9:00–21:00。"}]


def endpoint(**extra: Any) -> dict[str, Any]:
    return {"name": "crm", "secret": SECRET, "callback_url": "https://crm.example.com/kefu/replies", **extra}


# ---- signing ---------------------------------------------------------------------------------------------


def test_both_sides_sign_as_openssl_does() -> None:
    assert webhook.signature(SECRET, 1700000000, VECTOR_BODY) == VECTOR
    assert webhook.signature(SECRET, "1700000000", VECTOR_BODY) == VECTOR
    assert webhook_fake.sign(SECRET, 1700000000, VECTOR_BODY) == VECTOR


def test_signature_covers_the_timestamp_the_body_and_the_secret() -> None:
    base = webhook.signature(SECRET, 1700000000, VECTOR_BODY)
    assert webhook.signature(SECRET, 1700000001, VECTOR_BODY) != base
    assert webhook.signature(SECRET, 1700000000, VECTOR_BODY.replace(b"hello", b"hellO")) != base
    assert webhook.signature(SECRET + "x", 1700000000, VECTOR_BODY) != base


def test_fresh_timestamps_pass_and_stale_or_odd_ones_are_refused() -> None:
    now = 1_700_000_000.7
    assert webhook.require_fresh("1700000000", now, 300) == "1700000000"
    assert webhook.require_fresh("1700000300", now, 300)  # a sender's clock a little ahead
    for value, code in [(None, "missing_timestamp"), ("", "missing_timestamp"), ("17e8", "invalid_timestamp"),
                        ("-5", "invalid_timestamp"), ("１７００", "invalid_timestamp"), ("1699999699", "stale_timestamp"),
                        ("1700000301", "stale_timestamp"), ("9" * 40, "invalid_timestamp")]:
        with pytest.raises(webhook.RequestRejected) as refused:
            webhook.require_fresh(value, now, 300)
        assert (refused.value.status, refused.value.code) == (401, code)
    with pytest.raises(webhook.RequestRejected, match="behind Kefu's clock; the limit is 300 s"):
        webhook.require_fresh("1699999000", now, 300)


@pytest.mark.parametrize("header", [None, "", VECTOR.replace("c79", "c78"), VECTOR.removeprefix("sha256="),
                                    "sha1=" + VECTOR[7:], VECTOR.upper(), "sha256=ünïcode"])
def test_a_wrong_or_missing_signature_is_refused(header: str | None) -> None:
    with pytest.raises(webhook.RequestRejected) as refused:
        webhook.require_signature(SECRET, "1700000000", VECTOR_BODY, header)
    assert refused.value.status == 401
    assert refused.value.code == ("missing_signature" if not header else "invalid_signature")


def test_the_right_signature_passes() -> None:
    webhook.require_signature(SECRET, "1700000000", VECTOR_BODY, VECTOR)
    webhook.require_signature(SECRET, "1700000000", VECTOR_BODY, f" {VECTOR} ")


# ---- settings ----------------------------------------------------------------------------------------------


def test_endpoints_are_read_from_kefu_webhooks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEFU_WEBHOOKS", json.dumps([endpoint(timeout_s=3), endpoint(name="erp")]))
    monkeypatch.setenv("KEFU_WEBHOOK_TIMESTAMP_WINDOW_S", "60")
    section = Settings().section(webhook.WebhookSettings)
    assert [e.name for e in section.webhooks] == ["crm", "erp"]
    found = find(section.webhooks, "crm")
    assert found is not None and found.timeout_s == 3 and found.secret.get_secret_value() == SECRET
    assert find(section.webhooks, "erp") is not None and find(section.webhooks, "erp").timeout_s == 10  # type: ignore[union-attr]
    assert find(section.webhooks, "nobody") is None and section.webhook_timestamp_window_s == 60


def test_endpoints_given_in_process_are_kept() -> None:
    settings = Settings(webhooks=[endpoint()])
    assert webhook.endpoint(settings, "crm") is not None
    masked = settings.masked()["webhooks"]
    assert masked[0]["secret"] == "********" and SECRET not in json.dumps(masked)


@pytest.mark.parametrize(("entries", "fragment"), [
    ([endpoint(), endpoint()], "KEFU_WEBHOOKS: every entry needs its own name"),
    ([endpoint(name="has space")], "must be 1-64 letters"),
    ([endpoint(name="a/b")], "part of the URL"),
    ([endpoint(secret="short")], "at least 16 characters"),
    ([endpoint(callback_url="ftp://crm.example.com/x")], "http:// or https://"),
    ([endpoint(callback_url="crm.example.com/replies")], "http:// or https://"),
    ([endpoint(callback_url="https:///nohost")], "with a host"),
    ([endpoint(callback_url="https://user:pw@crm.example.com/")], "must not carry credentials"),
    ([endpoint(timeout_s=0)], "timeout_s"),
    ([endpoint(timeout_s=600)], "timeout_s"),
    ([{"name": "crm", "callback_url": "https://crm.example.com/"}], "secret"),
])
def test_bad_endpoints_stop_the_process_with_a_message_naming_the_fix(entries: list[dict[str, Any]],
                                                                      fragment: str) -> None:
    with pytest.raises(ConfigError, match=r"^KEFU_WEBHOOKS") as refused:
        registry.check(Settings(webhooks=entries))
    assert fragment in str(refused.value)
    assert SECRET not in str(refused.value)


def test_the_channel_is_registered() -> None:
    found = registry.channel("webhook")
    assert found is webhook.descriptor and found.section is webhook.WebhookSettings
    assert not found.streams and not found.platform_api and not found.voice_files
    assert found.handoff is HandOffPort  # nobody to hand over to: 转人工 gets the honest answer


# ---- the request, through the adapter --------------------------------------------------------------------------


class RecordingIngress:
    """Stands in for channels.ingress.Ingress: keeps what the adapter hands it."""

    def __init__(self) -> None:
        self.queued: list[Inbound] = []
        self.answered: list[tuple[Inbound, Answer, bool]] = []

    def accept(self, inbound: Inbound) -> Accepted:
        self.queued.append(inbound)
        return Accepted(len(self.queued), 1, False, True)

    def accept_answered(self, inbound: Inbound, answer: Answer, *, passive: bool = True) -> tuple[Accepted, str]:
        self.answered.append((inbound, answer, passive))
        return Accepted(100 + len(self.answered), 1, False, True), answer.text


@pytest.fixture
def gateway() -> Iterator[tuple[httpx.Client, RecordingIngress]]:
    """Only the webhook's routes, served over a real socket, with ingress recording instead of storing."""
    settings = Settings(webhooks=[endpoint()], faq=FAQ, max_body_bytes=4096, max_text_chars=50)
    ingress = RecordingIngress()
    context = ChannelContext(settings, cast(Any, ingress), cast(Any, None), cast(Any, None), cast(Any, None),
                             cast(Any, None), HandOffPort(settings, cast(Any, None)))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=webhook.WebhookAdapter(context).routes()),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the test gateway did not start"
            time.sleep(0.02)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client, ingress
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def post(client: httpx.Client, body: bytes, *, name: str = "crm", secret: str = SECRET, timestamp: int | None = None,
         content_type: str = "application/json", **headers: str) -> httpx.Response:
    ts = int(time.time()) if timestamp is None else timestamp
    sent = {"Content-Type": content_type, "X-Kefu-Timestamp": str(ts),
            "X-Kefu-Signature": webhook_fake.sign(secret, ts, body), **headers}
    return client.post(f"/v1/webhook/{name}", content=body, headers=sent)


def message(text: Any = "where is my parcel?", **extra: Any) -> bytes:
    return json.dumps({"message_id": "m-1", "user_id": "u-42", "text": text, **extra}).encode()


def test_a_signed_message_is_queued_for_the_model(gateway: tuple[httpx.Client, RecordingIngress]) -> None:
    client, ingress = gateway
    answer = post(client, message("  where is my parcel?\x00 "))
    assert (answer.status_code, answer.json()) == (202, {"message_id": 1, "duplicate": False})
    [inbound] = ingress.queued
    assert inbound.key == ConversationKey("webhook", "crm", "u-42")
    assert (inbound.external_id, inbound.text) == ("m-1", "where is my parcel?")


def test_rules_answer_faq_and_asking_for_a_person(gateway: tuple[httpx.Client, RecordingIngress]) -> None:
    client, ingress = gateway
    assert post(client, message("你们的营业时间？")).status_code == 202
    assert post(client, message("转人工")).status_code == 202
    assert not ingress.queued
    (_, faq, faq_passive), (_, person, person_passive) = ingress.answered
    assert (faq.source, faq.text, faq_passive) == ("faq", FAQ[0]["answer"], False)  # delivered through the callback
    assert (person.source, person.text, person_passive) == ("rule", Settings().handoff_unavailable_reply, False)


@pytest.mark.parametrize(("case", "status", "code"), [
    ("unknown endpoint", 404, "unknown_endpoint"),
    ("oversize with the wrong type", 413, "body_too_large"),
    ("wrong type, stale and forged", 415, "unsupported_media_type"),
    ("no content type", 415, "unsupported_media_type"),
    ("stale and forged", 401, "stale_timestamp"),
    ("forged", 401, "invalid_signature"),
    ("signed by another secret", 401, "invalid_signature"),
    ("signature of another body", 401, "invalid_signature"),
    ("signed, not JSON", 400, "malformed_json"),
    ("signed, a JSON list", 400, "malformed_json"),
    ("missing text", 422, "missing_text"),
    ("empty text", 422, "empty_text"),
    ("text not a string", 422, "invalid_text"),
    ("text too long", 413, "text_too_long"),
    ("missing message_id", 422, "missing_message_id"),
    ("numeric user_id", 422, "invalid_user_id"),
    ("user_id too long", 422, "invalid_user_id"),
    ("control characters in message_id", 422, "invalid_message_id"),
    ("a newline in user_id", 422, "invalid_user_id"),
    ("blank user_id", 422, "invalid_user_id"),
])
def test_requests_are_refused_in_order_and_nothing_reaches_ingress(
        gateway: tuple[httpx.Client, RecordingIngress], case: str, status: int, code: str) -> None:
    client, ingress = gateway
    stale = int(time.time()) - 3600
    answer = {
        "unknown endpoint": lambda: post(client, message(), name="nobody"),
        "oversize with the wrong type": lambda: post(client, message("x" * 5000), content_type="text/plain"),
        "wrong type, stale and forged": lambda: post(client, message(), content_type="text/plain", timestamp=stale,
                                                     secret="not-the-secret-at-all"),
        "no content type": lambda: post(client, message(), content_type=""),
        "stale and forged": lambda: post(client, message(), timestamp=stale, secret="not-the-secret-at-all"),
        "forged": lambda: post(client, message(), **{"X-Kefu-Signature": "sha256=" + "0" * 64}),
        "signed by another secret": lambda: post(client, message(), secret="not-the-secret-at-all"),
        "signature of another body": lambda: client.post("/v1/webhook/crm", content=message("transfer money"), headers={
            "Content-Type": "application/json", "X-Kefu-Timestamp": str(int(time.time())),
            "X-Kefu-Signature": webhook_fake.sign(SECRET, int(time.time()), message())}),
        "signed, not JSON": lambda: post(client, b"{not json"),
        "signed, a JSON list": lambda: post(client, b"[1, 2]"),
        "missing text": lambda: post(client, json.dumps({"message_id": "m", "user_id": "u"}).encode()),
        "empty text": lambda: post(client, message(" \x01 ")),
        "text not a string": lambda: post(client, message(42)),
        "text too long": lambda: post(client, message("x" * 51)),
        "missing message_id": lambda: post(client, json.dumps({"user_id": "u", "text": "hi"}).encode()),
        "numeric user_id": lambda: post(client, message(user_id=42)),
        "user_id too long": lambda: post(client, message(user_id="u" * 129)),
        "control characters in message_id": lambda: post(client, message(message_id="m\x00")),
        "a newline in user_id": lambda: post(client, message(user_id="u\n42")),
        "blank user_id": lambda: post(client, message(user_id="  ")),
    }[case]()
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code and error["message"]
    assert not ingress.queued and not ingress.answered


def test_a_chunked_body_over_the_limit_is_refused(gateway: tuple[httpx.Client, RecordingIngress]) -> None:
    client, ingress = gateway

    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b"x" * 1024

    answer = client.post("/v1/webhook/crm", content=chunks(), headers={"Content-Type": "application/json"})
    assert (answer.status_code, answer.json()["error"]["code"]) == (413, "body_too_large")
    assert not ingress.queued


def test_only_post_is_served(gateway: tuple[httpx.Client, RecordingIngress]) -> None:
    client, _ = gateway
    assert client.get("/v1/webhook/crm").status_code == 405


# ---- the outbound, against the loopback receiver ----------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[webhook_fake.FakeWebhookReceiver]:
    with webhook_fake.FakeWebhookReceiver(SECRET) as fake:
        yield fake


def configured(url: str, **extra: Any) -> webhook.WebhookEndpoint:
    return webhook.WebhookEndpoint(**endpoint(callback_url=url, **extra))


PAYLOAD = {"reply_id": 7, "in_reply_to": "m-1", "user_id": "u-42", "text": "您好", "source": "model"}


def test_a_reply_is_posted_signed_with_its_idempotency_key(receiver: webhook_fake.FakeWebhookReceiver) -> None:
    webhook.post_reply(configured(receiver.url), PAYLOAD, 7)
    assert receiver.replies == [PAYLOAD]
    [delivery] = receiver.deliveries
    assert delivery.headers["idempotency-key"] == "kefu-reply-7"
    assert delivery.headers["x-kefu-signature"] == webhook.signature(SECRET, delivery.headers["x-kefu-timestamp"],
                                                                     delivery.body)
    assert delivery.headers["content-type"] == "application/json"


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_transient_answers_are_retryable(receiver: webhook_fake.FakeWebhookReceiver, status: int) -> None:
    receiver.fail_next(status)
    with pytest.raises(DeliveryRetryable, match=f"answered HTTP {status}"):
        webhook.post_reply(configured(receiver.url), PAYLOAD, 7)
    webhook.post_reply(configured(receiver.url), PAYLOAD, 7)  # the next attempt goes through
    assert receiver.replies == [PAYLOAD]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422, 301])
def test_refusals_are_permanent_and_name_the_status(receiver: webhook_fake.FakeWebhookReceiver, status: int) -> None:
    receiver.fail_next(status)
    with pytest.raises(DeliveryPermanent, match=f"answered HTTP {status}"):
        webhook.post_reply(configured(receiver.url + "?token=hidden"), PAYLOAD, 7)
    assert not receiver.replies


def test_a_receiver_with_another_secret_refuses_and_that_is_permanent() -> None:
    with webhook_fake.FakeWebhookReceiver("a-different-secret-altogether") as other:
        with pytest.raises(DeliveryPermanent, match="answered HTTP 401") as refused:
            webhook.post_reply(configured(other.url + "?token=hidden"), PAYLOAD, 7)
        assert "hidden" not in str(refused.value) and "/kefu/replies" not in str(refused.value)
        assert other.deliveries[0].error == "invalid_signature"


def test_a_slow_receiver_is_a_retryable_timeout(receiver: webhook_fake.FakeWebhookReceiver) -> None:
    receiver.delay_next(5)
    with pytest.raises(DeliveryRetryable, match=r"did not answer within 0\.2 s"):
        webhook.post_reply(configured(receiver.url, timeout_s=0.2), PAYLOAD, 7)


def test_an_unreachable_receiver_is_retryable() -> None:
    with webhook_fake.FakeWebhookReceiver(SECRET) as gone:
        url = gone.url
    with pytest.raises(DeliveryRetryable, match="unreachable: ConnectError"):
        webhook.post_reply(configured(url), PAYLOAD, 7)


def test_transport_failures_are_retryable() -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("peer closed connection", request=request)

    with pytest.raises(DeliveryRetryable, match="unreachable: RemoteProtocolError"):
        webhook.post_reply(configured("https://crm.example.com/r"), PAYLOAD, 7, transport=httpx.MockTransport(fail))


def test_a_removed_endpoint_is_a_permanent_failure() -> None:
    settings = Settings(webhooks=[endpoint()])
    deps = OutboundDeps(settings, cast(Any, None), cast(Any, None), cast(Any, None), HandOffPort(settings, cast(Any, None)))
    reply = Reply(1, 2, 3, ConversationKey("webhook", "gone", "u-42"), "hi")
    with pytest.raises(DeliveryPermanent, match="'gone' is no longer configured"):
        webhook.WebhookOutbound(deps).send(reply, DeliveryProgress(0, lambda _: None))


# ---- the fake itself ------------------------------------------------------------------------------------


def test_the_fake_fails_only_the_deliveries_it_was_told_to(receiver: webhook_fake.FakeWebhookReceiver) -> None:
    receiver.fail_next(503, times=2, user_id="u-1")
    url = configured(receiver.url)
    webhook.post_reply(url, {**PAYLOAD, "user_id": "u-2"}, 1)
    for _ in range(2):
        with pytest.raises(DeliveryRetryable):
            webhook.post_reply(url, {**PAYLOAD, "user_id": "u-1"}, 2)
    webhook.post_reply(url, {**PAYLOAD, "user_id": "u-1"}, 2)
    assert [r["user_id"] for r in receiver.replies] == ["u-2", "u-1"]
    assert [d.status for d in receiver.deliveries_to("u-1")] == [503, 503, 200]


def test_the_fake_refuses_what_a_careful_receiver_refuses(receiver: webhook_fake.FakeWebhookReceiver) -> None:
    body = json.dumps(PAYLOAD).encode()
    now = int(time.time())
    good = {"Content-Type": "application/json", "X-Kefu-Timestamp": str(now),
            "X-Kefu-Signature": webhook_fake.sign(SECRET, now, body), "Idempotency-Key": "kefu-reply-7"}
    with httpx.Client(timeout=5) as http:
        cases = [
            (http.get(receiver.url), 405),
            (http.post(receiver.base_url + "/elsewhere", content=body, headers=good), 404),
            (http.post(receiver.url, content=body, headers={**good, "Content-Type": "text/plain"}), 415),
            (http.post(receiver.url, content=body, headers={**good, "X-Kefu-Timestamp": str(now - 301)}), 401),
            (http.post(receiver.url, content=body + b" ", headers=good), 401),
            (http.post(receiver.url, content=body, headers={k: v for k, v in good.items() if k != "Idempotency-Key"}),
             400),
        ]
        assert [answer.status_code for answer, _ in cases] == [status for _, status in cases]
        assert http.post(receiver.url, content=body, headers=good).status_code == 200
    assert receiver.replies == [PAYLOAD]


def test_wait_for_replies_returns_once_they_arrive(receiver: webhook_fake.FakeWebhookReceiver) -> None:
    later = threading.Timer(0.1, webhook.post_reply, args=(configured(receiver.url), PAYLOAD, 7))
    later.start()
    try:
        assert receiver.wait_for_replies(1, timeout=10, user_id="u-42") == [PAYLOAD]
    finally:
        later.join()
    with pytest.raises(TimeoutError, match="0 of 1 replies"):
        receiver.wait_for_replies(1, timeout=0.1, user_id="someone-else")


# ---- Retry-After ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("120", 120.0), (" 0 ", 0.0), ("Thu, 01 Jan 1970 00:02:30 GMT", 30.0),  # 150 s after the epoch, "now" is 120
    ("Thu, 01 Jan 1970 00:01:00 GMT", 0.0),  # a date already past: retry now
    (None, None), ("", None), ("-5", None), ("1.5", None), ("soon", None), ("Thu, 01 Jan 1970 00:02:30", None),
    ("²", None), ("１２", None),  # digits to str.isdigit(), not the ASCII DIGITs of RFC 9110's delay-seconds
])
def test_retry_after_is_read_in_both_forms_and_ignored_when_unreadable(value: str | None,
                                                                      expected: float | None) -> None:
    assert webhook.retry_after_s(value, now=120.0) == expected


@pytest.mark.parametrize("status", [429, 503])
def test_a_receivers_retry_after_travels_with_the_retryable_error_capped(
        receiver: webhook_fake.FakeWebhookReceiver, status: int) -> None:
    receiver.fail_next(status, retry_after="7")
    with pytest.raises(DeliveryRetryable, match="Retry-After 7 s") as raised:
        webhook.post_reply(configured(receiver.url), PAYLOAD, 7)
    assert raised.value.retry_after_s == 7.0
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 3600))
    receiver.fail_next(status, retry_after=later)  # an hour: more than this Kefu waits for any receiver
    with pytest.raises(DeliveryRetryable) as raised:
        webhook.post_reply(configured(receiver.url), PAYLOAD, 7, retry_after_max_s=60)
    assert raised.value.retry_after_s == 60.0
    receiver.fail_next(status)
    with pytest.raises(DeliveryRetryable) as raised:
        webhook.post_reply(configured(receiver.url), PAYLOAD, 7)
    assert raised.value.retry_after_s is None  # no header: the deliver task backs off as usual


def test_the_retry_after_cap_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEFU_WEBHOOK_RETRY_AFTER_MAX_S", "45")
    assert Settings().section(webhook.WebhookSettings).webhook_retry_after_max_s == 45.0
    monkeypatch.setenv("KEFU_WEBHOOK_RETRY_AFTER_MAX_S", "0")
    with pytest.raises(ConfigError, match="KEFU_WEBHOOK_RETRY_AFTER_MAX_S"):
        Settings().section(webhook.WebhookSettings)
