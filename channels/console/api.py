"""The console's JSON API under ``/console/api`` (docs/console.md). Every route passes the sign-in gate first
(:mod:`channels.console.auth`: 401 without a session, 403 without the CSRF header on a state-changing request or
without the admin role where one is needed). Errors are ``{"error": {"code", "message"}}``, messages in Chinese
for the agent.

- ``GET /me`` → ``{id, username, display_name, role, status, csrf}``; ``POST /logout`` ends the session.
- ``POST /presence`` ``{"status": "online"|"away"}``: the agent's status, and a sign of life (``seen_at``).
- ``GET /conversations?channel=&handler=waiting|agent|bot&intent=&unanswered=1&mine=1&before=&limit=50`` →
  ``{conversations: [row…], next: cursor|null, waiting: N}`` (:mod:`channels.console.inbox`; 422 bad filter).
- ``GET /conversations/{id}/summary`` → one inbox row; ``GET /conversations/{id}`` → ``{conversation, messages,
  timeline}`` (:mod:`channels.console.transcript`); 404 unknown id.
- ``POST /conversations/{id}/claim`` → the row (409 when another agent holds it); ``POST …/reply`` ``{"text"}``
  → 201 ``{reply_id}`` (409 when you do not hold it; 422 empty or longer than ``KEFU_MAX_TEXT_CHARS``), delivered
  after the commit; ``POST …/hand-back`` → the row (409 when you do not hold it; an admin may hand back anyone's),
  and the customer is asked for a satisfaction score (models.csat), delivered after the commit. Each publishes a
  live event on ``models.desk.TOPIC`` (``handler``, or ``agent_reply``) after its commit, so every console updates.
- ``GET /users`` (admin) → the accounts; ``POST /users`` (admin) ``{username, password, role, display_name?}`` → 201.

Database work and publishing run in the gateway's thread pool; agent actions are audited by models.desk and
models.agents in the same transaction as the change.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sqlalchemy import update
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from channels.console import inbox, transcript
from channels.console.auth import ConsoleAuth
from channels.console.context import ConsoleContext
from channels.http import parse_json_object, read_limited, refusals_as_json
from channels.telephony import takeover
from models import agents, csat, desk
from models.envelope import utcnow
from models.infra.db import transaction
from models.states import Handler, Presence, Role
from models.tables import AgentRecord

PREFIX = "/console/api"
MAX_BODY = 64 * 1024


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def api_routes(ctx: ConsoleContext) -> list[BaseRoute]:
    return ConsoleApi(ctx).routes()


def _flag(value: str | None) -> bool:
    return value in ("1", "true", "yes")


class ConsoleApi:
    def __init__(self, ctx: ConsoleContext) -> None:
        self._ctx = ctx
        self._auth: ConsoleAuth = ctx.auth

    def routes(self) -> list[BaseRoute]:
        c = f"{PREFIX}/conversations/{{conversation_id:int}}"
        return [
            Route(f"{PREFIX}/me", self._guarded(self.me)),
            Route(f"{PREFIX}/logout", self._guarded(self.logout), methods=["POST"]),
            Route(f"{PREFIX}/presence", self._guarded(self.presence), methods=["POST"]),
            Route(f"{PREFIX}/conversations", self._guarded(self.conversations)),
            Route(c, self._guarded(self.conversation)),
            Route(f"{c}/summary", self._guarded(self.summary)),
            Route(f"{c}/claim", self._guarded(self.claim), methods=["POST"]),
            Route(f"{c}/reply", self._guarded(self.reply), methods=["POST"]),
            Route(f"{c}/hand-back", self._guarded(self.hand_back), methods=["POST"]),
            Route(f"{PREFIX}/users", self._guarded(self.users), methods=["GET", "POST"]),
        ]

    _guarded = staticmethod(refusals_as_json)

    async def _body(self, request: Request) -> dict[str, Any]:
        return parse_json_object(await read_limited(request, MAX_BODY), MAX_BODY)

    def _publish(self, kind: str, conversation_id: int, **detail: Any) -> None:
        self._ctx.bus.publish(desk.TOPIC, desk.event(kind, conversation_id, **detail))

    # --- the agent ------------------------------------------------------------------------------------------
    async def me(self, request: Request) -> Response:
        s = await self._auth.signed_in(request)
        return JSONResponse({"id": s.agent.id, "username": s.agent.username, "display_name": s.agent.display_name,
                             "role": s.agent.role.value, "status": s.status, "csrf": s.csrf})

    async def logout(self, request: Request) -> Response:
        await self._auth.agent(request)
        await self._auth.logout(request)
        response = JSONResponse({"logged_out": True})
        self._auth.clear_cookie(response, request)
        return response

    async def presence(self, request: Request) -> Response:
        agent = await self._auth.agent(request)
        status = (await self._body(request)).get("status")
        if status not in (Presence.ONLINE, Presence.AWAY):
            return error(422, "bad_status", "状态只能是 online（在线）或 away（离开）")
        await run_in_threadpool(self._set_presence, agent.id, str(status))
        return JSONResponse({"status": status})

    def _set_presence(self, agent_id: int, status: str) -> None:
        with transaction(self._ctx.sessions) as session:
            session.execute(update(AgentRecord).where(AgentRecord.id == agent_id)
                            .values(status=status, seen_at=utcnow()))

    # --- the inbox ------------------------------------------------------------------------------------------
    async def conversations(self, request: Request) -> Response:
        agent = await self._auth.agent(request)
        q = request.query_params
        handler = q.get("handler") or None
        if handler is not None and handler not in Handler.__members__.values():
            return error(422, "bad_filter", "handler 只能是 waiting、agent 或 bot")
        limit = q.get("limit", "50")
        if not limit.isdigit():
            return error(422, "bad_filter", "limit 必须是正整数")
        filters = inbox.Filters(channel=q.get("channel") or None, handler=Handler(handler) if handler else None,
                                intent=q.get("intent") or None, unanswered=_flag(q.get("unanswered")),
                                mine=agent.id if _flag(q.get("mine")) else None, tag=q.get("tag") or None)

        def read() -> tuple[list[inbox.Row], str | None, int]:
            with self._ctx.sessions() as session:
                rows, after = inbox.page(session, filters, q.get("before") or None, int(limit))
                return rows, after, inbox.waiting(session)

        try:
            rows, after, waiting = await run_in_threadpool(read)
        except inbox.BadCursor as exc:
            return error(422, "bad_cursor", str(exc))
        return JSONResponse({"conversations": [r.json() for r in rows], "next": after, "waiting": waiting})

    async def summary(self, request: Request) -> Response:
        await self._auth.agent(request)
        conversation_id = int(request.path_params["conversation_id"])

        def read() -> tuple[inbox.Row | None, int]:
            with self._ctx.sessions() as session:
                return inbox.one(session, conversation_id), inbox.waiting(session)

        row, waiting = await run_in_threadpool(read)
        if row is None:
            return error(404, "not_found", "没有这个会话")
        return JSONResponse({"conversation": row.json(), "waiting": waiting})

    async def conversation(self, request: Request) -> Response:
        await self._auth.agent(request)
        conversation_id = int(request.path_params["conversation_id"])

        def read() -> dict[str, Any] | None:
            with self._ctx.sessions() as session:
                return transcript.view(session, conversation_id)

        found = await run_in_threadpool(read)
        if found is None:
            return error(404, "not_found", "没有这个会话")
        return JSONResponse(found)

    # --- take-over ------------------------------------------------------------------------------------------
    async def claim(self, request: Request) -> Response:
        agent = await self._auth.agent(request)
        conversation_id = int(request.path_params["conversation_id"])

        def act() -> inbox.Row | str:
            try:
                with transaction(self._ctx.sessions) as session:
                    desk.claim(session, conversation_id, agent.id)
            except desk.DeskConflict:
                return "conflict"
            except LookupError:
                return "missing"
            self._publish("handler", conversation_id, handler=Handler.AGENT.value, agent_id=agent.id,
                          agent_name=agent.display_name)
            with self._ctx.sessions() as session:
                # a phone conversation: the call still on the line is transferred to the agents' number
                takeover.transfer_claimed_call(self._ctx.bus, session, conversation_id, agent.id)
                row = inbox.one(session, conversation_id)
            assert row is not None
            return row

        done = await run_in_threadpool(act)
        if done == "missing":
            return error(404, "not_found", "没有这个会话")
        if isinstance(done, str):
            holder = await run_in_threadpool(self._holder, conversation_id)
            who = f"客服「{holder}」" if holder else "其他客服"
            return error(409, "claimed", f"该会话已由{who}接待，无法接入")
        return JSONResponse({"conversation": done.json()})

    def _holder(self, conversation_id: int) -> str | None:
        with self._ctx.sessions() as session:
            row = inbox.one(session, conversation_id)
        return None if row is None else row.agent_name

    async def reply(self, request: Request) -> Response:
        agent = await self._auth.agent(request)
        conversation_id = int(request.path_params["conversation_id"])
        text = (await self._body(request)).get("text")
        limit = self._ctx.settings.max_text_chars
        if not isinstance(text, str) or not text.strip():
            return error(422, "empty_text", "回复内容不能为空")
        text = text.strip()
        if len(text) > limit:
            return error(422, "text_too_long", f"回复不能超过 {limit} 个字（现在 {len(text)} 个）")

        def act() -> int | str:
            try:
                with transaction(self._ctx.sessions) as session:
                    reply_id = desk.store_agent_reply(session, conversation_id, agent.id, text)
            except desk.DeskConflict:
                return "conflict"
            except LookupError:
                return "missing"
            self._ctx.ingress.deliver(reply_id)
            self._publish("agent_reply", conversation_id, reply_id=reply_id, agent_id=agent.id)
            return reply_id

        done = await run_in_threadpool(act)
        if done == "missing":
            return error(404, "not_found", "没有这个会话")
        if done == "conflict":
            return error(409, "not_yours", "请先接入该会话再回复")
        return JSONResponse({"reply_id": done}, status_code=201)

    async def hand_back(self, request: Request) -> Response:
        agent = await self._auth.agent(request)
        conversation_id = int(request.path_params["conversation_id"])
        holder = None if agent.role == Role.ADMIN else agent.id  # an admin may hand back whoever's it is

        def act() -> inbox.Row | None:
            with transaction(self._ctx.sessions) as session:
                if not desk.hand_back(session, conversation_id, holder):
                    return None
                # the customer is asked for a score (None: KEFU_CSAT_REQUEST_REPLY is empty)
                csat_reply = csat.ask(session, conversation_id, agent.id, self._ctx.settings)
            if csat_reply is not None:
                self._ctx.ingress.deliver(csat_reply)
            self._publish("handler", conversation_id, handler=Handler.BOT.value, agent_id=None, by=agent.id)
            with self._ctx.sessions() as session:
                return inbox.one(session, conversation_id)

        row = await run_in_threadpool(act)
        if row is None:
            return error(409, "not_yours", "你没有接待该会话，无法交还")
        return JSONResponse({"conversation": row.json()})

    # --- accounts (admins) ----------------------------------------------------------------------------------
    async def users(self, request: Request) -> Response:
        admin = await self._auth.agent(request, admin=True)
        if request.method == "GET":
            def read() -> list[dict[str, Any]]:
                with self._ctx.sessions() as session:
                    return [_account(a) for a in agents.accounts(session)]
            return JSONResponse({"users": await run_in_threadpool(read)})
        body = await self._body(request)
        fields = [body.get(k) for k in ("username", "password", "role")]
        if not all(isinstance(v, str) for v in fields) or body.get("role") not in (Role.ADMIN, Role.AGENT):
            return error(422, "bad_user", "需要 username、password 和 role（admin 或 agent）")
        name = body.get("display_name")

        def add() -> int:
            with transaction(self._ctx.sessions) as session:
                return agents.add(session, str(fields[0]), str(fields[1]), Role(str(fields[2])),
                                  name if isinstance(name, str) else None, by=f"console:{admin.username}")

        try:
            new_id = await run_in_threadpool(add)
        except agents.AccountError as exc:
            return error(422, "bad_user", str(exc))
        return JSONResponse({"id": new_id}, status_code=201)


def _account(a: agents.Account) -> dict[str, Any]:
    out = asdict(a)
    out["role"] = a.role.value
    out["seen_at"] = a.seen_at.isoformat() if a.seen_at else None
    out["created_at"] = a.created_at.isoformat()
    return out



