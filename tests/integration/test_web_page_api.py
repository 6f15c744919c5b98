"""What the chat page and the widget need of the web channel's HTTP API and socket (issue 13).

A real gateway on a real socket (embedded backends; nothing here needs a worker): CORS for the origins in
KEFU_WEB_CORS_ORIGINS only, checked with real preflight requests; none at all by default; the welcome the page
shows (configured, and Simplified Chinese by default); the widget script; and the ``client_msg_id`` in the error
frame that refuses a ``message`` frame, which the page uses to give the text back to the visitor.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from channels.web import DEFAULT_WELCOME, WebSettings
from models.infra.migrate import upgrade
from models.settings import ConfigError, Settings
from workers.demo.processes import GatewayThread

SHOP = "https://shop.example.cn"
OTHER = "https://evil.example.com"
WELCOME = "欢迎光临，有什么可以帮您？"
WIDGET = Path(__file__).resolve().parents[2] / "channels" / "static" / "widget.js"


def start(tmp: Path, **values: object) -> GatewayThread:
    settings = Settings(data_dir=tmp, secret_key="k", max_text_chars=50, **values)
    upgrade(settings)
    return GatewayThread(settings).start()


@pytest.fixture(scope="module")
def with_cors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    gw = start(tmp_path_factory.mktemp("cors"), web_cors_origins=[SHOP], web_welcome_message=WELCOME)
    try:
        with httpx.Client(base_url=gw.http_url, timeout=10) as client:
            yield client
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    gw = start(tmp_path_factory.mktemp("plain"))
    try:
        yield gw
    finally:
        gw.stop()


def preflight(client: httpx.Client, path: str, origin: str, method: str = "POST") -> httpx.Response:
    return client.options(path, headers={"Origin": origin, "Access-Control-Request-Method": method,
                                         "Access-Control-Request-Headers": "authorization, content-type"})


@pytest.mark.parametrize(("path", "method"), [("/v1/web/sessions", "POST"), ("/v1/web/messages", "POST"),
                                              ("/v1/web/conversations/v-1", "GET")])
def test_a_preflight_from_an_allowed_origin_gets_the_cors_headers(with_cors: httpx.Client, path: str,
                                                                  method: str) -> None:
    allowed = preflight(with_cors, path, SHOP, method)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == SHOP
    assert method in allowed.headers["access-control-allow-methods"]
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()

    refused = preflight(with_cors, path, OTHER, method)
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers


def test_the_answer_itself_names_only_an_allowed_origin(with_cors: httpx.Client) -> None:
    allowed = with_cors.post("/v1/web/sessions", headers={"Origin": SHOP})
    assert allowed.status_code == 201 and allowed.headers["access-control-allow-origin"] == SHOP
    other = with_cors.post("/v1/web/sessions", headers={"Origin": OTHER})
    assert other.status_code == 201  # CORS is the browser's rule: the other page's script cannot read this
    assert "access-control-allow-origin" not in other.headers


def test_cors_is_off_by_default_and_only_on_the_web_routes(plain: GatewayThread, with_cors: httpx.Client) -> None:
    with httpx.Client(base_url=plain.http_url, timeout=10) as client:
        answer = preflight(client, "/v1/web/sessions", SHOP)
        assert answer.status_code == 405 and "access-control-allow-origin" not in answer.headers
        assert "access-control-allow-origin" not in client.post("/v1/web/sessions", headers={"Origin": SHOP}).headers
    assert "access-control-allow-origin" not in with_cors.get("/healthz", headers={"Origin": SHOP}).headers


def test_a_cors_origin_must_be_an_origin() -> None:
    with pytest.raises(ConfigError, match=r"^KEFU_WEB_CORS_ORIGINS: .shop\.example\.cn. is not an origin"):
        Settings(web_cors_origins=["shop.example.cn"]).section(WebSettings)
    assert Settings(web_cors_origins=f"{SHOP}, http://localhost:8080").section(WebSettings).web_cors_origins == [
        SHOP, "http://localhost:8080"]


def test_the_welcome_is_configured_and_chinese_by_default(plain: GatewayThread, with_cors: httpx.Client) -> None:
    assert with_cors.get("/v1/web/config").json() == {"welcome_message": WELCOME}
    with httpx.Client(base_url=plain.http_url, timeout=10) as client:
        assert client.get("/v1/web/config").json() == {"welcome_message": DEFAULT_WELCOME}
    assert DEFAULT_WELCOME.startswith("您好")


def test_the_widget_script_is_served(with_cors: httpx.Client) -> None:
    answer = with_cors.get("/v1/web/widget.js")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/javascript")
    assert answer.text == WIDGET.read_text(encoding="utf-8")


def test_a_refused_message_frame_is_named_by_its_client_msg_id(plain: GatewayThread) -> None:
    with httpx.Client(base_url=plain.http_url, timeout=10) as client:
        token = client.post("/v1/web/sessions").json()["token"]
    with connect(f"{plain.ws_url}/v1/web/ws?token={token}") as ws:
        ws.send(json.dumps({"type": "ping"}))
        assert json.loads(ws.recv(timeout=5)) == {"type": "pong"}
        ws.send(json.dumps({"type": "message", "text": "长" * 51, "client_msg_id": "m-1"}))
        error = json.loads(ws.recv(timeout=5))
        assert (error["type"], error["code"], error["client_msg_id"]) == ("error", "text_too_long", "m-1")
        ws.send(json.dumps({"type": "message", "text": "   "}))  # no client_msg_id: nothing to name
        error = json.loads(ws.recv(timeout=5))
        assert error["code"] == "empty_text" and "client_msg_id" not in error
        ws.send(json.dumps({"type": "ack", "reply_id": "x"}))  # not a message frame: no client_msg_id either
        error = json.loads(ws.recv(timeout=5))
        assert error["code"] == "invalid_reply_id" and "client_msg_id" not in error
