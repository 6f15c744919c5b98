"""Locust users for Kefu's load test (issue 15): web-chat visitors on the WebSocket and OpenAI-API clients.

Run by ``bench/load_test.py``, which starts the stack and reads the results; by hand against a running gateway::

    LOADTEST_API_KEY=sk-… locust -f bench/locustfile.py --headless --host http://127.0.0.1:8000 \\
        --kefu-stages 100:60,250:60 --kefu-model NAME --csv out/locust [WebChatUser OpenAIUser]

- :class:`WebChatUser` (weight 3): ``POST /v1/web/sessions``, then one WebSocket (``/v1/web/ws?token=…``) for
  the visit; each question is a ``message`` frame. **accept** = frame sent → its ``accepted`` frame (the gateway
  stored it and queued it); **reply** = frame sent → the ``reply`` frame for that message (the whole answer,
  after its ``token`` frames), which is then acked. A person's pause before each question, the first included:
  ``--kefu-think`` (5-15 s).
- :class:`OpenAIUser` (weight 1): ``POST /v1/chat/completions`` with its own ``user`` (one conversation per
  simulated client). Streaming (``--kefu-stream-share``, 80 %): **accept** = request sent → response headers
  (status 200); **reply** = → ``data: [DONE]``. Non-streaming: **reply** only (the headers come with the answer).
- :class:`StagedShape` ramps through ``--kefu-stages`` (``USERS:HOLD_S,…``, :mod:`bench.load_stages`) at
  ``--kefu-spawn-rate`` users/s, so the point where Kefu saturates shows as one stage among calmer ones.

Every measurement is a Locust request event (so ``--csv`` carries it): request type ``web``, ``openai-stream``
or ``openai``, name ``session``, ``connect``, ``accept`` or ``reply``; a refusal (any HTTP status but 200/201,
429 included, an ``error`` frame) or a timeout (``--kefu-timeout``, 60 s) is a failure. With
``--kefu-samples FILE`` each event is also written as one JSON line (seconds since the shape started, kind, name,
milliseconds, ok, and a web reply's ``source``: ``model``, or ``fallback`` when the model failed or missed its
deadline), the first line holding the wall-clock start, for per-stage figures.

Questions: real JD.com customer messages (JDDC 2019), ``tests/data/intents/ecom_dev.tsv`` and
``ecom_heldout.tsv`` (source and licence: ``tests/data/README.md``, section intents; released by JD.com for
research in the challenge), without the ``ask_for_person`` ones: a visitor handed to a person would wait for an
agent, not the model.

The WebSocket client is ``websocket-client`` (blocking sockets, which Locust's gevent monkey-patching makes
cooperative); HTTP is ``requests`` (patched the same way), one session per simulated user.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from pathlib import Path
from typing import Any

import requests
import websocket
from locust import LoadTestShape, User, events, task
from locust.env import Environment

from bench.load_stages import Stage, parse_stages, stage_at

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "intents"


def load_questions() -> list[str]:
    """The JDDC customer messages, without those asking for a person."""
    questions = []
    for name in ("ecom_dev.tsv", "ecom_heldout.tsv"):
        for line in (DATA / name).read_text(encoding="utf-8").splitlines():
            parts = line.split("\t")
            if line.startswith("#") or len(parts) < 4 or parts[2] == "ask_for_person":
                continue
            questions.append(parts[3])
    return questions


QUESTIONS = load_questions()


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--kefu-stages", default="100:60,250:75,500:90,1000:180", help="USERS:HOLD_S,… (ramped)")
    parser.add_argument("--kefu-spawn-rate", type=float, default=25.0, help="users started per second")
    parser.add_argument("--kefu-think", default="5,15", help="MIN,MAX seconds between a user's questions")
    parser.add_argument("--kefu-timeout", type=float, default=60.0, help="seconds before a missing answer fails")
    parser.add_argument("--kefu-model", default="", help="the model name for /v1/chat/completions")
    parser.add_argument("--kefu-stream-share", type=float, default=0.8, help="share of OpenAI requests that stream")
    parser.add_argument("--kefu-api-key", default="", env_var="LOADTEST_API_KEY", include_in_web_ui=False,
                        help="a Kefu API key (kefu apikey add); default: $LOADTEST_API_KEY")
    parser.add_argument("--kefu-samples", default="", help="write every measurement to this JSON-lines file")


def think(user: User) -> float:
    low, high = (float(x) for x in user.environment.parsed_options.kefu_think.split(","))
    return random.uniform(low, high)


# ---- measurements ------------------------------------------------------------------------------------

_rows: list[tuple[float, str, str, float, bool, str | None]] = []


def measure(env: Environment, kind: str, name: str, started: float, error: str | None = None,
            length: int = 0, source: str | None = None) -> None:
    """One Locust request event: ``kind``/``name`` took from ``started`` (``time.perf_counter()``) to now;
    ``source``: a web reply's (model, fallback, faq, rule…), kept in the samples."""
    ms = (time.perf_counter() - started) * 1000
    env.events.request.fire(request_type=kind, name=name, response_time=ms, response_length=length,
                            exception=RuntimeError(error) if error else None, context={"source": source})


@events.request.add_listener
def _keep(request_type: str, name: str, response_time: float, exception: BaseException | None,
          context: dict[str, Any] | None = None, **_: Any) -> None:
    shape = _shape
    if shape is not None:
        _rows.append((shape.get_run_time() - response_time / 1000, request_type, name, response_time,
                      exception is None, (context or {}).get("source")))


@events.quitting.add_listener
def _write_samples(environment: Environment, **_: Any) -> None:
    path = environment.parsed_options.kefu_samples if environment.parsed_options else ""
    if not path or _shape is None:
        return
    with open(path, "w", encoding="utf-8") as out:
        out.write(json.dumps({"t0_wall": time.time() - _shape.get_run_time()}) + "\n")
        for t, kind, name, ms, ok, source in _rows:
            row = {"t": round(t, 3), "kind": kind, "name": name, "ms": round(ms, 1), "ok": ok}
            out.write(json.dumps({**row, "source": source} if source else row) + "\n")


# ---- users -------------------------------------------------------------------------------------------

class WebChatUser(User):
    """A visitor on the chat page: one session, one WebSocket, questions with a person's pauses."""

    weight = 3
    wait_time = think

    def on_start(self) -> None:
        self.http = requests.Session()
        self.ws: websocket.WebSocket | None = None
        self.token = ""
        self._pending = "accept"  # what a failure of the current question counts against
        time.sleep(think(self))  # a visitor reads the page and types before the first question (gevent: yields)

    def on_stop(self) -> None:
        self._close()
        self.http.close()

    def _close(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close(timeout=1)
            except Exception:  # closing a socket that may already be dead
                pass
            self.ws = None

    def _connect(self) -> bool:
        timeout = self.environment.parsed_options.kefu_timeout
        if not self.token:
            started = time.perf_counter()
            try:
                answer = self.http.post(f"{self.host}/v1/web/sessions", timeout=timeout)
            except requests.RequestException as exc:
                measure(self.environment, "web", "session", started, type(exc).__name__)
                return False
            if answer.status_code != 201:
                measure(self.environment, "web", "session", started, f"HTTP {answer.status_code}")
                return False
            measure(self.environment, "web", "session", started, length=len(answer.content))
            self.token = answer.json()["token"]
        started = time.perf_counter()
        url = str(self.host).replace("http", "ws", 1) + f"/v1/web/ws?token={self.token}"
        try:
            self.ws = websocket.create_connection(url, timeout=timeout)
        except Exception as exc:  # refused, reset, timed out, 1008: whatever stops the socket from opening
            measure(self.environment, "web", "connect", started, type(exc).__name__)
            return False
        measure(self.environment, "web", "connect", started)
        return True

    @task
    def ask(self) -> None:
        if self.ws is None and not self._connect():
            return
        assert self.ws is not None
        client_msg_id = uuid.uuid4().hex[:16]
        started = time.perf_counter()
        try:
            self.ws.send(json.dumps({"type": "message", "text": random.choice(QUESTIONS),
                                     "client_msg_id": client_msg_id}, ensure_ascii=False))
            self._await(client_msg_id, started)
        except Exception as exc:  # the socket died or timed out: count it, open a new one next time
            measure(self.environment, "web", "accept" if self._pending == "accept" else "reply", started,
                    type(exc).__name__)
            self._close()

    def _await(self, client_msg_id: str, started: float) -> None:
        """Frames until this message's reply (acked); records accept and reply."""
        assert self.ws is not None
        deadline = started + self.environment.parsed_options.kefu_timeout
        self._pending = "accept"
        message_id = None
        early: dict[int, str | None] = {}  # replies (→ source) to a message not yet accepted: an FAQ answer can
        # race its acknowledgement; the reply then counts when the acknowledgement comes
        while True:
            self.ws.settimeout(max(0.01, deadline - time.perf_counter()))
            frame = json.loads(self.ws.recv())
            kind = frame.get("type")
            if kind == "accepted" and frame.get("client_msg_id") == client_msg_id:
                measure(self.environment, "web", "accept", started)
                message_id, self._pending = frame.get("message_id"), "reply"
                if message_id in early:
                    measure(self.environment, "web", "reply", started, source=early[message_id])
                    return
            elif kind == "error" and frame.get("client_msg_id") == client_msg_id:
                measure(self.environment, "web", "accept", started, f"error frame {frame.get('code')}")
                return
            elif kind == "reply":
                if frame.get("reply_id") is not None:
                    self.ws.send(json.dumps({"type": "ack", "reply_id": frame["reply_id"]}))
                if message_id is not None and frame.get("message_id") == message_id:
                    measure(self.environment, "web", "reply", started, length=len(frame.get("text") or ""),
                            source=frame.get("source"))
                    return
                if message_id is None and frame.get("message_id") is not None:
                    early[frame["message_id"]] = frame.get("source")


class OpenAIUser(User):
    """A program on the OpenAI API (one conversation per simulated client), mostly streaming."""

    weight = 1
    wait_time = think

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {options.kefu_api_key}"
        self.conversation = f"load-{uuid.uuid4().hex[:12]}"
        time.sleep(think(self))  # arrivals spread like the web visitors' (a ramp is not one burst)

    def on_stop(self) -> None:
        self.http.close()

    @task
    def chat(self) -> None:
        options = self.environment.parsed_options
        stream = random.random() < options.kefu_stream_share
        body = {"model": options.kefu_model, "stream": stream, "user": self.conversation,
                "messages": [{"role": "user", "content": random.choice(QUESTIONS)}]}
        kind = "openai-stream" if stream else "openai"
        started = time.perf_counter()
        pending = "accept" if stream else "reply"
        try:
            with self.http.post(f"{self.host}/v1/chat/completions", json=body, stream=stream,
                                timeout=options.kefu_timeout) as answer:
                if answer.status_code != 200:
                    measure(self.environment, kind, pending, started, f"HTTP {answer.status_code}")
                    return
                if not stream:
                    text = answer.json()["choices"][0]["message"]["content"]
                    measure(self.environment, kind, "reply", started, length=len(text or ""))
                    return
                measure(self.environment, kind, "accept", started)
                pending = "reply"
                self._read_stream(answer, started)
        except (requests.RequestException, ValueError, KeyError) as exc:
            measure(self.environment, kind, pending, started, type(exc).__name__)

    def _read_stream(self, answer: requests.Response, started: float) -> None:
        """Server-sent events until ``data: [DONE]``; a stream that ends without it is a failure."""
        chars = 0
        for raw in answer.iter_lines():
            line = raw.decode("utf-8")
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                measure(self.environment, "openai-stream", "reply", started, length=chars)
                return
            for choice in json.loads(data).get("choices") or []:
                chars += len((choice.get("delta") or {}).get("content") or "")
        measure(self.environment, "openai-stream", "reply", started, "stream ended without [DONE]")


# ---- the shape ---------------------------------------------------------------------------------------

_shape: StagedShape | None = None


class StagedShape(LoadTestShape):
    """``--kefu-stages`` one after the other, each ramped at ``--kefu-spawn-rate``; stops after the last."""

    _stages: list[Stage] | None = None

    def tick(self) -> tuple[int, float] | None:
        global _shape
        _shape = self
        assert self.runner is not None and self.runner.environment.parsed_options is not None
        options = self.runner.environment.parsed_options
        if self._stages is None:
            self._stages = parse_stages(options.kefu_stages, options.kefu_spawn_rate)
        stage = stage_at(self._stages, self.get_run_time())
        return None if stage is None else (stage.users, options.kefu_spawn_rate)
