"""Log lines: JSON with request and conversation ids, personal data still masked; the gateway's request ids and
access log (no query string, no body, silenceable), through a real socket."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from typing import Literal

import httpx
import pytest
import uvicorn
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from channels.access_log import Gateway
from models import privacy
from models.infra import logs
from workers import cli
from workers.demo.processes import free_port

access = logging.getLogger("kefu.access")
app_log = logging.getLogger("kefu.test.route")


def capture(log_format: Literal["text", "json"] = "json") -> tuple[logging.Handler, io.StringIO]:
    stream = io.StringIO()
    return logs.handler(log_format, stream), stream


def test_a_json_line_has_the_fields_and_the_ids_of_its_context() -> None:
    handler, stream = capture()
    logger = logging.getLogger("kefu.test.json")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("outside %s", "any scope")
        with logs.request_scope("req-1"), logs.conversation_scope(42):
            logger.warning("inside")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    outside, inside, failed = (json.loads(line) for line in stream.getvalue().splitlines())
    assert set(outside) == {"time", "level", "logger", "message"}
    assert outside["message"] == "outside any scope" and outside["logger"] == "kefu.test.json"
    assert outside["time"].endswith("Z") and outside["level"] == "INFO"
    assert inside["request_id"] == "req-1" and inside["conversation_id"] == "42" and inside["level"] == "WARNING"
    assert "ValueError: boom" in failed["exception"] and "request_id" not in failed


def test_personal_data_is_masked_in_json_lines_too() -> None:
    privacy.install_log_masking()
    handler, stream = capture()
    logger = logging.getLogger("kefu.test.pii")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("customer said: my phone is %s", "13812345678")
    finally:
        logger.removeHandler(handler)
    line = stream.getvalue()
    assert "13812345678" not in line and json.loads(line)["message"].startswith("customer said: my phone is ")


def test_text_lines_show_the_ids_when_known() -> None:
    handler, stream = capture("text")
    logger = logging.getLogger("kefu.test.text")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("plain")
        with logs.conversation_scope(7):
            logger.info("in a conversation")
    finally:
        logger.removeHandler(handler)
    plain, conversation = stream.getvalue().splitlines()
    assert plain.endswith("INFO kefu.test.text: plain")
    assert conversation.endswith("INFO kefu.test.text: in a conversation [conversation_id=7]")


@pytest.mark.parametrize(("given", "kept"), [("abc-123", True), ("a" * 128, True), ("a" * 129, False),
                                             ("has space", False), ('quote"', False), ("", False)])
def test_only_a_safe_caller_request_id_is_kept(given: str, kept: bool) -> None:
    assert (logs.acceptable_request_id(given) == given) is kept


def test_setup_logging_writes_json_through_one_root_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as in a fresh process (pytest's capture handlers set aside)
    monkeypatch.setattr(root, "level", root.level)
    cli.setup_logging("INFO", "json")
    cli.setup_logging("INFO", "json")  # again: replaced, not doubled
    assert len(root.handlers) == 1 and isinstance(root.handlers[0].formatter, logs.JsonFormatter)
    cli.setup_logging("INFO", "text")
    assert len(root.handlers) == 1 and isinstance(root.handlers[0].formatter, logs.TextFormatter)


# --- the gateway's request ids and access log, on a real socket --------------------------------------------------


async def where(request: Request) -> Response:
    app_log.info("handling")
    in_thread = await run_in_threadpool(logs.REQUEST_ID.get)  # the id follows the request into the thread pool
    return JSONResponse({"request_id": logs.REQUEST_ID.get(), "in_thread": in_thread})


async def boom(request: Request) -> Response:
    raise RuntimeError("unexpected")


async def server_error(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "unavailable"}, status_code=503)


def serve(log_requests: bool) -> Iterator[str]:
    app = Gateway(routes=[Route("/where", where, methods=["GET", "POST"]), Route("/boom", boom),
                          Route("/healthz", where)], exception_handlers={Exception: server_error})
    app.log_requests = log_requests
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical",
                                           access_log=False, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        threading.Event().wait(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def gateway() -> Iterator[str]:
    yield from serve(True)


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    caught: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            caught.append(record)

    keep = Keep(logging.DEBUG)
    keep.addFilter(logs.ContextFilter())
    for logger in (access, app_log):
        logger.addHandler(keep)
        logger.setLevel(logging.DEBUG)
    yield caught
    for logger in (access, app_log):
        logger.removeHandler(keep)
        logger.setLevel(logging.NOTSET)


def test_a_caller_request_id_is_honoured_echoed_and_logged(gateway: str, records: list[logging.LogRecord]) -> None:
    with httpx.Client(base_url=gateway, timeout=10) as http:
        answer = http.get("/where", headers={"X-Request-ID": "lb-7f3a"})
    assert answer.headers["x-request-id"] == "lb-7f3a"
    assert answer.json() == {"request_id": "lb-7f3a", "in_thread": "lb-7f3a"}
    handled = [r for r in records if r.name == app_log.name]
    assert [getattr(r, "request_id", None) for r in handled] == ["lb-7f3a"]
    (line,) = [r for r in records if r.name == "kefu.access"]
    assert line.levelno == logging.INFO and getattr(line, "request_id", None) == "lb-7f3a"
    method, path, status, duration = line.getMessage().split(" ")
    assert (method, path, status) == ("GET", "/where", "200") and duration.endswith("ms")


def test_a_request_without_one_gets_a_new_id_each(gateway: str) -> None:
    with httpx.Client(base_url=gateway, timeout=10) as http:
        first, second = http.get("/where"), http.get("/where", headers={"X-Request-ID": "bad id with spaces"})
    assert first.headers["x-request-id"] == first.json()["request_id"]
    assert second.headers["x-request-id"] not in ("bad id with spaces", first.headers["x-request-id"])
    assert len(second.headers["x-request-id"]) == 32


def test_the_access_log_never_has_a_query_string_or_a_body(gateway: str, records: list[logging.LogRecord]) -> None:
    secret = "signature=0f1e2d3c4b5a&timestamp=1700000000&nonce=12345&openid=oAbCdEf"
    with httpx.Client(base_url=gateway, timeout=10) as http:
        http.post(f"/where?{secret}", content="<xml><Content>我的手机号</Content></xml>")
    (line,) = [r for r in records if r.name == "kefu.access"]
    assert line.getMessage().startswith("POST /where 200 ")
    formatted = logs.JsonFormatter().format(line)
    for part in ("signature", "0f1e2d3c4b5a", "nonce", "oAbCdEf", "Content", "手机号", "?"):
        assert part not in formatted


def test_a_failed_request_is_logged_with_the_status_it_got(gateway: str, records: list[logging.LogRecord]) -> None:
    with httpx.Client(base_url=gateway, timeout=10) as http:
        answer = http.get("/boom", headers={"X-Request-ID": "r-500"})
    assert answer.status_code == 503 and answer.headers["x-request-id"] == "r-500"
    (line,) = [r for r in records if r.name == "kefu.access"]
    assert line.getMessage().startswith("GET /boom 503 ")


def test_probes_log_at_debug_and_the_log_can_be_turned_off(gateway: str, records: list[logging.LogRecord]) -> None:
    with httpx.Client(base_url=gateway, timeout=10) as http:
        http.get("/healthz")
    assert [r.levelno for r in records if r.name == "kefu.access"] == [logging.DEBUG]
    records.clear()
    for url in serve(False):
        with httpx.Client(base_url=url, timeout=10) as http:
            assert http.get("/where", headers={"X-Request-ID": "quiet"}).headers["x-request-id"] == "quiet"
    assert [r for r in records if r.name == "kefu.access"] == []
