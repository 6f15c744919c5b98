"""Bad input at the gateway: the right status, a message a person can act on, and no trace of it.

Runs the real gateway on a real socket (embedded backends; no worker is needed to reject input).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from models.infra import heartbeat
from models.infra.db import make_engine, make_session_factory
from models.infra.kv import make_kv
from models.infra.migrate import upgrade
from models.settings import Settings
from models.tables import AuditEvent, InboundRecord
from workers.demo.processes import GatewayThread


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayThread, Settings]]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("gw"), secret_key="k", max_text_chars=50,
                        allowed_origins=["https://shop.example.cn"])
    upgrade(settings)
    gw = GatewayThread(settings).start()
    yield gw, settings
    gw.stop()


@pytest.fixture
def client(gateway: tuple[GatewayThread, Settings]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway[0].http_url, timeout=10) as http:
        yield http


def counts(settings: Settings) -> tuple[int, int]:
    engine = make_engine(settings)
    try:
        with make_session_factory(engine)() as s:
            return (s.scalar(select(func.count()).select_from(InboundRecord)) or 0,
                    s.scalar(select(func.count()).select_from(AuditEvent)) or 0)
    finally:
        engine.dispose()


def visitor(client: httpx.Client) -> tuple[str, dict[str, str]]:
    body = client.post("/v1/web/sessions").json()
    return body["visitor_id"], {"Authorization": f"Bearer {body['token']}"}


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ('{"visitor_id": "V", "text": ""}', 422, "empty_text"),
        ('{"visitor_id": "V", "text": "   \\n "}', 422, "empty_text"),
        ('{"visitor_id": "V"}', 422, "missing_text"),
        ('{"visitor_id": "V", "text": 42}', 422, "invalid_text"),
        ('{"visitor_id": "V", "text": "' + "长" * 51 + '"}', 413, "text_too_long"),
        ('{"visitor_id": "V", "text": "hi"', 400, "malformed_json"),
        ('["not", "an", "object"]', 400, "malformed_json"),
        ('{"visitor_id": "V", "text": "hi", "client_msg_id": ""}', 422, "invalid_client_msg_id"),
        # poison input a client would otherwise retry for ever after a 503
        ('{"visitor_id": "V", "text": "hi \\ud800 there"}', 422, "invalid_text"),
        ('{"visitor_id": "V", "text": "hi", "client_msg_id": "a\\udfffb"}', 422, "invalid_client_msg_id"),
        ('{"visitor_id": "V", "text": "hi", "x": ' + "[" * 20_000 + "]" * 20_000 + "}", 400, "malformed_json"),
    ],
)
def test_rejected_messages_leave_no_trace(
    client: httpx.Client, gateway: tuple[GatewayThread, Settings], payload: str, status: int, code: str
) -> None:
    visitor_id, auth = visitor(client)
    before = counts(gateway[1])
    r = client.post("/v1/web/messages", content=payload.replace('"V"', json.dumps(visitor_id)),
                    headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and len(error["message"]) > 10
    assert counts(gateway[1]) == before


def test_text_limit_message_names_the_limit(client: httpx.Client) -> None:
    visitor_id, auth = visitor(client)
    r = client.post("/v1/web/messages", json={"visitor_id": visitor_id, "text": "x" * 60}, headers=auth)
    assert r.status_code == 413
    assert "60" in r.json()["error"]["message"] and "50" in r.json()["error"]["message"]


def test_auth_errors(client: httpx.Client, gateway: tuple[GatewayThread, Settings]) -> None:
    visitor_id, auth = visitor(client)
    other_id, _ = visitor(client)
    before = counts(gateway[1])
    cases = [
        ({}, visitor_id, 401, "missing_token"),
        ({"Authorization": "Bearer v1.abc.1.sig"}, visitor_id, 401, "invalid_token"),
        (auth, other_id, 403, "wrong_visitor"),
    ]
    for headers, vid, status, code in cases:
        r = client.post("/v1/web/messages", json={"visitor_id": vid, "text": "hi"}, headers=headers)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code)
    assert counts(gateway[1]) == before


def test_body_size_and_media_type(client: httpx.Client) -> None:
    visitor_id, auth = visitor(client)
    big = json.dumps({"visitor_id": visitor_id, "text": "x" * 70_000})
    r = client.post("/v1/web/messages", content=big, headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    r = client.post("/v1/web/messages", content="text=hi", headers={**auth, "Content-Type": "text/plain"})
    assert r.status_code == 415


def test_control_characters_are_dropped_not_fatal(client: httpx.Client, gateway: tuple[GatewayThread, Settings]) -> None:
    visitor_id, auth = visitor(client)
    r = client.post("/v1/web/messages", json={"visitor_id": visitor_id, "text": "退\u0000货\u0007"}, headers=auth)
    assert r.status_code == 202
    engine = make_engine(gateway[1])
    with make_session_factory(engine)() as s:
        assert s.get(InboundRecord, r.json()["message_id"]).text == "退货"  # type: ignore[union-attr]
    engine.dispose()
    only_controls = client.post("/v1/web/messages", json={"visitor_id": visitor_id, "text": "\u0000\u0001"}, headers=auth)
    assert only_controls.status_code == 422


def test_accepted_message_is_persisted_and_queued(client: httpx.Client, gateway: tuple[GatewayThread, Settings]) -> None:
    visitor_id, auth = visitor(client)
    before = counts(gateway[1])
    r = client.post("/v1/web/messages", json={"visitor_id": visitor_id, "text": " 你好 "}, headers=auth)
    assert r.status_code == 202
    engine = make_engine(gateway[1])
    with make_session_factory(engine)() as s:
        row = s.get(InboundRecord, r.json()["message_id"])
        assert row is not None and row.text == "你好" and row.status == "queued"
        kinds = list(s.scalars(select(AuditEvent.kind).where(AuditEvent.inbound_id == row.id).order_by(AuditEvent.id)))
    engine.dispose()
    assert kinds == ["received", "queued"]
    assert counts(gateway[1]) == (before[0] + 1, before[1] + 2)


def test_websocket_bad_frames_keep_the_connection(client: httpx.Client, gateway: tuple[GatewayThread, Settings]) -> None:
    token = client.post("/v1/web/sessions").json()["token"]
    before = counts(gateway[1])
    with connect(f"{gateway[0].ws_url}/v1/web/ws?token={token}") as ws:
        expected = [
            ("not json", "malformed_frame"),
            ('"a string"', "malformed_frame"),
            ('{"type": "dance"}', "unknown_frame_type"),
            ('{"type": "message", "text": ""}', "empty_text"),
            ('{"type": "message", "text": "' + "x" * 51 + '"}', "text_too_long"),
            ('{"type": "ack", "reply_id": "seven"}', "invalid_reply_id"),
        ]
        for raw, code in expected:
            ws.send(raw)
            frame = json.loads(ws.recv(timeout=5))
            assert frame["type"] == "error" and frame["code"] == code, frame
        ws.send(json.dumps({"type": "ping"}))
        assert json.loads(ws.recv(timeout=5)) == {"type": "pong"}
    assert counts(gateway[1]) == before


def test_websocket_requires_token_and_allowed_origin(client: httpx.Client, gateway: tuple[GatewayThread, Settings]) -> None:
    gw = gateway[0]
    token = client.post("/v1/web/sessions").json()["token"]
    with pytest.raises(InvalidStatus) as missing:
        connect(f"{gw.ws_url}/v1/web/ws")
    assert missing.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as foreign:
        connect(f"{gw.ws_url}/v1/web/ws?token={token}", origin="https://evil.example.com")  # type: ignore[arg-type]
    assert foreign.value.response.status_code == 403
    with connect(f"{gw.ws_url}/v1/web/ws?token={token}", origin="https://shop.example.cn") as ws:  # type: ignore[arg-type]
        ws.send('{"type": "ping"}')
        assert json.loads(ws.recv(timeout=5))["type"] == "pong"
    with connect(f"{gw.ws_url}/v1/web/ws?token={token}", origin=f"http://127.0.0.1:{gw.port}") as ws:  # type: ignore[arg-type]
        ws.send('{"type": "ping"}')
        assert json.loads(ws.recv(timeout=5))["type"] == "pong"


def test_health_and_unknown_routes(client: httpx.Client, gateway: tuple[GatewayThread, Settings]) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")  # no worker runs here: database and broker answer, nothing could answer a message
    assert ready.status_code == 503 and ready.json()["missing"] == ["llm_worker"]
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "llm_worker": "none alive"}
    kv = make_kv(gateway[1])  # what an LLM worker's heartbeat writes (the SQLite KV file every process here shares)
    cold = heartbeat.Heartbeat(node="llm@test", pid=1, model="tiny", loaded=False)
    try:
        heartbeat.beat(kv, cold)
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["missing"] == ["llm_model"]
        heartbeat.beat(kv, dataclasses.replace(cold, loaded=True))
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["missing"] == []
        assert ready.json()["llm_workers"] == [{"node": "llm@test", "model": "tiny", "loaded": True}]
    finally:
        heartbeat.stopped(kv, cold)
    assert client.get("/readyz").status_code == 503
    r = client.get("/v1/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert "<html" in client.get("/").text


def test_readyz_reports_an_unreachable_broker(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, secret_key="k", broker_url="redis://127.0.0.1:1/0", publish_timeout_s=0.5)
    upgrade(settings)
    gw = GatewayThread(settings).start()
    try:
        with httpx.Client(base_url=gw.http_url, timeout=20) as http:
            r = http.get("/readyz")
        assert r.status_code == 503
        assert r.json()["checks"]["database"] == "ok"
        assert r.json()["checks"]["broker"].startswith("unreachable")
    finally:
        gw.stop()


def test_two_visitors_with_the_same_client_msg_id_send_two_messages(
    client: httpx.Client, gateway: tuple[GatewayThread, Settings]
) -> None:
    """The idempotency key belongs to its sender: "1" from one visitor is not a retry of "1" from another."""
    ids = []
    for _ in range(2):
        visitor_id, auth = visitor(client)
        r = client.post("/v1/web/messages", json={"visitor_id": visitor_id, "text": "在吗", "client_msg_id": "1"},
                        headers=auth)
        assert r.status_code == 202 and r.json()["duplicate"] is False
        again = client.post("/v1/web/messages", json={"visitor_id": visitor_id, "text": "在吗", "client_msg_id": "1"},
                            headers=auth)
        assert again.json() == {"message_id": r.json()["message_id"], "duplicate": True}  # the same visitor's retry
        ids.append(r.json()["message_id"])
    assert ids[0] != ids[1]


@pytest.mark.parametrize("limit", ["abc", "-1", "1.5"])
def test_a_bad_history_limit_is_a_clear_4xx(client: httpx.Client, limit: str) -> None:
    visitor_id, auth = visitor(client)
    r = client.get(f"/v1/web/conversations/{visitor_id}", params={"limit": limit}, headers=auth)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_limit"
