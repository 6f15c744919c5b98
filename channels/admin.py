"""The admin API: the knowledge base and approved answers over HTTP, for the agent console (JSON).

Off unless ``KEFU_ADMIN_TOKEN`` is set: then no route exists and every path answers 404. Every request needs
``Authorization: Bearer <KEFU_ADMIN_TOKEN>`` (compared in constant time); without it, or with another token, 401
with ``WWW-Authenticate: Bearer``. Routes (errors are ``{"error": {"code", "message"}}``, as on every channel):

- ``GET /v1/admin/kb/revision`` → ``{revision}``: the knowledge base's revision (moves with every change).
- ``GET /v1/admin/kb/documents`` → ``{revision, documents: [...]}``; ``GET …/documents/{id}`` → ``{document,
  passages, faq}`` (404 unknown id); ``DELETE …/documents/{id}`` → ``{deleted: document, revoked}`` (404 unknown
  id): ``revoked`` is the approved answer a document of kind ``approved`` held, revoked with it (audited
  ``answer_revoked`` as ``DELETE /v1/admin/answers/{reply_id}`` is), else null.
- ``POST /v1/admin/kb/documents``: import or update a document through the readers ``kefu kb import`` uses
  (:mod:`models.knowledge.readers`). Either a JSON body ``{source, kind, content, title?}`` (``kind``: markdown,
  text, html or faq_csv; ``content`` the file's text) or the file's bytes as the body with ``?source=NAME`` (the
  type from NAME's extension, as for a file: ``.md``, ``.txt``, ``.html``, ``.pdf``, ``.docx``, ``.csv``,
  ``.xlsx``). → 201 ``{status: "new", document, warnings}``, 200 for ``updated`` / ``unchanged``; ``warnings``
  names each approved answer whose question an FAQ entry of the document also answers (both then go unused for
  paraphrases: :func:`models.knowledge.approved.overlaps`), the document is imported all the same. 413 larger than
  ``KEFU_ADMIN_MAX_UPLOAD_BYTES``; 415 a type no reader takes (or multipart: send the bytes); 422 a file the reader
  cannot read (its problem named) or a missing/invalid field.
- ``GET /v1/admin/answers`` → ``{answers: [...]}``; ``POST /v1/admin/answers`` ``{reply_id, question?, answer?}``
  (``answer``: the operator's text instead of the reply's) → 201 new, 200 updated/unchanged ``{status, answer}``
  (404 no such reply, 422 not approvable, with the reason);
  ``DELETE /v1/admin/answers/{reply_id}`` → ``{revoked: answer}`` (404 none).

Audit: every change is written by the store with ``by: "admin-api"`` (``kb_imported``, ``kb_deleted``,
``answer_approved``, ``answer_revoked``: ids, versions, counts, never text); reads change nothing and are not
audited. The handlers (:class:`KnowledgeApi`) also serve the agent console (channels/console/extras.py), behind its
session instead of the token, with the console user's name as ``by``. Handlers do their database work and parsing
in the gateway's thread pool (``KEFU_GATEWAY_THREADS``), like every channel; imports run one at a time per process,
so a large PDF holds at most one of those threads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import tempfile
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from channels.errors import RequestRejected
from channels.http import parse_json_object, read_limited, require_unicode
from models.infra.db import transaction
from models.knowledge import approved, readers, store
from models.knowledge.documents import ParsedDocument, UnreadableDocument
from models.settings import Settings

BY = "admin-api"
PREFIX = "/v1/admin"
# the JSON body's ``kind`` → the file type its ``content`` is read as
TEXT_KINDS = {"markdown": ".md", "text": ".txt", "html": ".html", "faq_csv": ".csv"}
MAX_SOURCE_CHARS = 512
MAX_TITLE_CHARS = 256

T = TypeVar("T")
Handler = Callable[[Request], Awaitable[Response]]


def admin_routes(settings: Settings, sessions: sessionmaker[Session]) -> list[BaseRoute]:
    """The admin API's routes, or none when ``KEFU_ADMIN_TOKEN`` is unset (every admin path is then a 404)."""
    return [] if settings.admin_token is None else AdminApi(settings, sessions).routes()


class KnowledgeApi:
    """The handlers of the knowledge base and approved answers, behind any gate: the admin API's bearer token here,
    the console's session and CSRF token in channels/console/extras.py. ``by`` names who asks in the audit rows.
    They raise RequestRejected; the gate turns it into the error response."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self._max_upload = settings.admin_max_upload_bytes
        self._sessions = sessions
        self._settings = settings
        self._importing = asyncio.Semaphore(1)

    # --- knowledge base --------------------------------------------------------------------------------------

    async def revision(self, _: Request) -> Response:
        return JSONResponse({"revision": await run_in_threadpool(self._read, store.revision)})

    async def documents(self, _: Request) -> Response:
        def read(session: Session) -> dict[str, Any]:
            return {"revision": store.revision(session), "documents": [_json(d) for d in store.documents(session)]}
        return JSONResponse(await run_in_threadpool(self._read, read))

    async def document(self, request: Request) -> Response:
        document_id: int = request.path_params["id"]
        found = await run_in_threadpool(self._read, lambda session: store.document(session, document_id))
        if found is None:
            raise RequestRejected(404, "no_document", f"no knowledge-base document #{document_id}")
        info, passages, faq = found
        return JSONResponse({"document": _json(info), "passages": [_json(p) for p in passages],
                             "faq": [_json(f) for f in faq]})

    async def delete_document(self, request: Request, by: str = BY) -> Response:
        document_id: int = request.path_params["id"]
        removed = await run_in_threadpool(self._write, lambda session: approved.delete_document(session, document_id,
                                                                                                  by=by))
        if removed is None:
            raise RequestRejected(404, "no_document", f"no knowledge-base document #{document_id}")
        revoked = None if removed.revoked is None else _json(removed.revoked)
        return JSONResponse({"deleted": _json(removed.document), "revoked": revoked})

    async def import_document(self, request: Request, by: str = BY) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type.startswith("multipart/"):
            raise RequestRejected(415, "multipart_not_accepted", "send the file's bytes as the body with "
                                  "?source=NAME (curl --data-binary @FILE), or a JSON body {source, kind, content}")
        raw = await read_limited(request, self._max_upload)
        if content_type == "application/json":
            source, suffix, data, title = _json_document(parse_json_object(raw, self._max_upload))
        else:
            source, suffix, data, title = _uploaded(request.query_params.get("source"), raw)
        async with self._importing:
            parsed = await run_in_threadpool(_read_document, source, suffix, data)
            if title:
                parsed = dataclasses.replace(parsed, title=title)
            outcome = await run_in_threadpool(self._write, lambda session: store.import_document(session, parsed,
                                                                                                   by=by))
            # after the commit: the check rebuilds the FAQ index, and need not hold the knowledge base's write lock
            warnings = await run_in_threadpool(self._read, lambda session: approved.overlaps(
                session, outcome.document.id, self._settings)) if parsed.faq else []
        return JSONResponse({"status": outcome.status, "document": _json(outcome.document), "warnings": warnings},
                            status_code=201 if outcome.status == store.NEW else 200)

    # --- approved answers ------------------------------------------------------------------------------------

    async def answers(self, _: Request) -> Response:
        found = await run_in_threadpool(self._read, approved.approved)
        return JSONResponse({"answers": [_json(a) for a in found]})

    async def approve(self, request: Request, by: str = BY) -> Response:
        body = parse_json_object(await read_limited(request, 64 * 1024), 64 * 1024)
        reply_id, question, answer = body.get("reply_id"), body.get("question"), body.get("answer")
        if not isinstance(reply_id, int) or isinstance(reply_id, bool) or reply_id < 1:
            raise RequestRejected(422, "invalid_reply_id", "field 'reply_id' must be a reply's id (a positive "
                                                           "integer)")
        for field, value in (("question", question), ("answer", answer)):
            if value is not None and not (isinstance(value, str) and value.strip()):
                raise RequestRejected(422, f"invalid_{field}", f"field '{field}', when given, must be non-empty text")
            if value is not None:
                require_unicode(field, value)
        try:
            done = await run_in_threadpool(self._write, lambda session: approved.approve(
                session, reply_id, question, by=by, settings=self._settings, answer=answer))
        except approved.UnknownReply as exc:
            raise RequestRejected(404, "no_reply", str(exc)) from None
        except approved.NotApprovable as exc:
            raise RequestRejected(422, "not_approvable", str(exc)) from None
        return JSONResponse({"status": done.status, "answer": _json(done.answer)},
                            status_code=201 if done.status == store.NEW else 200)

    async def revoke(self, request: Request, by: str = BY) -> Response:
        reply_id: int = request.path_params["reply_id"]
        removed = await run_in_threadpool(self._write, lambda session: approved.revoke(session, reply_id, by=by))
        if removed is None:
            raise RequestRejected(404, "no_approved_answer", f"reply #{reply_id} has no approved answer")
        return JSONResponse({"revoked": _json(removed)})

    # --- database --------------------------------------------------------------------------------------------

    def _read(self, read: Callable[[Session], T]) -> T:
        with self._sessions() as session:
            return read(session)

    def _write(self, write: Callable[[Session], T]) -> T:
        with transaction(self._sessions) as session:
            return write(session)


class AdminApi(KnowledgeApi):
    """The knowledge API under /v1/admin, behind ``Authorization: Bearer <KEFU_ADMIN_TOKEN>``."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        if settings.admin_token is None:
            raise ValueError("the admin API needs KEFU_ADMIN_TOKEN")
        super().__init__(settings, sessions)
        self._token = settings.admin_token.get_secret_value().encode()

    def routes(self) -> list[BaseRoute]:
        return [
            Route(f"{PREFIX}/kb/revision", self._guarded(self.revision), methods=["GET"]),
            Route(f"{PREFIX}/kb/documents", self._guarded(self.documents), methods=["GET"]),
            Route(f"{PREFIX}/kb/documents", self._guarded(self.import_document), methods=["POST"]),
            Route(f"{PREFIX}/kb/documents/{{id:int}}", self._guarded(self.document), methods=["GET"]),
            Route(f"{PREFIX}/kb/documents/{{id:int}}", self._guarded(self.delete_document), methods=["DELETE"]),
            Route(f"{PREFIX}/answers", self._guarded(self.answers), methods=["GET"]),
            Route(f"{PREFIX}/answers", self._guarded(self.approve), methods=["POST"]),
            Route(f"{PREFIX}/answers/{{reply_id:int}}", self._guarded(self.revoke), methods=["DELETE"]),
        ]

    def _guarded(self, handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            try:
                self._authorize(request)
                return await handler(request)
            except RequestRejected as exc:
                headers = {"WWW-Authenticate": 'Bearer realm="kefu-admin"'} if exc.status == 401 else None
                return JSONResponse(exc.body(), status_code=exc.status, headers=headers)
        return guarded

    def _authorize(self, request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise RequestRejected(401, "missing_token", "send the admin token as 'Authorization: Bearer "
                                                        "<KEFU_ADMIN_TOKEN>'")
        if not hmac.compare_digest(token.strip().encode(), self._token):
            raise RequestRejected(401, "invalid_token", "the admin token is not KEFU_ADMIN_TOKEN")


def _json_document(body: dict[str, Any]) -> tuple[str, str, bytes, str | None]:
    """(source, file type, bytes, title) of a JSON body ``{source, kind, content, title?}``."""
    kind, content, title = body.get("kind"), body.get("content"), body.get("title")
    if kind not in TEXT_KINDS:
        raise RequestRejected(422, "invalid_kind", "field 'kind' must be one of " + ", ".join(TEXT_KINDS)
                              + " (other types: send the file's bytes with ?source=NAME)")
    if not isinstance(content, str) or not content.strip():
        raise RequestRejected(422, "invalid_content", "field 'content' must be the document's text, non-empty")
    require_unicode("content", content)
    if title is not None:
        if not isinstance(title, str) or not title.strip() or len(title) > MAX_TITLE_CHARS:
            raise RequestRejected(422, "invalid_title", f"field 'title', when given, must be text of 1-"
                                                        f"{MAX_TITLE_CHARS} characters")
        require_unicode("title", title)
    return _source(body.get("source"), "field 'source'"), TEXT_KINDS[kind], content.encode(), title


def _uploaded(source: str | None, raw: bytes) -> tuple[str, str, bytes, None]:
    """(source, file type, bytes, no title) of an uploaded file named by ``?source=``."""
    name = _source(source, "query parameter 'source'")
    suffix = Path(name).suffix.lower()
    if suffix not in readers.SUPPORTED:
        raise RequestRejected(415, "unsupported_type", f"{name}: unsupported file type {suffix or '(none)'!r}; "
                                                       "supported: " + ", ".join(readers.SUPPORTED))
    if not raw:
        raise RequestRejected(422, "empty_upload", f"{name}: the body is empty; send the file's bytes")
    return name, suffix, raw, None


def _source(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_SOURCE_CHARS:
        raise RequestRejected(422, "invalid_source", f"{what} must name the document (1-{MAX_SOURCE_CHARS} "
                                                     "characters), e.g. policies/returns.md")
    require_unicode("source", value)
    return value.strip()


def _read_document(source: str, suffix: str, data: bytes) -> ParsedDocument:
    """The document read by the reader of its type from a private temporary file; 422 when it cannot be."""
    # the file is named like the source (a reader may take its title from the name), never outside the folder
    stem = "".join(c for c in Path(source).stem if c.isprintable() and c not in "/\\")[:100] or "document"
    with tempfile.TemporaryDirectory(prefix="kefu-admin-") as folder:
        path = Path(folder) / f"{stem}{suffix}"
        path.write_bytes(data)
        try:
            return readers.read(path, source)
        except UnreadableDocument as exc:
            raise RequestRejected(422, "unreadable_document", f"{source}: {exc.problem}") from None


def _json(value: Any) -> dict[str, Any]:
    """A store value as JSON: its fields, datetimes in ISO 8601."""
    return {k: v.isoformat() if isinstance(v, datetime) else list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(value).items()}
