"""The console's pure pieces: the inbox's masked customer label and cursor, the login throttle's counting on the
embedded KV store (atomic slots, lock, Retry-After, clearing), the login form's CSRF check and the `kefu user`
command line's wiring."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from starlette.requests import Request

from channels.console import auth, inbox
from channels.console.throttle import LoginThrottle
from models.infra.kv import SQLiteKV
from workers.cli import build_parser, cmd_user


def test_the_customer_label_is_short_and_masked() -> None:
    assert inbox.peer_label("oGZUI0egBJY1zhBYw2KhdUfwVJJE") == "oGZU…VJJE"
    assert inbox.peer_label("13812345678") != "13812345678" and "5678" in inbox.peer_label("13812345678")
    assert inbox.peer_label("v-1") == "v-1"


def test_cursors_round_trip_and_refuse_garbage() -> None:
    at = datetime(2026, 12, 3, 6, 30, 1, 123456, tzinfo=UTC)
    assert inbox.parse_cursor(inbox.cursor_of(at, 42)) == (at, 42)
    for bad in ("", "abc", "1.", ".2", "1.2.3", "-1.2"):
        with pytest.raises(inbox.BadCursor):
            inbox.parse_cursor(bad)


def test_the_throttle_locks_after_n_failures_and_clears(tmp_path: Path) -> None:
    kv = SQLiteKV(tmp_path / "kv.sqlite")
    try:
        throttle = LoginThrottle(kv, attempts=3, window_s=300)
        user, address = throttle.keys("Alice", "10.0.0.1")
        assert throttle.keys("alice", "10.0.0.1")[0] == user  # usernames are counted case-blind
        assert "alice" not in user.lower() and "10.0.0.1" not in address
        for _ in range(2):
            throttle.failed(user, address)
        assert throttle.locked_for(user, address) == 0
        throttle.failed(user, address)
        wait = throttle.locked_for(user, address)
        assert 0 < wait <= 300
        other_user, _ = throttle.keys("bob", "10.0.0.1")
        assert throttle.locked_for(other_user) == 0 and throttle.locked_for(other_user, address) == wait
        throttle.failed(user, address)  # every slot taken: still locked, nothing more to count
        throttle.clear(user)
        assert throttle.locked_for(user) == 0 and throttle.locked_for(address) > 0
    finally:
        kv.close()


def _request(cookie: str | None, origin: str | None) -> Request:
    headers = [(b"host", b"kefu.example")]
    if cookie is not None:
        headers.append((b"cookie", f"{auth.LOGIN_COOKIE}={cookie}".encode()))
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    return Request({"type": "http", "method": "POST", "scheme": "https", "path": "/console/login", "headers": headers,
                    "server": ("kefu.example", 443), "query_string": b""})


def test_the_login_form_needs_its_cookie_token_and_our_origin() -> None:
    token = "t" * 43
    assert auth.login_form_ok(_request(token, None), token)
    assert auth.login_form_ok(_request(token, "https://kefu.example"), token)
    assert not auth.login_form_ok(_request(token, "https://evil.example"), token)
    assert not auth.login_form_ok(_request(token, None), "u" * 43)
    assert not auth.login_form_ok(_request(None, None), "")


def test_kefu_user_is_wired() -> None:
    args = build_parser().parse_args(["user", "add", "alice", "--role", "agent", "--display-name", "小爱",
                                      "--password-stdin"])
    assert (args.func, args.user_command, args.username, args.role, args.display_name, args.password_stdin) == (
        cmd_user, "add", "alice", "agent", "小爱", True)
    assert build_parser().parse_args(["user", "passwd", "alice"]).password_stdin is False
    with pytest.raises(SystemExit):
        build_parser().parse_args(["user", "add", "alice", "--role", "owner"])
