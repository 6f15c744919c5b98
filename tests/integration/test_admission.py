"""Admission control holds on a running gateway, with its counts in Redis and in the gateway's memory (embedded).

Each test runs on a real gateway (uvicorn on a socket) with its limits set small: web sessions per address, a
visitor's messages over HTTP and over the WebSocket, a WeChat customer's messages through the signed callback path
(every one stored and answered, the ones over the limit with the wait reply and never queued for the model), and
backpressure from a published wait estimate. Every refusal is an ``admission_refused`` audit row (a hash of the
subject, never the address or openid) and a ``kefu_admission_refused_total`` count on /metrics. No LLM worker runs:
what reaches the model's queue is read from the audit log (``queued``).

The Redis variant keeps the KV store, bus and limits on Redis and the database on PostgreSQL (its broker stays the
embedded file: tasks published here are read by no worker of another test). Every test has a secret key of its own,
so its subjects' hashes, and with them its Redis counters, are its own.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from websockets.sync.client import connect

from channels import webhook_fake
from channels.admission import subject_hash
from channels.wechat_fake import FakeWeChat
from channels.wecom_kf.adapter import request_sync
from models.infra.db import make_engine, make_session_factory
from models.infra.kv import make_kv
from models.infra.load import WAIT_KEY, publish_wait
from models.infra.migrate import upgrade
from models.settings import Settings
from models.states import InboundStatus
from models.tables import AuditEvent, InboundRecord, ReplyRecord
from tests import services
from tests import wechat_platform as wp
from tests.integration.conftest import recv_until
from tests.metrics_scrape import scrape
from workers.demo.processes import GatewayThread
from workers.runtime import Runtime

FAQ = [{"keywords": ["发票"], "answer": "电子发票会在发货后24小时内发送到您的邮箱。"}]


@dataclass
class Gateway:
    settings: Settings
    thread: GatewayThread
    sessions: sessionmaker[Session]

    @property
    def url(self) -> str:
        return self.thread.http_url

    def refusals(self, scope: str) -> list[AuditEvent]:
        with self.sessions() as s:
            rows = s.scalars(select(AuditEvent).where(AuditEvent.kind == "admission_refused").order_by(AuditEvent.id))
            return [row for row in rows if row.detail["scope"] == scope]

    def refused_count(self, channel: str, scope: str) -> float:
        return scrape(f"{self.url}/metrics").value("kefu_admission_refused_total", channel=channel, scope=scope)

    def visitor(self, http: httpx.Client) -> tuple[str, str]:
        body = http.post("/v1/web/sessions").json()
        return body["visitor_id"], body["token"]


@pytest.fixture(params=["embedded", "redis-postgres"])
def start(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """start(**settings) -> a running Gateway with those limits; stopped after the test."""
    started: list[Gateway] = []
    database = None
    if request.param == "redis-postgres":  # a database of the test's own: its audit log is the test's alone
        services.ensure_postgres()
        database, url = services.create_database()

    def run(**overrides: Any) -> Gateway:
        values: dict[str, Any] = {
            "data_dir": tmp_path, "secret_key": secrets.token_hex(16), "wechat_accounts": [wp.account()],
            "busy_notice_after_s": 0, "rate_limit_ip": "", "rate_limit_visitor": "", "rate_limit_peer": "", "faq": FAQ,
            "backpressure_wait_s": 0}
        if request.param == "redis-postgres":
            values.update(database_url=url, redis_url=request.getfixturevalue("redis_url"))
        settings = Settings(**(values | overrides))
        upgrade(settings)
        gateway = Gateway(settings, GatewayThread(settings).start(), make_session_factory(make_engine(settings)))
        started.append(gateway)
        return gateway

    yield run
    for gateway in started:
        gateway.thread.stop()
        gateway.sessions.kw["bind"].dispose()
    if database is not None:
        services.drop_database(database)


def assert_hashed(rows: list[AuditEvent], *clear: str) -> None:
    for row in rows:
        assert re.fullmatch(r"[0-9a-f]{12}", row.detail["subject"])
        assert not any(value in json.dumps(row.detail, ensure_ascii=False) for value in clear)


def test_new_web_sessions_are_limited_per_address(start: Any) -> None:
    gw = start(rate_limit_ip="3 per 1 minute")
    with httpx.Client(base_url=gw.url, timeout=10) as http:
        answers = [http.post("/v1/web/sessions") for _ in range(5)]
    assert [a.status_code for a in answers] == [201, 201, 201, 429, 429]
    refused = answers[-1]
    assert refused.json()["error"]["code"] == "rate_limited"
    assert "3 per 1 minute" in refused.json()["error"]["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    rows = gw.refusals("ip")
    assert [(r.channel, r.detail["limit"]) for r in rows] == [("web", "3 per 1 minute")] * 2
    assert_hashed(rows, "127.0.0.1")
    assert gw.refused_count("web", "ip") >= 2  # the process's counter (other tests of this process add to it)


def test_a_visitors_messages_are_limited_over_http_and_the_websocket(start: Any) -> None:
    gw = start(rate_limit_visitor="2 per 1 minute", rate_limit_ip="100 per 1 minute")
    with httpx.Client(base_url=gw.url, timeout=10) as http:
        visitor_id, token = gw.visitor(http)
        auth = {"Authorization": f"Bearer {token}"}
        sent = [http.post("/v1/web/messages", headers=auth,
                          json={"visitor_id": visitor_id, "text": f"问题{n}", "client_msg_id": f"h{n}"})
                for n in range(3)]
        assert [r.status_code for r in sent] == [202, 202, 429]
        assert sent[2].json()["error"]["code"] == "rate_limited" and int(sent[2].headers["Retry-After"]) >= 1
        other_id, other_token = gw.visitor(http)  # another visitor has a budget of its own
    with connect(f"{gw.thread.ws_url}/v1/web/ws?token={token}", open_timeout=10) as ws:
        ws.send(json.dumps({"type": "message", "text": "还有一个问题", "client_msg_id": "w1"}))
        error = recv_until(ws, lambda f: f["type"] == "error")[-1]
        assert (error["code"], error["client_msg_id"]) == ("rate_limited", "w1")
        assert error["retry_after_s"] >= 1 and "秒后再发送" in error["message"]
        ws.send(json.dumps({"type": "ping"}))
        assert recv_until(ws, lambda f: f["type"] == "pong")  # the connection stays open
    with connect(f"{gw.thread.ws_url}/v1/web/ws?token={other_token}", open_timeout=10) as ws:
        frames = []
        for n in range(3):
            ws.send(json.dumps({"type": "message", "text": f"问题{n}", "client_msg_id": f"o{n}"}))
            frames.append(recv_until(ws, lambda f: f["type"] in ("accepted", "error"))[-1])
    assert [f["type"] for f in frames] == ["accepted", "accepted", "error"]
    with gw.sessions() as s:  # a refused message is not stored: the visitor keeps their text
        peers = list(s.scalars(select(InboundRecord.conversation_id)))
    assert len(peers) == 4
    rows = gw.refusals("visitor")
    assert len(rows) == 3 and {r.channel for r in rows} == {"web"}
    assert_hashed(rows, visitor_id, other_id)
    assert gw.refused_count("web", "visitor") >= 3


def test_a_visitors_messages_count_against_the_address_too(start: Any) -> None:
    gw = start(rate_limit_visitor="10 per 1 minute", rate_limit_ip="4 per 1 minute")
    with httpx.Client(base_url=gw.url, timeout=10) as http:
        visitor_id, token = gw.visitor(http)  # 1 of 4
        sent = [http.post("/v1/web/messages", headers={"Authorization": f"Bearer {token}"},
                          json={"visitor_id": visitor_id, "text": f"问题{n}"}) for n in range(4)]
    assert [r.status_code for r in sent] == [202, 202, 202, 429]
    assert len(gw.refusals("ip")) == 1 and not gw.refusals("visitor")


def wechat_ask(gw: Gateway, openid: str, msgid: int, text: str = "我的快递到哪了？") -> str:
    cb = wp.callback(wp.text_xml(openid, text, msgid=msgid), mode="aes")
    answer = wp.post(gw.url, "/v1/wechat/shop", cb)
    assert answer.status_code == 200  # the platform always gets its acknowledgement
    return "" if answer.text == "success" else wp.read_passive_reply(answer.text, cb)


def trail(gw: Gateway, msgid: int) -> tuple[str, list[str], ReplyRecord | None]:
    with gw.sessions() as s:
        row = s.scalars(select(InboundRecord).where(InboundRecord.external_id == str(msgid))).one()
        kinds = list(s.scalars(select(AuditEvent.kind).where(AuditEvent.inbound_id == row.id).order_by(AuditEvent.id)))
        reply = s.scalars(select(ReplyRecord).where(ReplyRecord.inbound_id == row.id)).first()
        return row.status, kinds, reply


def test_wechat_messages_over_a_customers_limit_are_stored_and_told_to_wait(start: Any) -> None:
    gw = start(rate_limit_peer="2 per 1 minute")
    answers = [wechat_ask(gw, "o-hasty", 9100 + n) for n in range(5)]
    assert answers[:2] == ["", ""]  # for the model: answered later through the customer-service API
    assert answers[2:] == [gw.settings.rate_limited_reply] * 3  # told at once, passively
    for n in range(5):  # none lost: every message is stored
        status, kinds, reply = trail(gw, 9100 + n)
        if n < 2:
            assert (status, kinds, reply) == (InboundStatus.QUEUED, ["received", "queued"], None)
        else:
            assert status == InboundStatus.ANSWERED and "queued" not in kinds  # never sent to the model's queue
            assert reply is not None and (reply.source, reply.text) == ("rule", gw.settings.rate_limited_reply)
    with gw.sessions() as s:
        rules = [e.detail["rule"] for e in s.scalars(select(AuditEvent).where(AuditEvent.kind == "reply_stored"))]
    assert rules == ["admission_refused:peer"] * 3
    assert wechat_ask(gw, "o-calm", 9200) == ""  # another customer is not held back
    assert wechat_ask(gw, "o-hasty", 9103) == gw.settings.rate_limited_reply  # the platform's retry: the same answer
    assert wechat_ask(gw, "o-hasty", 9201, "请问可以开发票吗？") == FAQ[0]["answer"]  # rules answer without the model
    rows = gw.refusals("peer")
    assert [r.channel for r in rows] == ["wechat_mp"] * 4  # the three, and the retry's check
    assert_hashed(rows, "o-hasty")
    assert gw.refused_count("wechat_mp", "peer") >= 4


def test_backpressure_answers_new_model_work_with_a_wait(start: Any) -> None:
    gw = start(backpressure_wait_s=30)
    kv = make_kv(gw.settings)
    publish_wait(kv, 95.0)  # what the LLM workers publish (models.infra.load)
    try:
        backpressured(gw)
    finally:  # Redis: the next test (and its wait estimate) must not see this one
        kv.delete(WAIT_KEY)
        getattr(kv, "close", lambda: None)()


def backpressured(gw: Gateway) -> None:
    """The WeChat and web checks under a published wait of 95 s (KEFU_BACKPRESSURE_WAIT_S 30)."""
    assert wechat_ask(gw, "o-busy", 9300) == gw.settings.backpressure_reply
    status, kinds, reply = trail(gw, 9300)
    assert status == InboundStatus.ANSWERED and "queued" not in kinds and reply is not None
    assert wechat_ask(gw, "o-busy", 9301, "请问可以开发票吗？") == FAQ[0]["answer"]  # no model needed: answered
    with httpx.Client(base_url=gw.url, timeout=10) as http:
        visitor_id, token = gw.visitor(http)
        sent = http.post("/v1/web/messages", headers={"Authorization": f"Bearer {token}"},
                         json={"visitor_id": visitor_id, "text": "我的快递到哪了？"})
    assert sent.status_code == 202  # stored and answered with the wait (delivered to the page like any reply)
    with gw.sessions() as s:
        stored = s.scalars(select(ReplyRecord).where(ReplyRecord.inbound_id == sent.json()["message_id"])).one()
    assert (stored.source, stored.text) == ("rule", gw.settings.backpressure_reply)
    rows = gw.refusals("backpressure")
    assert [(r.channel, r.detail["wait_estimate_s"]) for r in rows] == [("wechat_mp", 95.0), ("web", 95.0)]
    assert rows[0].detail["retry_after_s"] == 65 and rows[0].detail["limit"] == "estimated wait 95 s > 30 s"
    assert gw.refused_count("web", "backpressure") >= 1


def test_a_webhook_users_messages_over_the_limit_are_stored_and_told_to_wait(start: Any) -> None:
    gw = start(rate_limit_peer="2 per 1 minute",
               webhooks=[webhook_fake.sample_endpoint("http://127.0.0.1:9/kefu/replies")])
    sent = [webhook_fake.post_message(gw.url, webhook_fake.NAME, webhook_fake.SECRET, f"m{n}", "u-hasty", "快递到哪了")
            for n in range(3)]
    assert [r.status_code for r in sent] == [202] * 3  # take(): accepted and stored, the third told to wait
    with gw.sessions() as s:
        statuses = [s.scalars(select(InboundRecord.status).where(InboundRecord.id == r.json()["message_id"])).one()
                    for r in sent]
        reply = s.scalars(select(ReplyRecord).where(ReplyRecord.inbound_id == sent[2].json()["message_id"])).one()
    assert statuses == [InboundStatus.QUEUED, InboundStatus.QUEUED, InboundStatus.ANSWERED]
    assert (reply.source, reply.text) == ("rule", gw.settings.rate_limited_reply)  # delivered by deliver, as any
    assert [r.channel for r in gw.refusals("peer")] == ["webhook"]


def test_gateways_share_the_counts_on_redis_and_count_alone_embedded(start: Any,
                                                                      request: pytest.FixtureRequest) -> None:
    shared = {"rate_limit_ip": "3 per 1 minute", "secret_key": secrets.token_hex(16)}
    first, second = start(**shared), start(**shared)  # two gateway processes' worth, one deployment
    with httpx.Client(timeout=10) as http:
        codes = [http.post(f"{gw.url}/v1/web/sessions").status_code for gw in (first, first, second, second)]
    on_redis = "redis" in request.node.callspec.id
    # Redis: one count for the deployment (the fourth session is over 3); embedded: each process counts alone
    assert codes == ([201, 201, 201, 429] if on_redis else [201, 201, 201, 201])
    if on_redis:
        client = redis.Redis.from_url(first.settings.effective_redis_url or "")
        try:
            keys = [key.decode() for key in client.scan_iter("kefu:limits*")]
        finally:
            client.close()
        mine = subject_hash(str(shared["secret_key"]).encode(), "ip", "127.0.0.1")
        assert [key for key in keys if mine in key]  # this deployment's count, under the address's keyed hash
        assert all("127.0.0.1" not in key for key in keys)  # never the address itself


class _Pulls:
    """The gateway's publisher as request_sync sees it: the pull itself is run by hand here."""

    def pull(self, channel: str, account: str, source: str, countdown: float | None = None) -> None:
        return None


@pytest.mark.parametrize("backend", ["embedded", "redis-postgres"])
def test_kf_messages_pulled_over_a_customers_limit_are_stored_and_told_to_wait(backend: str, tmp_path: Path,
                                                                               request: pytest.FixtureRequest) -> None:
    values: dict[str, Any] = {"data_dir": tmp_path, "secret_key": secrets.token_hex(16), "backpressure_wait_s": 0,
                              "wecom_kf_accounts": [wp.kf_account()], "rate_limit_peer": "2 per 1 minute"}
    database = None
    if backend == "redis-postgres":
        services.ensure_postgres()
        database, url = services.create_database()
        values.update(database_url=url, redis_url=request.getfixturevalue("redis_url"))
    try:
        with FakeWeChat() as fake:
            fake.add_corp_app(wp.CORPID, wp.KF_SECRET)
            settings = Settings(**values, wecom_api_base=fake.base_url)
            upgrade(settings)
            rt = Runtime(settings)  # the io worker's: its puller gets the worker's admission
            try:
                kfid = "wkLimited01"
                fake.queue_kf_messages(kfid, [{"external_userid": "wm-hasty", "content": f"快递到哪了{n}"}
                                              for n in range(4)])
                request_sync(rt.sessions, _Pulls(), rt.kv, "kf", kfid, None)  # type: ignore[arg-type]
                assert rt.puller("wecom_kf").run("kf", kfid) == 4  # every message stored
                with rt.sessions() as s:
                    rows = list(s.scalars(select(InboundRecord).order_by(InboundRecord.id)))
                    replies = {r.inbound_id: r for r in s.scalars(select(ReplyRecord))}
                    refused = list(s.scalars(select(AuditEvent).where(AuditEvent.kind == "admission_refused")))
            finally:
                rt.close()
    finally:
        if database is not None:
            services.drop_database(database)
    assert [row.status for row in rows] == ["queued", "queued", "answered", "answered"]
    assert [(replies[row.id].source, replies[row.id].text) for row in rows[2:]] == [
        ("rule", settings.rate_limited_reply)] * 2  # sent by deliver as a kf message, like any reply
    assert [(e.channel, e.detail["scope"]) for e in refused] == [("wecom_kf", "peer")] * 2
