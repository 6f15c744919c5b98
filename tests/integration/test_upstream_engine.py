"""The upstream engine (workers/llm/upstream.py) against a real OpenAI-compatible server: llama-cpp-python's own
``llama_cpp.server`` on the tiny random-weight GGUF, in a child process (tests/openai_server.py).

Failures a real server will not produce on demand (a 503, a server that accepts and never answers, a stream with a
think block and ``usage``) come from loopback servers in this file that speak the same HTTP/SSE protocol.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from models.envelope import Turn, printable
from models.settings import Settings
from tests.openai_server import OpenAIServer
from workers.llm.upstream import UpstreamEngine, UpstreamError

pytestmark = pytest.mark.integration

TURNS = [Turn("system", "你是一名客服。"), Turn("user", "你好，我的订单什么时候发货？")]


@pytest.fixture(scope="module")
def server(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAIServer]:
    running = OpenAIServer(tiny_gguf, tmp_path_factory.mktemp("upstream") / "server.log").start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, temperature=0.0, max_tokens=24, seed=7)


_made: list[UpstreamEngine] = []


@pytest.fixture(autouse=True)
def _close_engines() -> Iterator[None]:
    yield
    while _made:
        _made.pop().close()


def engine(settings: Settings, *urls: str, key: str | None = None, model: str = "tiny-upstream",
           timeout_s: float | None = None) -> UpstreamEngine:
    made = UpstreamEngine(list(urls), model, settings, api_key=key, timeout_s=timeout_s)
    _made.append(made)
    return made


class Scripted(BaseHTTPRequestHandler):
    """A loopback OpenAI-style endpoint: ``status`` and ``body`` for every POST; SSE when ``events`` is given."""

    status = 200
    body: ClassVar[dict[str, object]] = {}
    events: ClassVar[list[dict[str, object]] | None] = None
    hits = 0

    def do_POST(self) -> None:
        type(self).hits += 1
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.events is None:
            payload = json.dumps(self.body).encode()
            self.send_response(self.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for event in self.events:
            self.wfile.write(f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode())
        self.wfile.write(b": keep-alive comment\n\ndata: [DONE]\n\n")

    def log_message(self, *_: object) -> None:
        pass


def serve(handler: type[BaseHTTPRequestHandler]) -> tuple[str, ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}/v1", httpd


def refused_url() -> str:
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/v1"


def test_the_servers_answer_streams_and_equals_its_plain_completion(server: OpenAIServer, settings: Settings) -> None:
    up = engine(settings, server.url, key=server.api_key)
    up.load()
    assert up.loaded and "tiny-upstream" in up.label and server.api_key not in up.label
    pieces: list[str] = []
    streamed = up.generate(TURNS, on_text=pieces.append)
    plain = up.generate(TURNS)  # no listener: the same request, read to its end
    # the server's own non-streamed answer to the same request (greedy): the text Kefu assembled is the server's
    direct = httpx.post(f"{server.url}/chat/completions", headers={"Authorization": f"Bearer {server.api_key}"},
                        json={"model": "tiny-upstream", "messages": [{"role": t.role, "content": t.text} for t in TURNS],
                              "max_tokens": 24, "temperature": 0.0, "top_p": settings.top_p,
                              "presence_penalty": settings.presence_penalty, "seed": 7}, timeout=60).json()
    assert streamed.text and streamed.text == plain.text == printable(direct["choices"][0]["message"]["content"]).strip()
    assert len(pieces) >= 2 and "".join(pieces).strip() == streamed.text
    assert streamed.model == "tiny-upstream" and streamed.finish_reason in ("stop", "length")
    # llama_cpp.server sends no usage in a stream: one token per streamed chunk, the prompt estimated
    assert streamed.completion_tokens >= len(pieces) and streamed.prompt_tokens > 0
    assert streamed.first_token_s is not None


def test_a_listener_that_goes_away_cancels_and_the_server_serves_on(server: OpenAIServer, settings: Settings) -> None:
    up = engine(settings, server.url, key=server.api_key)
    assert not up.loaded
    seen: list[str] = []
    cancelled = up.generate(TURNS, on_text=lambda piece: seen.append(piece) or False)
    assert cancelled.finish_reason == "cancelled"
    assert len(seen) == 1 and cancelled.text == seen[0].strip()
    assert up.loaded  # it answered: the heartbeat says so even without load() (a worker started without --warm)
    after = up.generate(TURNS)
    assert after.finish_reason in ("stop", "length") and after.text.startswith(cancelled.text)


def test_the_deadline_ends_a_stream_with_the_text_so_far(server: OpenAIServer, settings: Settings) -> None:
    up = engine(settings, server.url, key=server.api_key)
    full = up.generate(TURNS)
    slow: list[str] = []

    def slow_listener(piece: str) -> None:
        slow.append(piece)
        time.sleep(0.1)  # a slow consumer: 24 pieces would take 2.4 s, the deadline comes first

    cut = up.generate(TURNS, on_text=slow_listener, deadline=time.monotonic() + 0.35)
    assert cut.finish_reason == "deadline"
    assert 1 <= len(slow) < 24 and full.text.startswith(cut.text)
    assert up.generate(TURNS, deadline=time.monotonic() - 1).finish_reason == "deadline"  # too late: not even sent


def test_a_server_that_never_answers_ends_at_the_deadline(settings: Settings) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        up = engine(settings, f"http://127.0.0.1:{silent.getsockname()[1]}/v1")
        answer = up.generate(TURNS, deadline=time.monotonic() + 0.5)
        assert answer.finish_reason == "deadline" and answer.text == ""
        stalled = engine(settings, f"http://127.0.0.1:{silent.getsockname()[1]}/v1", timeout_s=0.3)
        with pytest.raises(UpstreamError, match="no answer within the timeout"):
            stalled.generate(TURNS)  # no deadline: the upstream timeout bounds the wait, and says so


def test_a_fleet_skips_a_dead_url_and_a_5xx(server: OpenAIServer, settings: Settings) -> None:
    class Busy(Scripted):
        status, body, events, hits = 503, {"error": {"message": "the engine is overloaded"}}, None, 0

    busy_url, httpd = serve(Busy)
    try:
        up = engine(settings, refused_url(), busy_url, server.url, key=server.api_key)
        answers = [up.generate(TURNS) for _ in range(3)]  # round-robin: each call starts at another URL
        assert all(a.text and a.finish_reason in ("stop", "length") for a in answers)
        assert len({a.text for a in answers}) == 1
        assert Busy.hits == 2  # the calls that started at the dead URL or at it; the one that started live did not
        everything_down = engine(settings, refused_url(), busy_url)
        with pytest.raises(UpstreamError, match="every upstream URL failed") as failed:
            everything_down.generate(TURNS)
        assert "503" in str(failed.value) and "overloaded" in str(failed.value)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_4xx_is_surfaced_without_the_key_and_not_tried_elsewhere(server: OpenAIServer, settings: Settings) -> None:
    class Busy(Scripted):
        status, body, events, hits = 503, {"error": {"message": "busy"}}, None, 0

    busy_url, httpd = serve(Busy)
    wrong = "sk-wrong-key-abcdef123456"
    try:
        up = engine(settings, server.url, busy_url, key=wrong)
        for _ in range(2):  # first from the live server (401), then from the busy one (503, then the live one: 401)
            with pytest.raises(UpstreamError) as refused:
                up.generate(TURNS)
            message = str(refused.value)
            assert "401" in message and "KEFU_UPSTREAM_API_KEY" in message and wrong not in message
        assert Busy.hits == 1  # the 401 never moved a request on to the next URL
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_load_checks_the_server_and_the_model(server: OpenAIServer, settings: Settings) -> None:
    engine(settings, refused_url(), server.url, key=server.api_key).load()  # one answering URL is enough
    with pytest.raises(UpstreamError, match=r"does not serve model 'qwen3-14b'.*tiny-upstream.*KEFU_UPSTREAM_MODEL"):
        engine(settings, server.url, key=server.api_key, model="qwen3-14b").load()
    with pytest.raises(UpstreamError, match="401") as refused:
        engine(settings, server.url, key="sk-not-the-key-000000").load()
    assert "sk-not-the-key-000000" not in str(refused.value) and "KEFU_UPSTREAM_API_KEY" in str(refused.value)
    with pytest.raises(UpstreamError, match="cannot connect") as unreachable:
        engine(settings, refused_url().replace("http://", "http://kefu:hunter2@")).load()
    assert "hunter2" not in str(unreachable.value) and "kefu:****@" in str(unreachable.value)


def test_think_blocks_are_removed_and_the_servers_usage_is_used(settings: Settings) -> None:
    def delta(text: str) -> dict[str, object]:
        return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}

    class Thinking(Scripted):
        events: ClassVar[list[dict[str, object]] | None] = [
            delta("<thi"), delta("nk>让我想想"), delta("</think>\n\n"), delta("您好，"), delta("订单已发货。"),
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            {"choices": [], "usage": {"prompt_tokens": 31, "completion_tokens": 9, "total_tokens": 40}}]

    url, httpd = serve(Thinking)
    try:
        pieces: list[str] = []
        answer = engine(settings, url).generate(TURNS, on_text=pieces.append)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert answer.text == "您好，订单已发货。" and "".join(pieces) == "您好，订单已发货。"
    assert (answer.prompt_tokens, answer.completion_tokens, answer.finish_reason) == (31, 9, "stop")
