"""The console's HTML pages (Jinja2 templates, ``channels/console/templates``) and static files.

- ``GET /console/login``: the login form; its hidden ``csrf`` field holds the pre-session token also set as the
  ``kefu_console_login`` cookie (login CSRF: :func:`channels.console.auth.login_form_ok`).
- ``POST /console/login`` (``application/x-www-form-urlencoded``: username, password, csrf): 303 to ``/console``
  with the session cookie; the form again with a Chinese message otherwise — 401 wrong credentials, 403 a
  stale or forged form, 429 (with ``Retry-After``) too many failed logins, 503 the database or the KV store (which
  counts failures) does not answer: no login without the rate limit.
- ``GET /console``: the inbox; ``GET /console/conversations/{id}``: the conversation view. Without a session
  both answer 303 to the login page.
- ``/console/static/…``: the pages' CSS and vanilla JS (no framework, no CDN: many operators' servers have no
  internet).

Autoescaping is on for every template; pages take their data from the JSON API, so templates hold no customer
text.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from channels.console import auth
from channels.console.context import ConsoleContext
from channels.errors import RequestRejected
from channels.http import read_limited
from models import intents
from models.settings import Settings

log = logging.getLogger(__name__)

MAX_FORM_BYTES = 8 * 1024

templates = Environment(loader=PackageLoader("channels.console", "templates"), autoescape=select_autoescape(),
                        trim_blocks=True, lstrip_blocks=True)


def pages_routes(ctx: ConsoleContext) -> list[BaseRoute]:
    pages = ConsolePages(ctx)
    return [
        Route("/console/login", pages.login_form, methods=["GET"]),
        Route("/console/login", pages.login, methods=["POST"]),
        Route("/console", pages.inbox),
        Route("/console/", pages.inbox),
        Route("/console/conversations/{conversation_id:int}", pages.conversation),
        Mount("/console/static", StaticFiles(packages=[("channels.console", "static")]), name="console-static"),
    ]


# scripts and styles from /console/static only (no inline code, nothing from elsewhere); never framed (clickjacking)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def render(name: str, status: int = 200, headers: dict[str, str] | None = None, **values: Any) -> HTMLResponse:
    return HTMLResponse(templates.get_template(name).render(**values), status_code=status,
                        headers=SECURITY_HEADERS | (headers or {}))


@dataclass(frozen=True)
class IntentOption:
    name: str
    label: str  # the label and the first words of its description: "return_refund · 退货"


def intent_options(settings: Settings) -> list[IntentOption]:
    """The inbox's intent filter: every label the classifier knows (the operator's too), in its order."""
    seen: dict[str, IntentOption] = {}
    for intent in intents.intents(settings).ordered:
        if intent.name not in seen:
            short = intent.description.split("、")[0].split("（")[0]
            seen[intent.name] = IntentOption(intent.name, f"{intent.name} · {short}" if short else intent.name)
    return list(seen.values())


class ConsolePages:
    def __init__(self, ctx: ConsoleContext) -> None:
        self._ctx = ctx

    def _login_page(self, request: Request, status: int = 200, message: str = "", username: str = "",
                    headers: dict[str, str] | None = None) -> HTMLResponse:
        token = auth.login_token(request)
        response = render("login.html", status, headers, csrf=token, message=message, username=username)
        auth.set_login_cookie(response, request, token)
        return response

    async def login_form(self, request: Request) -> Response:
        return self._login_page(request)

    async def login(self, request: Request) -> Response:
        try:
            raw = await read_limited(request, MAX_FORM_BYTES)
        except RequestRejected:
            return self._login_page(request, 413, "提交的内容过长")
        form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace"), max_num_fields=10).items()}
        username = form.get("username", "").strip()[:64]
        if not auth.login_form_ok(request, form.get("csrf", "")):
            return self._login_page(request, 403, "登录页面已过期，请重新输入后登录", username)
        try:
            token, _ = await self._ctx.auth.login(username, form.get("password", ""), auth.client_address(request))
        except auth.LoginLocked as exc:
            minutes = max(1, (exc.retry_after_s + 59) // 60)
            return self._login_page(request, 429, f"登录失败次数过多，请 {minutes} 分钟后再试", username,
                                    {"Retry-After": str(exc.retry_after_s)})
        except auth.LoginRefused:
            return self._login_page(request, 401, "用户名或密码错误", username)
        except Exception as exc:  # the database or the KV store (the rate limit) does not answer: refuse, say so
            log.error("console login failed: %s", type(exc).__name__)
            return self._login_page(request, 503, "登录服务暂时不可用，请稍后再试", username)
        response = RedirectResponse("/console", status_code=303)
        self._ctx.auth.set_cookie(response, request, token)
        response.delete_cookie(auth.LOGIN_COOKIE, path=auth.PATH)
        return response

    async def _signed_in(self, request: Request) -> auth.SignedIn | None:
        try:
            return await self._ctx.auth.signed_in(request)
        except HTTPException:
            return None

    async def inbox(self, request: Request) -> Response:
        signed_in = await self._signed_in(request)
        if signed_in is None:
            return RedirectResponse("/console/login", status_code=303)
        return render("inbox.html", agent=signed_in.agent, page="inbox",
                      intents=intent_options(self._ctx.settings))

    async def conversation(self, request: Request) -> Response:
        signed_in = await self._signed_in(request)
        if signed_in is None:
            return RedirectResponse("/console/login", status_code=303)
        return render("conversation.html", agent=signed_in.agent, page="conversation",
                      conversation_id=int(request.path_params["conversation_id"]))
