"""How a Kefu process's log lines look, and the ids that tie them to one request or one conversation.

``KEFU_LOG_FORMAT=text`` (the default) writes ``time level logger: message``; ``json`` writes each record as one
JSON object on one line: ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``, ``message``, and,
when the code that logged ran inside one, ``request_id`` (the gateway's HTTP request, :func:`request_scope`) and
``conversation_id`` (a worker's task, :func:`conversation_scope`); ``exception`` holds a traceback. Both formats
show the ids when known (text: ``[request_id=… conversation_id=…]``).

The ids live in :mod:`contextvars`, so they follow asyncio tasks and ``run_in_threadpool`` calls (Starlette copies
the context into the thread) and never leak from one request into the next. Personal data is masked when a record
is created (:func:`models.privacy.install_log_masking`), before any formatter here sees it; the formatters never
add a field from a record's ``args`` or a body. Nothing here raises while formatting (a value JSON cannot encode is
written with ``str``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal, TextIO

REQUEST_ID: ContextVar[str | None] = ContextVar("kefu_request_id", default=None)
CONVERSATION_ID: ContextVar[str | None] = ContextVar("kefu_conversation_id", default=None)

# what a caller's X-Request-ID may be: printable, short, no spaces or quotes (it is echoed and logged as it is)
_ACCEPTABLE_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")


def new_request_id() -> str:
    return uuid.uuid4().hex


def acceptable_request_id(given: str | None) -> str | None:
    """The caller's X-Request-ID when it is safe to echo and log (1-128 of ``A-Za-z0-9._:/+=@-``), else None."""
    return given if given is not None and _ACCEPTABLE_ID.fullmatch(given) else None


@contextlib.contextmanager
def request_scope(request_id: str) -> Iterator[str]:
    token = REQUEST_ID.set(request_id)
    try:
        yield request_id
    finally:
        REQUEST_ID.reset(token)


@contextlib.contextmanager
def conversation_scope(conversation_id: object) -> Iterator[None]:
    """Log lines written inside carry ``conversation_id`` (a worker's task, once it knows the conversation)."""
    token = CONVERSATION_ID.set(None if conversation_id is None else str(conversation_id))
    try:
        yield
    finally:
        CONVERSATION_ID.reset(token)


def set_conversation(conversation_id: object) -> None:
    """For code that learns the conversation midway through a scope opened with ``conversation_scope(None)``."""
    CONVERSATION_ID.set(None if conversation_id is None else str(conversation_id))


class ContextFilter(logging.Filter):
    """Copies the current ids onto each record (``request_id``, ``conversation_id``; None when unknown)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        record.conversation_id = CONVERSATION_ID.get()
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [f"{name}={value}" for name in ("request_id", "conversation_id")
               if (value := getattr(record, name, None))]
        if not ids:
            return line
        head, sep, rest = line.partition("\n")  # after the message, before a traceback
        return f"{head} [{' '.join(ids)}]{sep}{rest}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ("request_id", "conversation_id"):
            if (value := getattr(record, name, None)) is not None:
                entry[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False, default=str)


_MARK = "_kefu_log_handler"


def handler(log_format: Literal["text", "json"], stream: TextIO | None = None) -> logging.Handler:
    """A stream handler (stderr by default) with the chosen formatter and the ids filter."""
    made: logging.StreamHandler[TextIO] = logging.StreamHandler(stream if stream is not None else sys.stderr)
    made.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    made.addFilter(ContextFilter())
    setattr(made, _MARK, True)
    return made


def configure(level: str, log_format: Literal["text", "json"]) -> None:
    """The root logger writes through one :func:`handler` at ``level``. A second call replaces the handler the first
    added (it changes the format rather than doubling every line); like ``logging.basicConfig``, nothing changes
    when someone else already gave the root logger a handler (a test runner's capture, an embedding program)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
    if root.handlers:
        return
    root.addHandler(handler(log_format))
    root.setLevel(level)
