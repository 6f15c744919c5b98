"""Console sign-in: sessions, CSRF and the login itself.

- A login (:meth:`ConsoleAuth.login`) checks the rate limit first (:mod:`channels.console.throttle`: per
  username and per client address, in the shared KV store), then the password (:mod:`models.agents`, argon2id).
  Success stores a session row (``agent_session``: only the SHA-256 of the cookie's random token, a per-session
  CSRF token, the expiry ``KEFU_CONSOLE_SESSION_S`` ahead) and is audited ``console_login``; a failure is audited
  ``console_login_failed`` (the username, never the password) and counted.
- The session cookie ``kefu_console`` is HttpOnly, SameSite=Strict, Path=/console, Secure on https.
- :meth:`ConsoleAuth.agent` is every console route's gate: 401 without a live session (none, unknown, expired,
  account disabled); 403 when the route is for admins and the agent is not one; 403 when the method changes state
  (POST, PUT, PATCH, DELETE) and the ``X-CSRF-Token`` header is not the session's token. The page reads the token
  from ``GET /console/api/me``.
- Login CSRF (a forged login into the attacker's account): the login form carries a pre-session token that must
  equal the ``kefu_console_login`` cookie (double submit; :func:`login_token`), and a request whose ``Origin``
  is present must come from the gateway's own origin.

Raises ``starlette.exceptions.HTTPException`` (401, 403) from :meth:`~ConsoleAuth.agent`; :class:`LoginLocked`
(with ``retry_after_s``) and :class:`LoginRefused` from :meth:`~ConsoleAuth.login`. Database and KV work runs in
the gateway's thread pool.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from channels.console.throttle import LoginThrottle
from models import agents, audit
from models.envelope import utcnow
from models.infra.db import transaction
from models.infra.kv import KV
from models.settings import Settings
from models.states import Presence, Role
from models.tables import AgentRecord, AgentSessionRecord

COOKIE = "kefu_console"
LOGIN_COOKIE = "kefu_console_login"  # the pre-session token of the login form (login CSRF)
CSRF_HEADER = "X-CSRF-Token"
PATH = "/console"
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})

LOGIN = "console_login"
LOGIN_FAILED = "console_login_failed"
LOGOUT = "console_logout"


@dataclass(frozen=True)
class Agent:
    """The person behind a console request."""

    id: int
    username: str
    display_name: str
    role: Role


@dataclass(frozen=True)
class SignedIn:
    """A live console session: its agent, their presence status and the session's CSRF token."""

    agent: Agent
    status: str
    csrf: str
    session_id: int


class LoginRefused(Exception):
    """Wrong username or password (or a disabled account: not told apart)."""


class LoginLocked(Exception):
    """Too many failed logins for this username or address; try again after ``retry_after_s``."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"login locked for {retry_after_s} s")
        self.retry_after_s = retry_after_s


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def login_token(request: Request) -> str:
    """The login form's pre-session token: the ``kefu_console_login`` cookie's, or a new one (set it with
    :func:`set_login_cookie` on the page's response)."""
    current = request.cookies.get(LOGIN_COOKIE, "")
    return current if 20 <= len(current) <= 128 else secrets.token_urlsafe(32)


def set_login_cookie(response: Response, request: Request, token: str) -> None:
    response.set_cookie(LOGIN_COOKIE, token, max_age=3600, path=PATH, secure=is_https(request), httponly=True,
                        samesite="strict")


def login_form_ok(request: Request, form_token: str) -> bool:
    """Login CSRF: the form's token equals the pre-session cookie's, and the Origin (when sent) is ours."""
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    if not cookie or not hmac.compare_digest(cookie.encode(), form_token.encode()):
        return False
    origin = request.headers.get("origin")
    return origin is None or origin == f"{request.url.scheme}://{request.url.netloc}"


class ConsoleAuth:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], kv: KV) -> None:
        self._settings = settings
        self._sessions = sessions
        self._throttle = LoginThrottle(kv, settings.console_login_attempts, settings.console_login_window_s)

    async def agent(self, request: Request, *, admin: bool = False) -> Agent:
        """The agent of the request's session; 401 (no live session) or 403 (not an admin where ``admin``, or a
        state-changing method without the session's CSRF token)."""
        return (await self.signed_in(request, admin=admin)).agent

    async def signed_in(self, request: Request, *, admin: bool = False) -> SignedIn:
        """As :meth:`agent`, with the session's status and CSRF token (for ``GET /console/api/me``)."""
        token = request.cookies.get(COOKIE)
        found = await run_in_threadpool(self._session_of, token) if token else None
        if found is None:
            raise HTTPException(401, "请先登录")
        if admin and found.agent.role != Role.ADMIN:
            raise HTTPException(403, "只有管理员可以这样做")
        if request.method in STATE_CHANGING:
            sent = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent.encode(), found.csrf.encode()):
                raise HTTPException(403, "请求缺少有效的 CSRF 令牌，请刷新页面后重试")
        return found

    def session_of(self, token: str) -> SignedIn | None:
        """The live session of a cookie's token, or None (blocking: call it from the thread pool)."""
        return self._session_of(token)

    def _session_of(self, token: str) -> SignedIn | None:
        with self._sessions() as session:
            row = session.execute(
                select(AgentSessionRecord.id, AgentSessionRecord.csrf, AgentRecord.id.label("agent_id"),
                       AgentRecord.username, AgentRecord.display_name, AgentRecord.role, AgentRecord.status)
                .join(AgentRecord, AgentRecord.id == AgentSessionRecord.agent_id)
                .where(AgentSessionRecord.token_hash == token_hash(token),
                       AgentSessionRecord.expires_at > utcnow(), AgentRecord.disabled.is_(False))).first()
        if row is None:
            return None
        return SignedIn(Agent(row.agent_id, row.username, row.display_name, Role(row.role)), row.status, row.csrf,
                        row.id)

    async def login(self, username: str, password: str, address: str) -> tuple[str, SignedIn]:
        """A new session (the cookie's token and the session). LoginLocked: rate-limited; LoginRefused: wrong."""
        return await run_in_threadpool(self._login, username.strip(), password, address)

    def _login(self, username: str, password: str, address: str) -> tuple[str, SignedIn]:
        user_key, address_key = self._throttle.keys(username, address)
        wait = self._throttle.locked_for(user_key, address_key)
        if wait:
            with transaction(self._sessions) as session:
                audit.record(session, LOGIN_FAILED, username=username[:64], reason="rate_limited")
            raise LoginLocked(wait)
        token = secrets.token_urlsafe(32)
        with transaction(self._sessions) as session:
            record = agents.verify(session, username, password)
            if record is None:
                audit.record(session, LOGIN_FAILED, username=username[:64], reason="credentials")
            else:
                now = utcnow()
                session.execute(delete(AgentSessionRecord).where(AgentSessionRecord.agent_id == record.id,
                                                                 AgentSessionRecord.expires_at <= now))
                row = AgentSessionRecord(token_hash=token_hash(token), agent_id=record.id,
                                         csrf=secrets.token_urlsafe(32), created_at=now,
                                         expires_at=now + timedelta(seconds=self._settings.console_session_s))
                session.add(row)
                session.flush()
                # logging in is coming to work: online (the page's 离开 sets away), and a sign of life
                session.execute(update(AgentRecord).where(AgentRecord.id == record.id)
                                .values(status=Presence.ONLINE, seen_at=now))
                audit.record(session, LOGIN, agent_id=record.id, username=record.username, session_id=row.id)
                signed_in = SignedIn(Agent(record.id, record.username, record.display_name, Role(record.role)),
                                     Presence.ONLINE.value, row.csrf, row.id)
        if record is None:
            self._throttle.failed(user_key, address_key)
            raise LoginRefused("wrong username or password")
        self._throttle.clear(user_key)
        return token, signed_in

    async def logout(self, request: Request) -> None:
        """End the request's session (nothing when there is none)."""
        token = request.cookies.get(COOKIE)
        if token:
            await run_in_threadpool(self._logout, token)

    def _logout(self, token: str) -> None:
        with transaction(self._sessions) as session:
            row = session.execute(select(AgentSessionRecord.id, AgentSessionRecord.agent_id)
                                  .where(AgentSessionRecord.token_hash == token_hash(token))).first()
            if row is not None:
                session.execute(delete(AgentSessionRecord).where(AgentSessionRecord.id == row.id))
                audit.record(session, LOGOUT, agent_id=row.agent_id, session_id=row.id)

    def set_cookie(self, response: Response, request: Request, token: str) -> None:
        response.set_cookie(COOKIE, token, max_age=int(self._settings.console_session_s), path=PATH,
                            secure=is_https(request), httponly=True, samesite="strict")

    @staticmethod
    def clear_cookie(response: Response, request: Request) -> None:
        response.delete_cookie(COOKIE, path=PATH, secure=is_https(request), httponly=True, samesite="strict")
