"""The console's extras: canned replies, private notes and tags, the satisfaction report, knowledge-base editing and
"make this answer an FAQ" (docs/console.md). JSON under ``/console/api``, pages ``/console/kb`` and
``/console/reports``; every route passes the console's sign-in gate first (:meth:`ConsoleAuth.agent
<channels.console.auth.ConsoleAuth.agent>`: 401 without a session, 403 without the CSRF header on a state-changing
request, 403 for an agent where the route is for admins).

- ``GET /canned`` → ``{canned: [{id, shortcut, text, …}]}`` (any agent); ``PUT /canned/{shortcut}`` ``{text}``
  (admin) → 201 new / 200 replaced ``{canned}``; ``DELETE /canned/{shortcut}`` (admin) → ``{deleted}`` (404 none).
- ``GET /conversations/{id}/notes`` → ``{notes}``; ``POST …/notes`` ``{text}`` → 201 ``{note}`` (any agent). A note
  is stored only (models.notes): no reply, no delivery, nothing on the customer's channel.
- ``GET /conversations/{id}/tags`` → ``{tags}``; ``PUT`` / ``DELETE …/tags/{tag}`` → ``{tags, changed}`` (any
  agent); ``GET /tags`` → ``{tags: [{tag, count}]}``. Notes and tags publish a live event (``note``, ``tags``) on
  ``models.desk.TOPIC`` after the commit, so other consoles showing the conversation reload it.
- ``GET /csat?days=30`` (admin) → the report of models.csat_report (per agent and the bot: count, average, 1-5).
- Knowledge base (admin), the admin API's handlers (:class:`channels.admin.KnowledgeApi`) behind this gate, audited
  by the store with ``by: <username>``: ``GET /kb/documents``, ``GET /kb/documents/{id}``, ``POST /kb/documents``
  (a JSON body ``{source, kind, content, title?}`` or the file's bytes with ``?source=NAME``), ``DELETE
  /kb/documents/{id}``; ``PUT /kb/faq/{faq_id}`` ``{question, similar: [..], answer}`` edits an FAQ entry, ``POST
  /kb/faq`` ``{document_id?, question, similar, answer}`` adds one (models.knowledge.store.edit_faq / add_faq);
  both answer ``{status, faq, warnings}`` (warnings: approved answers the entry now competes with).
- Make an answer an FAQ (admin): ``GET /replies/{id}/faq-draft`` → ``{reply_id, question, answer}`` (the customer's
  message it answered — for an agent's reply the customer's message before it — and the reply's text);
  ``POST /answers`` ``{reply_id, question, answer}`` approves it (models.knowledge.approved.approve) → 201/200
  ``{status, answer}``, 422 with the reason when it cannot be (personal data, a question already answered…);
  ``GET /answers`` → ``{answers}``: the approved answers (the view marks the replies already made FAQs).

Errors are ``{"error": {"code", "message"}}``. Database work runs in the gateway's thread pool.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from channels.admin import KnowledgeApi
from channels.console.auth import Agent
from channels.console.context import ConsoleContext
from channels.console.pages import render
from channels.errors import RequestRejected
from channels.http import Endpoint, parse_json_object, read_limited, refusals_as_json, require_unicode
from models import canned, csat_report, desk, notes
from models.infra.db import transaction
from models.knowledge import approved, store
from models.knowledge.documents import FaqRow
from models.states import Role
from models.tables import ReplyRecord

PREFIX = "/console/api"
MAX_BODY = 64 * 1024
T = TypeVar("T")


def extras_routes(ctx: ConsoleContext) -> list[BaseRoute]:
    return ConsoleExtras(ctx).routes()


def plain(value: Any) -> dict[str, Any]:
    """A dataclass as JSON: datetimes in ISO 8601, tuples as lists."""
    return {k: v.isoformat() if isinstance(v, datetime) else list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(value).items()}


def _text(body: dict[str, Any], field: str, *, required: bool = True) -> str:
    value = body.get(field)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise RequestRejected(422, f"invalid_{field}", f"字段 {field} 必须是文本")
    require_unicode(field, value)
    return value


class ConsoleExtras:
    def __init__(self, ctx: ConsoleContext) -> None:
        self._ctx = ctx
        self._auth = ctx.auth
        self._kb = KnowledgeApi(ctx.settings, ctx.sessions)

    def routes(self) -> list[BaseRoute]:
        c = f"{PREFIX}/conversations/{{conversation_id:int}}"
        g = self._guarded
        return [
            Route(f"{PREFIX}/canned", g(self.canned_list), methods=["GET"]),
            Route(f"{PREFIX}/canned/{{shortcut}}", g(self.canned_save), methods=["PUT"]),
            Route(f"{PREFIX}/canned/{{shortcut}}", g(self.canned_delete), methods=["DELETE"]),
            Route(f"{c}/notes", g(self.notes), methods=["GET", "POST"]),
            Route(f"{c}/tags", g(self.tags), methods=["GET"]),
            Route(f"{c}/tags/{{tag}}", g(self.tag), methods=["PUT", "DELETE"]),
            Route(f"{PREFIX}/tags", g(self.tag_counts), methods=["GET"]),
            Route(f"{PREFIX}/csat", g(self.csat), methods=["GET"]),
            Route(f"{PREFIX}/kb/documents", g(self.admin_kb(self._kb.documents)), methods=["GET"]),
            Route(f"{PREFIX}/kb/documents", g(self.admin_kb(self._kb.import_document)), methods=["POST"]),
            Route(f"{PREFIX}/kb/documents/{{id:int}}", g(self.admin_kb(self._kb.document)), methods=["GET"]),
            Route(f"{PREFIX}/kb/documents/{{id:int}}", g(self.admin_kb(self._kb.delete_document)),
                  methods=["DELETE"]),
            Route(f"{PREFIX}/kb/faq", g(self.faq_add), methods=["POST"]),
            Route(f"{PREFIX}/kb/faq/{{faq_id:int}}", g(self.faq_edit), methods=["PUT"]),
            Route(f"{PREFIX}/replies/{{reply_id:int}}/faq-draft", g(self.faq_draft), methods=["GET"]),
            Route(f"{PREFIX}/answers", g(self.admin_kb(self._kb.answers)), methods=["GET"]),
            Route(f"{PREFIX}/answers", g(self.admin_kb(self._kb.approve)), methods=["POST"]),
            Route("/console/kb", self.kb_page, methods=["GET"]),
            Route("/console/reports", self.reports_page, methods=["GET"]),
        ]

    _guarded = staticmethod(refusals_as_json)

    def admin_kb(self, handler: Callable[..., Awaitable[Response]]) -> Endpoint:
        """A knowledge-API handler behind the console's admin gate, audited with the admin's username."""
        async def run(request: Request) -> Response:
            agent = await self._auth.agent(request, admin=True)
            if request.method == "GET":
                return await handler(request)
            return await handler(request, by=agent.username)
        return run

    async def _body(self, request: Request) -> dict[str, Any]:
        return parse_json_object(await read_limited(request, MAX_BODY), MAX_BODY)

    def _read(self, read: Callable[[Session], T]) -> T:
        with self._ctx.sessions() as session:
            return read(session)

    def _write(self, write: Callable[[Session], T]) -> T:
        with transaction(self._ctx.sessions) as session:
            return write(session)

    def _publish(self, kind: str, conversation_id: int) -> None:
        self._ctx.bus.publish(desk.TOPIC, desk.event(kind, conversation_id))

    # --- canned replies -------------------------------------------------------------------------------------
    async def canned_list(self, request: Request) -> Response:
        await self._auth.agent(request)
        found = await run_in_threadpool(self._read, canned.replies)
        return JSONResponse({"canned": [plain(r) for r in found]})

    async def canned_save(self, request: Request) -> Response:
        agent = await self._auth.agent(request, admin=True)
        shortcut = request.path_params["shortcut"]
        text = _text(await self._body(request), "text")
        try:
            new, saved = await run_in_threadpool(self._write, lambda s: canned.save(s, shortcut, text, agent.id,
                                                                                     agent.username))
        except canned.CannedError as exc:
            raise RequestRejected(422, "invalid_canned", str(exc)) from None
        return JSONResponse({"canned": plain(saved)}, status_code=201 if new else 200)

    async def canned_delete(self, request: Request) -> Response:
        agent = await self._auth.agent(request, admin=True)
        shortcut = request.path_params["shortcut"]
        if not await run_in_threadpool(self._write, lambda s: canned.delete(s, shortcut, agent.id, agent.username)):
            raise RequestRejected(404, "no_canned", f"没有快捷回复 /{shortcut}")
        return JSONResponse({"deleted": shortcut})

    # --- notes and tags -------------------------------------------------------------------------------------
    async def notes(self, request: Request) -> Response:
        agent = await self._auth.agent(request)
        conversation_id = int(request.path_params["conversation_id"])
        try:
            if request.method == "GET":
                found = await run_in_threadpool(self._read, lambda s: notes.notes(s, conversation_id))
                return JSONResponse({"notes": [plain(n) for n in found]})
            text = _text(await self._body(request), "text")
            note = await run_in_threadpool(self._write, lambda s: notes.add_note(s, conversation_id, text, agent.id,
                                                                                 agent.username))
        except notes.UnknownConversation:
            raise RequestRejected(404, "not_found", "没有这个会话") from None
        except notes.NoteError as exc:
            raise RequestRejected(422, "invalid_note", str(exc)) from None
        await run_in_threadpool(self._publish, "note", conversation_id)
        return JSONResponse({"note": plain(note)}, status_code=201)

    async def tags(self, request: Request) -> Response:
        await self._auth.agent(request)
        conversation_id = int(request.path_params["conversation_id"])
        try:
            found = await run_in_threadpool(self._read, lambda s: notes.tags(s, conversation_id))
        except notes.UnknownConversation:
            raise RequestRejected(404, "not_found", "没有这个会话") from None
        return JSONResponse({"tags": found})

    async def tag(self, request: Request) -> Response:
        agent = await self._auth.agent(request)
        conversation_id = int(request.path_params["conversation_id"])
        name = request.path_params["tag"]
        change = notes.tag if request.method == "PUT" else notes.untag

        def act(session: Session) -> tuple[bool, list[str]]:
            changed = change(session, conversation_id, name, agent.id, agent.username)
            return changed, notes.tags(session, conversation_id)

        try:
            changed, found = await run_in_threadpool(self._write, act)
        except notes.UnknownConversation:
            raise RequestRejected(404, "not_found", "没有这个会话") from None
        except notes.NoteError as exc:
            raise RequestRejected(422, "invalid_tag", str(exc)) from None
        if changed:
            await run_in_threadpool(self._publish, "tags", conversation_id)
        return JSONResponse({"tags": found, "changed": changed})

    async def tag_counts(self, request: Request) -> Response:
        await self._auth.agent(request)
        found = await run_in_threadpool(self._read, notes.tag_counts)
        return JSONResponse({"tags": [{"tag": t, "count": n} for t, n in found]})

    # --- satisfaction ---------------------------------------------------------------------------------------
    async def csat(self, request: Request) -> Response:
        await self._auth.agent(request, admin=True)
        days = request.query_params.get("days", "30")
        if not days.isdigit() or not 1 <= int(days) <= csat_report.MAX_DAYS:
            raise RequestRejected(422, "invalid_days", f"days 必须是 1-{csat_report.MAX_DAYS} 的整数")
        found = await run_in_threadpool(self._read, lambda s: csat_report.report(s, int(days)))
        return JSONResponse(found.json())

    # --- FAQ entries ----------------------------------------------------------------------------------------
    @staticmethod
    def _faq_row(body: dict[str, Any]) -> FaqRow:
        similar = body.get("similar", [])
        if not isinstance(similar, list) or not all(isinstance(s, str) for s in similar):
            raise RequestRejected(422, "invalid_similar", "字段 similar 必须是文本列表")
        for s in similar:
            require_unicode("similar", s)
        return FaqRow(_text(body, "question"), tuple(similar), _text(body, "answer"))

    async def faq_edit(self, request: Request) -> Response:
        agent = await self._auth.agent(request, admin=True)
        faq_id = int(request.path_params["faq_id"])
        row = self._faq_row(await self._body(request))
        try:
            done = await run_in_threadpool(self._write, lambda s: store.edit_faq(s, faq_id, row, by=agent.username))
        except store.FaqEditError as exc:
            raise RequestRejected(422, "invalid_faq", str(exc)) from None
        if done is None:
            raise RequestRejected(404, "no_faq", f"没有常见问题 #{faq_id}")
        return await self._faq_done(done, 200)

    async def faq_add(self, request: Request) -> Response:
        agent = await self._auth.agent(request, admin=True)
        body = await self._body(request)
        document_id = body.get("document_id")
        if document_id is not None and (not isinstance(document_id, int) or isinstance(document_id, bool)):
            raise RequestRejected(422, "invalid_document_id", "字段 document_id 必须是文档编号")
        row = self._faq_row(body)
        try:
            done = await run_in_threadpool(self._write, lambda s: store.add_faq(s, document_id, row,
                                                                                by=agent.username))
        except store.FaqEditError as exc:
            raise RequestRejected(422, "invalid_faq", str(exc)) from None
        return await self._faq_done(done, 201)

    async def _faq_done(self, done: store.FaqChange, status: int) -> Response:
        # after the commit, in a read session: the check rebuilds the FAQ index (as the admin API's import does)
        warnings = [] if done.status == store.UNCHANGED else await run_in_threadpool(
            self._read, lambda s: approved.overlaps(s, done.faq.document_id, self._ctx.settings))
        return JSONResponse({"status": done.status, "faq": plain(done.faq), "warnings": warnings},
                            status_code=status)

    async def faq_draft(self, request: Request) -> Response:
        await self._auth.agent(request, admin=True)
        reply_id = int(request.path_params["reply_id"])

        def read(session: Session) -> dict[str, Any] | None:
            reply = session.get(ReplyRecord, reply_id)
            if reply is None:
                return None
            return {"reply_id": reply.id, "source": reply.source, "question": approved.question_of(session, reply),
                    "answer": reply.text}

        found = await run_in_threadpool(self._read, read)
        if found is None:
            raise RequestRejected(404, "no_reply", f"没有回复 #{reply_id}")
        return JSONResponse(found)

    # --- pages ----------------------------------------------------------------------------------------------
    async def _page_agent(self, request: Request) -> Agent | Response:
        try:
            return await self._auth.agent(request)
        except HTTPException:
            return RedirectResponse("/console/login", status_code=303)

    async def kb_page(self, request: Request) -> Response:
        return await self._admin_page(request, "kb.html", "kb")

    async def reports_page(self, request: Request) -> Response:
        return await self._admin_page(request, "reports.html", "reports")

    async def _admin_page(self, request: Request, template: str, page: str) -> Response:
        agent = await self._page_agent(request)
        if isinstance(agent, Response):
            return agent
        if agent.role != Role.ADMIN:
            return render("forbidden.html", 403, agent=agent, page=page)
        return render(template, agent=agent, page=page)
