"""A fake WeChat Official Account + WeCom (企业微信, incl. Customer Service "kf") API server.

Kefu's own stand-in for the platforms, beside the client it fakes (``channels/wechat_api.py``), the
way httpx ships ``MockTransport``: the tests run against it, and an operator can try a channel
without a platform account (``kefu fake wechat``). A real HTTP server (``channels/fake_http.py``;
127.0.0.1 and a free port unless told otherwise) speaks the platforms' JSON protocol under ``/cgi-bin/``; point
``KEFU_WECHAT_API_BASE`` / ``KEFU_WECOM_API_BASE`` (or a client's API base) at
:attr:`FakeWeChat.base_url` — no patching. Like the real APIs it answers HTTP 200 with
``errcode``/``errmsg`` for every API-level error. The platform's other half, the callbacks it pushes
to Kefu, is ``channels/wechat_fake_platform.py``; both use the sample accounts defined here
(:meth:`FakeWeChat.add_sample_accounts`) unless given others.

Guarantees (the real behaviour the app has to survive):

* ``GET /cgi-bin/token`` issues a NEW token on every call and revokes the previous one of that appid
  (the real platform keeps the old one ~300 s: set :attr:`FakeWeChat.token_overlap`; default 0);
  ``POST /cgi-bin/stable_token`` returns the SAME token until it expires unless ``force_refresh``;
  the two are isolated from each other. WeCom ``gettoken`` returns the same token while it is valid.
* A revoked or unknown token → 40001 (MP) / 40014 (WeCom); an expired one → 42001; missing → 41001.
* Text over 2048 UTF-8 bytes → 45002 (MP custom send, kf send_msg); WeCom ``message/send``
  truncates to 2048 bytes as its documentation says.
* kf ``send_msg`` is refused with 95018 unless the conversation's service_state is 0 or 1.
* kf ``send_msg``'s optional ``msgid`` must be at most 32 bytes of ``[0-9a-zA-Z_-]`` and unique in the
  客服账号 (open_kfid); the documentation says only that the API "returns an error" for a used one, without
  a code: the fake answers 40058 (invalid parameter) and sends nothing (:data:`KF_USED_MSGID`).
* ``GET /cgi-bin/media/get`` (the same path on both platforms) answers a registered file as the raw
  bytes with its ``Content-Type`` and a ``Content-disposition: attachment; filename=…`` header;
  an unknown media id, or one registered for another app, → 40007 (as JSON, like every error). The
  fake serves both hosts on one port, so a token it never issued cannot tell which platform it was
  meant for: that answers the official account's 40001.
* Ids are deterministic counters; every request is recorded in :attr:`FakeWeChat.calls`.

Controls are thread-safe: :meth:`fail_next`, :meth:`http_error_next`, :meth:`set_latency`,
:meth:`expire_tokens`, :meth:`advance_clock`, :meth:`queue_kf_messages`, :meth:`wait_for_sent`,
:meth:`add_media`.
Every message Kefu sends is passed to ``on_sent`` as it is recorded (``kefu fake wechat`` prints
it). Raises nothing into the client: unknown paths get HTTP 404, an unknown endpoint key in a control
method raises ``ValueError``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from channels.fake_http import Answer, LoopbackFake, Request

ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/cgi-bin/token"): "token",
    ("POST", "/cgi-bin/stable_token"): "stable_token",
    ("POST", "/cgi-bin/message/custom/send"): "custom_send",
    ("GET", "/cgi-bin/gettoken"): "gettoken",
    ("POST", "/cgi-bin/message/send"): "message_send",
    ("POST", "/cgi-bin/kf/sync_msg"): "kf_sync_msg",
    ("POST", "/cgi-bin/kf/send_msg"): "kf_send_msg",
    ("POST", "/cgi-bin/kf/service_state/get"): "service_state_get",
    ("POST", "/cgi-bin/kf/service_state/trans"): "service_state_trans",
    ("GET", "/cgi-bin/media/get"): "media_get",
}
ENDPOINTS: frozenset[str] = frozenset(ROUTES.values())
MP_ENDPOINTS = frozenset({"token", "stable_token", "custom_send"})

ERRMSG: dict[int, str] = {
    -1: "system error",
    40001: "invalid credential, access_token is invalid or not latest",
    40002: "invalid grant_type",
    40003: "invalid openid",
    40007: "invalid media_id",
    40008: "invalid message type",
    40013: "invalid appid",
    40014: "invalid access_token",
    40056: "invalid agentid",
    40058: "invalid Request Parameter",
    40125: "invalid appsecret",
    41001: "access_token missing",
    42001: "access_token expired",
    44002: "empty post data",
    45002: "content size out of limit",
    45009: "reach max api daily quota limit",
    45015: "response out of time limit or subscription is canceled",
    45047: "out of response count limit",
    47001: "data format error",
    95018: "send msg not allowed in current service state",
}
TEXT_LIMIT = 2048  # bytes of UTF-8, the documented limit of a text message
KF_MSGID = re.compile(r"[0-9a-zA-Z_-]{1,32}")  # kf send_msg's own msgid: at most 32 bytes, this charset
KF_USED_MSGID = 40058  # the platform's code for a msgid used before is undocumented ("returns an error")

# The sample accounts (fake credentials): what ``kefu fake wechat`` serves and the tests configure.
TOKEN = "kefu-test-token"  # noqa: S105 - the callback token of every sample account
AES_KEY = base64.b64encode(bytes(range(32))).decode()[:-1]  # 43 characters, as the console shows it
APPID = "wxkefutest0001"  # the official account
SECRET = "kefu-test-secret"  # noqa: S105 - a sample credential
OFFICIAL_ID = "gh_kefu_test"
CORPID = "wwkefutest0001"  # the WeCom corp: one self-built app and Customer Service (kf)
APP_SECRET = "kefu-app-secret"  # noqa: S105 - a sample credential
AGENTID = 1000002
KF_SECRET = "kefu-kf-secret"  # noqa: S105 - a sample credential
OPEN_KFID = "wkKefuTest0001"


def sample_account(name: str = "shop", **extra: object) -> dict[str, object]:
    """The sample official account as a ``KEFU_WECHAT_ACCOUNTS`` entry."""
    return {"name": name, "appid": APPID, "secret": SECRET, "token": TOKEN, "aes_key": AES_KEY, **extra}


def sample_wecom_app(name: str = "it", **extra: object) -> dict[str, object]:
    """The sample WeCom self-built app as a ``KEFU_WECOM_APPS`` entry."""
    return {"name": name, "corpid": CORPID, "agentid": AGENTID, "secret": APP_SECRET, "token": TOKEN,
            "aes_key": AES_KEY, **extra}


def sample_kf_account(name: str = "kf", **extra: object) -> dict[str, object]:
    """The sample WeChat Customer Service (kf) as a ``KEFU_WECOM_KF_ACCOUNTS`` entry."""
    return {"name": name, "corpid": CORPID, "secret": KF_SECRET, "token": TOKEN, "aes_key": AES_KEY, **extra}


def errmsg(code: int) -> str:
    return ERRMSG.get(code, "unknown error")


@dataclass
class _Token:
    platform: str  # "mp" | "wecom"
    app: str
    secret: str
    expires_at: float
    revoked_at: float | None = None
    expired: bool = False

    def usable(self, now: float) -> bool:
        """Still valid: not expired (by time or by the test), not revoked by a newer token."""
        return not self.expired and self.revoked_at is None and now < self.expires_at


@dataclass
class _Media:
    app: str  # the appid or corpid whose tokens may download it
    data: bytes
    content_type: str
    filename: str


class FakeWeChat(LoopbackFake):
    """The fake platform. Use as a context manager, or call :meth:`start` / :meth:`stop`."""

    def __init__(self, token_ttl: float = 7200.0, token_overlap: float = 0.0, *, host: str = "127.0.0.1",
                 port: int = 0, on_sent: Callable[[dict[str, Any]], None] | None = None) -> None:
        super().__init__(self._respond, host=host, port=port, name="fake-wechat")
        self.on_sent = on_sent
        self.token_ttl = token_ttl
        self.token_overlap = token_overlap
        self.kf_page_size: int | None = None
        self.token_requests: list[tuple[str, str]] = []
        self.sent: list[dict[str, Any]] = []
        self.calls: list[dict[str, Any]] = []
        self.kf_sync_tokens: list[str] = []
        self.kf_service_state: dict[tuple[str, str], int] = {}
        self.kf_servicers: dict[tuple[str, str], str] = {}
        self._kf_msgids: set[tuple[str, str]] = set()  # (open_kfid, msgid) of every kf message sent
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._mp_apps: dict[str, str] = {}
        self._corp_apps: dict[str, dict[str, int | None]] = {}  # corpid → {corpsecret: agentid}
        self._tokens: dict[str, _Token] = {}
        self._current: dict[tuple[str, str, str], str] = {}  # (slot, app, secret) → token
        self._failures: dict[str, list[int]] = {}
        self._http_errors: list[tuple[int, str | None]] = []
        self._latency = 0.0
        self._clock_offset = 0.0
        self._seqs: dict[str, int] = {}
        # the platform's kf msgids are unique for good; a fresh fake must not reuse an earlier fake's (a database
        # that outlives one fake would take them for messages it already has)
        self._run = secrets.token_hex(3)
        self._kf_log: list[dict[str, Any]] = []
        self._media: dict[str, _Media] = {}

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def api_base(self) -> str:
        """What replaces ``https://api.weixin.qq.com/cgi-bin/`` or ``https://qyapi.weixin.qq.com/cgi-bin/``."""
        return f"{self.base_url}/cgi-bin/"

    # ---- accounts and controls -------------------------------------------------------------

    def add_sample_accounts(self) -> FakeWeChat:
        """The official account (:data:`APPID`), the WeCom app (:data:`CORPID`, :data:`AGENTID`) and kf."""
        self.add_mp_app(APPID, SECRET)
        self.add_corp_app(CORPID, APP_SECRET, agentid=AGENTID)
        self.add_corp_app(CORPID, KF_SECRET)
        return self

    def add_mp_app(self, appid: str, secret: str) -> None:
        with self._lock:
            self._mp_apps[appid] = secret

    def add_corp_app(self, corpid: str, corpsecret: str, agentid: int | None = None) -> None:
        """One WeCom app (or the kf secret); with ``agentid``, message/send checks it (40056)."""
        with self._lock:
            self._corp_apps.setdefault(corpid, {})[corpsecret] = agentid

    def fail_next(self, endpoint: str, errcode: int, times: int = 1) -> None:
        """The next ``times`` calls of ``endpoint`` answer ``errcode`` before any other check (queued in order)."""
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; one of {sorted(ENDPOINTS)}")
        with self._lock:
            self._failures.setdefault(endpoint, []).extend([errcode] * times)

    def http_error_next(self, status: int, times: int = 1, endpoint: str | None = None) -> None:
        """The next ``times`` requests (of ``endpoint``, or any) get a bare HTTP ``status`` page."""
        if endpoint is not None and endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}")
        with self._lock:
            self._http_errors.extend([(status, endpoint)] * times)

    def set_latency(self, seconds: float) -> None:
        with self._lock:
            self._latency = seconds

    def expire_tokens(self) -> None:
        """Every token issued so far answers 42001 from now on; the next token request issues a new one."""
        with self._lock:
            for token in self._tokens.values():
                token.expired = True

    def advance_clock(self, seconds: float) -> None:
        """Move the fake's token clock forward (TTL and overlap are measured on it)."""
        with self._lock:
            self._clock_offset += seconds

    def queue_kf_messages(self, open_kfid: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append messages to the kf account's log and return them completed.

        Missing fields are filled in: ``msgid`` (``kfmsg-<this fake>-000001``…), ``open_kfid``, ``external_userid``
        (``wm-external``), ``send_time`` (now), ``origin`` (3 = from the customer, 4 for ``event``),
        ``msgtype`` (``text``). A shorthand ``{"content": "..."}`` becomes ``text.content``.
        """
        done: list[dict[str, Any]] = []
        with self._lock:
            for message in messages:
                msg = dict(message)
                content = msg.pop("content", None)
                msg.setdefault("msgid", self._id(f"kfmsg-{self._run}"))
                msg["open_kfid"] = open_kfid
                msg.setdefault("external_userid", "wm-external")
                msg.setdefault("send_time", int(time.time()))
                msg.setdefault("msgtype", "text")
                msg.setdefault("origin", 4 if msg["msgtype"] == "event" else 3)
                if content is not None:
                    msg["text"] = {"content": content}
                self._kf_log.append(msg)
                done.append(json.loads(json.dumps(msg)))
        return done

    def add_media(self, media_id: str, data: bytes, *, app: str, content_type: str = "audio/amr",
                  filename: str | None = None) -> None:
        """A temporary media file that tokens of ``app`` (an appid or a corpid) can download with ``media/get``."""
        extension = content_type.rsplit("/", 1)[-1]
        with self._lock:
            self._media[media_id] = _Media(app, bytes(data), content_type, filename or f"{media_id}.{extension}")

    def wait_for_sent(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Block until at least ``count`` messages were delivered; returns a copy of :attr:`sent`."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.sent) >= count, timeout):
                raise TimeoutError(f"{len(self.sent)} of {count} messages sent after {timeout}s")
            return list(self.sent)

    # ---- the protocol ----------------------------------------------------------------------

    def _now(self) -> float:
        return time.monotonic() + self._clock_offset

    def _id(self, kind: str) -> str:
        """``kind-000001``, ``kind-000002``…: one counter per kind, so one kind's ids never shift another's."""
        self._seqs[kind] = self._seqs.get(kind, 0) + 1
        return f"{kind}-{self._seqs[kind]:06d}"

    def _respond(self, request: Request) -> Answer:
        method, path, query, raw = request.method, request.path, request.query, request.body
        try:
            body: Any = json.loads(raw.decode("utf-8")) if raw else None
        except (UnicodeDecodeError, ValueError):
            body = ...
        endpoint = ROUTES.get((method, path))
        with self._lock:
            self.calls.append(
                {
                    "method": method,
                    "path": path,
                    "endpoint": endpoint,
                    "query": dict(query),
                    "json": None if body is ... else body,
                }
            )
            latency = self._latency
            http_error = next((i for i, (_, ep) in enumerate(self._http_errors) if ep in (None, endpoint)), None)
            status = self._http_errors.pop(http_error)[0] if http_error is not None else 200
        if latency:
            self.stopping.wait(latency)
        if status != 200:
            return Answer(status, f"<html><body><h1>{status}</h1>fake gateway error</body></html>".encode(), "text/html")
        if endpoint is None:
            return Answer(404, b"not found", "text/plain")
        with self._lock:
            if endpoint == "media_get":
                media, answer = self._media_get(query)
                if media is not None:
                    disposition = f'attachment; filename="{media.filename}"'
                    return Answer(200, media.data, media.content_type, {"Content-disposition": disposition})
            else:
                answer = self._answer(endpoint, query, body)
            self._changed.notify_all()
        return Answer.json(200, answer)

    def _error(self, code: int) -> dict[str, Any]:
        return {"errcode": code, "errmsg": f"{errmsg(code)} rid: {self._id('rid')}"}

    def _answer(self, endpoint: str, query: dict[str, str], body: Any) -> dict[str, Any]:
        injected = self._failures.get(endpoint)
        if injected:
            return self._error(injected.pop(0))
        if endpoint in ("token", "stable_token", "gettoken"):
            return self._issue(endpoint, query, body)
        platform = "mp" if endpoint in MP_ENDPOINTS else "wecom"
        token = self._tokens.get(query.get("access_token", ""))
        bad = self._check_token(platform, query.get("access_token", ""))
        if bad or token is None:
            return self._error(bad)
        if body is ...:
            return self._error(47001)
        if not isinstance(body, dict):
            return self._error(44002)
        handler = getattr(self, f"_{endpoint}")
        result: dict[str, Any] = handler(body, token)
        return result

    def _media_get(self, query: dict[str, str]) -> tuple[_Media | None, dict[str, Any]]:
        """(the file, {}) or (None, the errcode answer)."""
        injected = self._failures.get("media_get")
        if injected:
            return None, self._error(injected.pop(0))
        value = query.get("access_token", "")
        token = self._tokens.get(value)
        bad = self._check_token(token.platform if token is not None else "mp", value)
        if bad or token is None:
            return None, self._error(bad)
        media = self._media.get(query.get("media_id", ""))
        if media is None or media.app != token.app:
            return None, self._error(40007)
        return media, {}

    def _issue(self, kind: str, query: dict[str, str], body: Any) -> dict[str, Any]:
        asked = self._corp_app(query) if kind == "gettoken" else self._mp_app(kind, query, body)
        if isinstance(asked, int):
            return self._error(asked)
        app, secret, fresh = asked
        slot, platform = (kind, "wecom") if kind == "gettoken" else (kind, "mp")
        now = self._now()
        current = self._current.get((slot, app, secret))
        live = self._tokens.get(current) if current else None
        if fresh or live is None or not live.usable(now):
            if live is not None and live.revoked_at is None:
                live.revoked_at = now
            current = f"{self._id(platform.upper() + '_ACCESS_TOKEN')}-{app}"
            live = self._tokens[current] = _Token(platform, app, secret, now + self.token_ttl)
            self._current[(slot, app, secret)] = current
        self.token_requests.append((kind, app))
        answer: dict[str, Any] = {"errcode": 0, "errmsg": "ok"} if kind == "gettoken" else {}
        answer.update(access_token=current, expires_in=max(0, round(live.expires_at - now)))
        return answer

    def _corp_app(self, query: dict[str, str]) -> tuple[str, str, bool] | int:
        """(corpid, corpsecret, fresh) of a WeCom gettoken, or the errcode that refuses it."""
        app, secret = query.get("corpid", ""), query.get("corpsecret", "")
        if app not in self._corp_apps:
            return 40013
        if secret not in self._corp_apps[app]:
            return 40001
        return app, secret, False

    def _mp_app(self, kind: str, query: dict[str, str], body: Any) -> tuple[str, str, bool] | int:
        """(appid, secret, fresh) of an official account's token or stable_token request, or the refusing errcode."""
        params = query if kind == "token" else (body if isinstance(body, dict) else {})
        if params.get("grant_type") != "client_credential":
            return 40002
        app, secret = str(params.get("appid", "")), str(params.get("secret", ""))
        if app not in self._mp_apps:
            return 40013
        if self._mp_apps[app] != secret:
            return 40125
        return app, secret, kind == "token" or params.get("force_refresh") is True

    def _check_token(self, platform: str, value: str) -> int:
        invalid = 40001 if platform == "mp" else 40014
        if not value:
            return 41001
        token = self._tokens.get(value)
        now = self._now()
        if token is None or token.platform != platform:
            return invalid
        if token.revoked_at is not None and now >= token.revoked_at + self.token_overlap:
            return invalid
        if token.expired or now >= token.expires_at:
            return 42001
        return 0

    @staticmethod
    def _text(body: dict[str, Any]) -> str | None:
        text = body.get("text")
        return str(text.get("content", "")) if body.get("msgtype") == "text" and isinstance(text, dict) else None

    def _record(self, endpoint: str, body: dict[str, Any], content: str | None, **extra: Any) -> None:
        message = {
            "endpoint": endpoint,
            "touser": body.get("touser"),
            "content": content,
            "msgtype": body.get("msgtype"),
            "open_kfid": body.get("open_kfid"),
            "agentid": body.get("agentid"),
            **extra,
        }
        self.sent.append(message)
        if self.on_sent is not None:
            self.on_sent(dict(message))

    def _custom_send(self, body: dict[str, Any], token: _Token) -> dict[str, Any]:
        if not body.get("touser"):
            return self._error(40003)
        if not body.get("msgtype"):
            return self._error(40008)
        content = self._text(body)
        if content is not None and len(content.encode("utf-8")) > TEXT_LIMIT:
            return self._error(45002)
        self._record("custom_send", body, content)
        return {"errcode": 0, "errmsg": "ok"}

    def _message_send(self, body: dict[str, Any], token: _Token) -> dict[str, Any]:
        if not body.get("msgtype"):
            return self._error(40008)
        agentid = self._corp_apps[token.app][token.secret]
        if agentid is not None and str(body.get("agentid")) != str(agentid):
            return self._error(40056)
        content = self._text(body)
        if content is not None:  # WeCom truncates instead of refusing
            content = content.encode("utf-8")[:TEXT_LIMIT].decode("utf-8", "ignore")
        msgid = self._id("msgid")
        self._record("message_send", body, content, msgid=msgid)
        return {"errcode": 0, "errmsg": "ok", "invaliduser": "", "msgid": msgid}

    def _kf_send_msg(self, body: dict[str, Any], token: _Token) -> dict[str, Any]:
        if not body.get("touser") or not body.get("open_kfid"):
            return self._error(40058)
        if not body.get("msgtype"):
            return self._error(40008)
        content = self._text(body)
        if content is not None and len(content.encode("utf-8")) > TEXT_LIMIT:
            return self._error(45002)
        if self.kf_service_state.get((body["open_kfid"], body["touser"]), 0) not in (0, 1):
            return self._error(95018)
        given = body.get("msgid")
        if given not in (None, "") and not (isinstance(given, str) and KF_MSGID.fullmatch(given)):
            return self._error(40058)
        msgid = given or self._id("kfsend")
        if (body["open_kfid"], msgid) in self._kf_msgids:
            return {"errcode": KF_USED_MSGID, "errmsg": f"msgid already exists in this open_kfid rid: {self._id('rid')}"}
        self._kf_msgids.add((str(body["open_kfid"]), msgid))
        self._record("kf_send_msg", body, content, msgid=msgid)
        return {"errcode": 0, "errmsg": "ok", "msgid": msgid}

    def _kf_sync_msg(self, body: dict[str, Any], token: _Token) -> dict[str, Any]:
        self.kf_sync_tokens.append(str(body.get("token", "")))
        kfid = str(body.get("open_kfid") or "")
        limit = body.get("limit", 1000)
        if not isinstance(limit, int) or not 1 <= limit <= 1000:
            return self._error(40058)
        if self.kf_page_size:
            limit = min(limit, self.kf_page_size)
        offset = 0
        if body.get("cursor"):
            try:
                cursor = json.loads(base64.urlsafe_b64decode(str(body["cursor"]) + "=="))
                offset = int(cursor["o"])
            except (binascii.Error, ValueError, KeyError, TypeError):
                return self._error(40058)
            if cursor.get("k") != kfid:
                return self._error(40058)
        log = [m for m in self._kf_log if not kfid or m["open_kfid"] == kfid]
        page = log[offset : offset + limit]
        end = offset + len(page)
        next_cursor = base64.urlsafe_b64encode(json.dumps({"k": kfid, "o": end}).encode()).decode().rstrip("=")
        return {
            "errcode": 0,
            "errmsg": "ok",
            "next_cursor": next_cursor,
            "has_more": int(end < len(log)),
            "msg_list": json.loads(json.dumps(page)),
        }

    def _service_state_get(self, body: dict[str, Any], token: _Token) -> dict[str, Any]:
        key = (str(body.get("open_kfid", "")), str(body.get("external_userid", "")))
        if not all(key):
            return self._error(40058)
        answer: dict[str, Any] = {"errcode": 0, "errmsg": "ok", "service_state": self.kf_service_state.get(key, 0)}
        if key in self.kf_servicers:
            answer["servicer_userid"] = self.kf_servicers[key]
        return answer

    def _service_state_trans(self, body: dict[str, Any], token: _Token) -> dict[str, Any]:
        key = (str(body.get("open_kfid", "")), str(body.get("external_userid", "")))
        state = body.get("service_state")
        servicer = str(body.get("servicer_userid") or "")
        if not all(key) or state not in (0, 1, 2, 3, 4) or (state == 3 and not servicer):
            return self._error(40058)
        self.kf_service_state[key] = state
        if state == 3:
            self.kf_servicers[key] = servicer
        else:
            self.kf_servicers.pop(key, None)
        answer: dict[str, Any] = {"errcode": 0, "errmsg": "ok"}
        if state in (2, 3, 4):  # the code for a welcome (2, 3) or closing (4) event message
            answer["msg_code"] = self._id("msgcode")
        return answer
