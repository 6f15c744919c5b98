"""Text generation by an OpenAI-compatible upstream: vLLM, llama-server, llama-cpp-python's server, a cloud endpoint.

:class:`UpstreamEngine` is a :class:`~workers.llm.engine.TextEngine` that sends each conversation to
``POST <base>/chat/completions`` with ``stream: true`` (and ``stream_options.include_usage``) over httpx, and reads
the server-sent events as they come.

Guarantees:
- Streamed text reaches ``on_text`` as it arrives, control characters and ``<think>…</think>`` spans removed (a Qwen3
  served with thinking on, :class:`~workers.llm.prompts.ThinkFilter`). ``on_text`` returning False closes the stream
  and the generation ends ``cancelled`` with the text so far.
- Every wait is bounded: connecting and each read of the stream by the earlier of ``timeout_s`` and the deadline;
  the deadline is also checked between chunks. A generation that reaches its deadline ends ``deadline`` with the
  text so far (empty when none came), never an exception; one whose deadline passed before it began returns at
  once, empty. A server that trickles chunks just inside the read timeout is stopped by the watchdog
  (:mod:`workers.llm.watchdog`).
- A fleet: the base URLs are taken round-robin; before any text came, a connection failure or a 5xx moves the
  request to the next URL (each URL tried at most once per generation). A 4xx is the caller's mistake and is not
  tried elsewhere. After text came, a failure is not retried (it would repeat what the customer saw).
- ``prompt_tokens``/``completion_tokens`` are the server's ``usage`` when it sends one; else estimated: one token per
  streamed content chunk, and about one token per three UTF-8 bytes of the prompt (:func:`estimate_tokens`).
- ``Generation.model`` is the model id the request asked for (``KEFU_UPSTREAM_MODEL``), what the audit names.
- The API key is sent only as ``Authorization: Bearer`` and never appears in an error or a log line; nor does the
  password of a URL that carries one (``https://user:pass@host/v1``).

Not a :class:`~workers.llm.engine.ChoosingEngine`: an upstream has no grammar sampler, so the model's intent step
(:mod:`workers.intent_model`) leaves the rules' intent in place.

Raises :class:`UpstreamError` (a :class:`~workers.llm.engine.GenerationError`) for any failure, naming the URL, the
status code and the server's own message, and what to check.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from models.envelope import Turn, printable
from models.infra import metrics
from models.settings import Settings, mask_url
from workers.llm.engine import Generation, GenerationError, TextCallback
from workers.llm.prompts import ThinkFilter, strip_think

log = logging.getLogger(__name__)

ERROR_TEXT_CHARS = 300  # of a server's error message in ours


class UpstreamError(GenerationError):
    """The upstream could not answer; the message says which URL, what it said and what to check."""


class _TryNext(Exception):
    """This URL failed before any text came in a way another URL may not (connection, 5xx)."""


class _Deadline(Exception):
    """The generation deadline passed while waiting for the upstream."""


def estimate_tokens(text: str) -> int:
    """About a token per three UTF-8 bytes: one per Chinese character, one per three or four Latin letters."""
    return math.ceil(len(text.encode("utf-8")) / 3)


def host_of(url: str) -> str:
    """``scheme://host:port`` of a base URL (what logs and the heartbeat show; never a path's secrets)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


@dataclass
class _Stream:
    """What one generation has read so far."""

    started: float
    on_text: TextCallback | None
    think: ThinkFilter = field(default_factory=ThinkFilter)
    pieces: list[str] = field(default_factory=list)
    chunks: int = 0
    first_token_s: float | None = None
    usage: dict[str, Any] | None = None
    finish: str = "length"
    wants_more: bool = True

    def emit(self, text: str) -> None:
        text = printable(text)
        if not text:
            return
        self.pieces.append(text)
        if self.on_text is not None:
            try:
                self.wants_more = self.on_text(text) is not False and self.wants_more
            except Exception:  # streaming is best effort; the reply row is what counts
                log.exception("streaming callback failed")

    def take(self, choice: dict[str, Any]) -> None:
        """One streamed choice: its text (``delta.content``) and, on the last one, why it finished."""
        content = (choice.get("delta") or {}).get("content")
        if content:
            self.chunks += 1
            if self.first_token_s is None:
                self.first_token_s = time.monotonic() - self.started
            self.emit(self.think.feed(content))
        if choice.get("finish_reason"):
            self.finish = "stop" if choice["finish_reason"] == "stop" else "length"

    @property
    def got_text(self) -> bool:
        return self.chunks > 0


class UpstreamEngine:
    def __init__(self, urls: Sequence[str], model: str, settings: Settings, *, api_key: str | None = None,
                 timeout_s: float | None = None, transport: httpx.BaseTransport | None = None) -> None:
        if not urls:
            raise ValueError("an upstream needs at least one base URL")
        self.urls = [url.rstrip("/") for url in urls]
        self.model = model
        self.settings = settings
        self.timeout_s = timeout_s if timeout_s is not None else settings.upstream_timeout_s
        self._api_key = api_key or None
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        self._http = httpx.Client(headers=headers, timeout=self.timeout_s, transport=transport,
                                  follow_redirects=False, trust_env=False)
        self._next = 0
        self._turn_lock = threading.Lock()
        self._loaded = False

    # ---- what the worker and the heartbeat read ---------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self.model

    @property
    def loaded(self) -> bool:
        """The upstream answered ``load()``'s check or a generation (the worker's heartbeat says so)."""
        return self._loaded

    @property
    def label(self) -> str:
        """The model and where it is served, for ``kefu status`` (no path, no key)."""
        return f"{self.model} (openai upstream {', '.join(host_of(url) for url in self.urls)})"

    def load(self) -> None:
        """Check that some URL of the fleet answers GET /models and serves ``model``; the others are logged.

        Raises UpstreamError when none does, saying for each URL what went wrong."""
        problems = []
        for url in self.urls:
            problem = self._check(url)
            if problem is None:
                continue
            problems.append(problem)
            log.warning("upstream %s", problem)
        if len(problems) == len(self.urls):
            raise UpstreamError("no upstream serves the model: " + "; ".join(problems))
        if not self._loaded:
            log.info("model %s loaded in 0.00s (openai upstream, %d of %d URLs answering: %s)", self.model,
                     len(self.urls) - len(problems), len(self.urls), ", ".join(host_of(u) for u in self.urls))
        self._loaded = True
        metrics.model_loaded(True)

    def _check(self, url: str) -> str | None:
        try:
            response = self._http.get(f"{url}/models", timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            return f"{mask_url(url)}: {self._failure(exc)}"
        if response.status_code != 200:
            return f"{mask_url(url)}: GET /models answered {self._status(response)}{self._hint(response.status_code)}"
        try:
            served = [str(item.get("id")) for item in response.json().get("data", [])]
        except (ValueError, AttributeError):
            return f"{mask_url(url)}: GET /models did not answer an OpenAI model list (is the URL's path /v1?)"
        if served and self.model not in served:
            return (f"{mask_url(url)} does not serve model {self.model!r} (it serves {', '.join(served[:10])}): "
                    "check KEFU_UPSTREAM_MODEL")
        return None

    def close(self) -> None:
        """Close the connections. The model-loaded gauge is left alone: another engine of this process (the primary,
        when this is a canary taken out) may still answer; at exit the process's gauges stop counting anyway."""
        self._http.close()
        self._loaded = False

    # ---- one generation -----------------------------------------------------------------------------

    def generate(self, turns: list[Turn], *, on_text: TextCallback | None = None,
                 deadline: float | None = None) -> Generation:
        """Answer the last user turn. ``deadline`` is a ``time.monotonic()`` instant."""
        started = time.monotonic()
        if deadline is not None and started >= deadline:
            return Generation("", self.model, 0, 0, "deadline", None, 0.0)
        body = self._body(turns)
        stream = _Stream(started, on_text)
        failures: list[str] = []
        for url in self._fleet_order():
            try:
                self._stream_from(url, body, stream, deadline)
                break
            except _TryNext as exc:
                failures.append(str(exc))
                log.warning("upstream %s; trying the next URL", exc)
            except _Deadline:
                stream.finish = "deadline"
                break
        else:
            raise UpstreamError("every upstream URL failed: " + "; ".join(failures))
        if not self._loaded and stream.got_text:  # it answers: the heartbeat says so (load() may have failed at start)
            self._loaded = True
            metrics.model_loaded(True)
        return self._result(turns, stream)

    def _body(self, turns: list[Turn]) -> dict[str, Any]:
        s = self.settings
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": t.role, "content": t.text} for t in turns],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "presence_penalty": s.presence_penalty,
        }
        if s.seed is not None:
            body["seed"] = s.seed
        return body

    def _fleet_order(self) -> list[str]:
        with self._turn_lock:
            first = self._next % len(self.urls)
            self._next += 1
        return self.urls[first:] + self.urls[:first]

    def _timeout(self, deadline: float | None) -> httpx.Timeout:
        wait = self.timeout_s
        if deadline is not None:
            wait = max(0.001, min(wait, deadline - time.monotonic()))
        return httpx.Timeout(wait, pool=wait)

    def _stream_from(self, url: str, body: dict[str, Any], stream: _Stream, deadline: float | None) -> None:
        """Read one URL's answer into ``stream``. Raises _TryNext (another URL may do), _Deadline, UpstreamError."""
        try:
            with self._http.stream("POST", f"{url}/chat/completions", json=body,
                                   timeout=self._timeout(deadline)) as response:
                if response.status_code != 200:
                    response.read()
                    said = f"POST /chat/completions answered {self._status(response)}"
                    if response.status_code >= 500:
                        raise _TryNext(f"{mask_url(url)}: {said}")
                    raise UpstreamError(f"{mask_url(url)}: {said}{self._hint(response.status_code)}")
                self._read(url, response, stream, deadline)
        except httpx.TimeoutException as exc:
            if deadline is not None and time.monotonic() >= deadline - 0.01:
                raise _Deadline from None
            if stream.got_text:
                raise UpstreamError(f"{mask_url(url)}: the stream stalled ({self._failure(exc)})") from None
            raise _TryNext(f"{mask_url(url)}: {self._failure(exc)}") from None
        except httpx.TransportError as exc:  # refused, reset, DNS, a stream cut short
            if stream.got_text:
                raise UpstreamError(f"{mask_url(url)}: the stream broke off ({self._failure(exc)})") from None
            raise _TryNext(f"{mask_url(url)}: {self._failure(exc)}") from None
        except httpx.HTTPError as exc:  # a body that does not decode, a malformed URL
            raise UpstreamError(f"{mask_url(url)}: {self._failure(exc)}") from None

    def _read(self, url: str, response: httpx.Response, stream: _Stream, deadline: float | None) -> None:
        for event in _events(response.iter_lines()):
            if "error" in event:
                raise UpstreamError(f"{mask_url(url)}: the stream reported an error: {_message_of(event)}")
            if event.get("usage"):
                stream.usage = event["usage"]
            for choice in event.get("choices") or ():
                stream.take(choice)
            if not stream.wants_more:  # the listener went away: closing the response stops the upstream too
                stream.finish = "cancelled"
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise _Deadline

    def _result(self, turns: list[Turn], stream: _Stream) -> Generation:
        stream.emit(stream.think.flush())
        usage = stream.usage or {}
        prompt_tokens = usage.get("prompt_tokens")
        completion_tokens = usage.get("completion_tokens")
        return Generation(
            text=strip_think("".join(stream.pieces)),
            model=self.model,
            prompt_tokens=int(prompt_tokens) if isinstance(prompt_tokens, int) else sum(
                estimate_tokens(t.text) for t in turns),
            completion_tokens=int(completion_tokens) if isinstance(completion_tokens, int) else stream.chunks,
            finish_reason=stream.finish,
            first_token_s=stream.first_token_s,
            total_s=time.monotonic() - stream.started,
        )

    # ---- messages an operator can act on ---------------------------------------------------------------

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "****") if self._api_key else text

    def _status(self, response: httpx.Response) -> str:
        try:
            said = _message_of(response.json())
        except ValueError:
            said = response.text
        said = " ".join(said.split())[:ERROR_TEXT_CHARS]
        return self._redact(f"{response.status_code} {response.reason_phrase}" + (f": {said}" if said else ""))

    def _failure(self, exc: httpx.HTTPError) -> str:
        kinds: dict[type[httpx.HTTPError], str] = {
            httpx.ConnectTimeout: "no connection within the timeout", httpx.ReadTimeout: "no answer within the timeout",
            httpx.ConnectError: "cannot connect"}
        kind = kinds.get(type(exc), type(exc).__name__)
        detail = str(exc)
        return self._redact(f"{kind} ({detail})" if detail else kind)

    def _hint(self, status: int) -> str:
        if status in (401, 403):
            return " (check KEFU_UPSTREAM_API_KEY)"
        if status == 404:
            return " (check KEFU_UPSTREAM_URLS ends in /v1 and KEFU_UPSTREAM_MODEL)"
        return ""


def _events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The JSON objects of a server-sent event stream's ``data:`` lines, until ``[DONE]``."""
    for line in lines:
        if not line.startswith("data:"):
            continue  # comments (": ping"), event names, blank separators
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            return
        if not data:
            continue
        try:
            event = json.loads(data)
        except ValueError:
            raise UpstreamError(f"the stream sent a line that is not JSON: {data[:80]!r}") from None
        if isinstance(event, dict):
            yield event


def _message_of(body: Any) -> str:
    """The server's own error message: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, or the body."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if "detail" in body:
            return json.dumps(body["detail"], ensure_ascii=False) if not isinstance(body["detail"], str) else body["detail"]
    return json.dumps(body, ensure_ascii=False)
