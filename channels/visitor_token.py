"""Signed visitor tokens for the web chat: ``v1.<visitor_id>.<expires_unix>.<signature>``.

The signature is HMAC-SHA256 over ``v1.<visitor_id>.<expires_unix>`` with the deployment secret,
base64url without padding. A site's own backend can mint the same token for its logged-in users
(see docs/web-chat.md), so their chat history follows them across devices. Pure functions.

Raises :class:`InvalidToken` with a reason a developer can act on.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

VISITOR_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")  # \Z: "$" would also accept a trailing newline


class InvalidToken(ValueError):
    """The token is malformed, forged or expired."""


def _sign(key: bytes, payload: str) -> str:
    digest = hmac.new(key, payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def new_visitor_id() -> str:
    return "v_" + secrets.token_urlsafe(16)


def mint(key: bytes, visitor_id: str, expires_at: int) -> str:
    if not VISITOR_ID.match(visitor_id):
        raise ValueError("visitor_id must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'")
    payload = f"v1.{visitor_id}.{expires_at}"
    return f"{payload}.{_sign(key, payload)}"


def verify(key: bytes, token: str, now: int) -> str:
    """Return the visitor id the token was issued for."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != "v1":
        raise InvalidToken("malformed visitor token; get one from POST /v1/web/sessions")
    _, visitor_id, expires, signature = parts
    if not VISITOR_ID.match(visitor_id) or not (expires.isascii() and expires.isdigit()):
        raise InvalidToken("malformed visitor token; get one from POST /v1/web/sessions")
    expected = _sign(key, f"v1.{visitor_id}.{expires}")
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise InvalidToken("visitor token signature does not match")
    if int(expires) < now:
        raise InvalidToken("visitor token expired; get a new one from POST /v1/web/sessions")
    return visitor_id
