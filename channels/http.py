"""What every HTTP channel checks in a request before it trusts it: size, JSON shape, the text field.

Pure or nearly so; each refusal is a :class:`~channels.errors.RequestRejected` with the status and a
message the sender can act on.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from channels.errors import RequestRejected
from models.envelope import printable


async def read_limited(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it is larger than ``limit`` — never buffered whole."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestRejected(413, "body_too_large", f"body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestRejected(413, "body_too_large", f"body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise RequestRejected(400, "client_disconnected", "the request body was not received") from None
    return b"".join(chunks)


def parse_json_object(raw: bytes, max_bytes: int) -> dict[str, Any]:
    if len(raw) > max_bytes:
        raise RequestRejected(413, "body_too_large", f"request body is {len(raw)} bytes; the limit is {max_bytes}")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestRejected(400, "malformed_json", f"request body is not valid JSON: {exc}") from None
    except RecursionError:  # thousands of nested arrays: refused, not a server error the client would retry
        raise RequestRejected(400, "malformed_json", "request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise RequestRejected(400, "malformed_json", "request body must be a JSON object")
    return data


def require_unicode(field: str, value: str) -> None:
    """Refuse (422) a string with an unpaired surrogate (``"\\ud800"`` in JSON): no database can store it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestRejected(422, f"invalid_{field}", f"field '{field}' is not valid Unicode (an unpaired "
                                                       "surrogate, e.g. \\ud800); send UTF-8 text") from None


def clean_text(value: Any, max_chars: int) -> str:
    if value is None:
        raise RequestRejected(422, "missing_text", "field 'text' is required")
    if not isinstance(value, str):
        raise RequestRejected(422, "invalid_text", "field 'text' must be a string")
    require_unicode("text", value)
    text = printable(value).strip()
    if not text:
        raise RequestRejected(422, "empty_text", "field 'text' must not be empty")
    if len(text) > max_chars:
        raise RequestRejected(
            413, "text_too_long", f"text is {len(text)} characters; the limit is {max_chars}"
        )
    return text


def client_ip(request: Request) -> str | None:
    """The client's address (uvicorn takes it from X-Forwarded-For only from FORWARDED_ALLOW_IPS's proxies)."""
    return request.client.host if request.client else None


Endpoint = Callable[[Request], Awaitable[Response]]


def refusals_as_json(handler: Endpoint) -> Endpoint:
    """``handler`` with its RequestRejected answered as the error's JSON and status (``{"error": {code, message}}``)."""

    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except RequestRejected as exc:
            return JSONResponse(exc.body(), status_code=exc.status)

    return run
