"""The ASGI gateway: mounts every registered channel's routes, health checks and the chat page.

The gateway only accepts, persists and publishes; it never generates. With ``KEFU_ADMIN_TOKEN`` set it also
serves the admin API (:mod:`channels.admin`: the knowledge base and approved answers). ``/metrics`` is its
Prometheus page (:mod:`models.infra.metrics`: every process of ``kefu gateway --workers N`` added up); each
channel route's acknowledgement is timed (:mod:`channels.ack_metrics`). Every request gets an id (the caller's
``X-Request-ID`` or a new one, echoed; log lines carry it) and one access-log line (:mod:`channels.access_log`).
``/readyz`` answers 200 only when the database and the broker answer and an LLM worker with its model loaded beats
its heartbeat (:mod:`models.infra.heartbeat`); otherwise 503 naming what is ``missing``. It is stateless apart from
open sockets, so any number of gateway processes can run behind a load balancer. This module is the
gateway's composition root: it builds the shared :class:`Services` once and gives each channel
adapter a narrow :class:`~channels.base.ChannelContext` (with that channel's own hand-off port).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from importlib import resources
from typing import Any

import anyio
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from channels import access_log, ack_metrics, desk_handoff, registry
from channels.admin import admin_routes
from channels.admission import Admission
from channels.base import ChannelAdapter, ChannelContext
from channels.console import ConsoleContext, console_routes
from channels.console.auth import ConsoleAuth
from channels.ingress import Ingress
from models import intents, privacy
from models.infra import heartbeat, metrics
from models.infra.bus import BackgroundBus, Bus, Listener, make_bus, make_listener
from models.infra.db import make_engine, make_session_factory, ping
from models.infra.kv import KV, make_kv
from models.infra.queues import Publisher, make_celery
from models.knowledge.faq_sync import FaqSync
from models.settings import Settings

log = logging.getLogger(__name__)
# uvicorn's timeout_graceful_shutdown for the gateway (seconds): a stopping gateway waits this long for open
# responses, then cancels them (uvicorn logs each); the agent console's event streams never end by themselves
GRACEFUL_SHUTDOWN_S = 5


@dataclass
class Services:
    """What one gateway process shares between its channels."""

    settings: Settings
    db: Engine
    sessions: sessionmaker[Session]
    publisher: Publisher
    ingress: Ingress
    listener: Listener
    kv: KV
    bus: Bus
    admission: Admission  # rate limits and backpressure (channels.admission), shared by every channel

    def context(self, channel: str) -> ChannelContext:
        """The context one channel's adapter gets: these services and the channel's own hand-off port (behind the
        agent console's waiting queue for the channels in KEFU_DESK_CHANNELS)."""
        own = registry.channel(channel).handoff(self.settings, self.kv)
        handoff = desk_handoff.port(own, channel, self.settings, self.kv, self.sessions)
        return ChannelContext(self.settings, self.ingress, self.kv, self.listener, self.sessions, self.publisher,
                              handoff, self.bus, self.admission)


def build_services(settings: Settings) -> Services:
    """Every service bounded in time: a database or broker that does not answer costs a request
    ``KEFU_DB_RESPONSE_TIMEOUT_S`` (then 503) or ``KEFU_PUBLISH_TIMEOUT_S`` (then the sweeper publishes)."""
    db = make_engine(settings, pre_ping=False, response_timeout_s=settings.db_response_timeout_s)
    sessions = make_session_factory(db)
    publisher = Publisher(make_celery(settings, "kefu-gateway", gateway=True), settings.publish_retry_after_s)
    bus = BackgroundBus(make_bus(settings))  # a hung Redis never delays an acknowledgement
    ingress = Ingress(sessions, publisher, partial(privacy.stored_text, settings), partial(intents.label, settings),
                      notify=bus)
    kv = make_kv(settings, settings.publish_timeout_s)
    # the limiter's Redis calls are bounded like the KV store's (a failure lets the request through: fail open)
    admission = Admission.build(settings, kv, sessions, settings.publish_timeout_s)
    return Services(settings, db, sessions, publisher, ingress, make_listener(settings), kv, bus, admission)


async def metrics_page(_: Request) -> Response:
    """Prometheus's scrape (multiprocess: every process's files of this gateway, read in a thread)."""
    body, content_type = await run_in_threadpool(metrics.exposition)
    return Response(body, media_type=content_type)


async def _check(probe: Callable[[], None]) -> str:
    try:
        await run_in_threadpool(probe)
    except Exception as exc:
        return f"unreachable: {type(exc).__name__}"
    return "ok"


async def _llm_workers(kv: KV) -> tuple[str, list[heartbeat.Heartbeat]]:
    try:
        return "ok", await run_in_threadpool(heartbeat.alive, kv)
    except Exception as exc:
        return f"unreachable: {type(exc).__name__}", []


def readiness(gw: Services) -> Callable[[Request], Awaitable[Response]]:
    """``/readyz``: 200 when the database and the broker answer and an LLM worker has its model loaded (its
    heartbeat, read from the KV store); else 503 with ``missing``: ``database``, ``broker``, ``llm_worker`` (none
    alive, or the KV store does not answer) or ``llm_model`` (alive, none loaded yet)."""
    settings = gw.settings

    async def readyz(_: Request) -> Response:
        # all at once: each is bounded (KEFU_DB_RESPONSE_TIMEOUT_S, KEFU_PUBLISH_TIMEOUT_S), so is the answer
        database, broker, (kv, workers) = await asyncio.gather(
            _check(lambda: ping(gw.db)), _check(lambda: gw.publisher.ping(settings.publish_timeout_s)),
            _llm_workers(gw.kv))
        checks = {"database": database, "broker": broker}
        missing = [name for name, answer in checks.items() if answer != "ok"]
        missing += heartbeat.missing(workers) if kv == "ok" else ["llm_worker"]
        loaded = sum(w.loaded for w in workers)
        checks["llm_worker"] = kv if kv != "ok" else (
            f"{loaded} of {len(workers)} with the model loaded" if workers else "none alive")
        body = {"ready": not missing, "missing": missing, "checks": checks,
                "llm_workers": [{"node": w.node, "model": w.model, "loaded": w.loaded} for w in workers]}
        return JSONResponse(body, status_code=503 if missing else 200)

    return readyz


def create_app(settings: Settings, services: Services | None = None) -> Starlette:
    privacy.install_log_masking()  # whoever hosts the gateway (uvicorn, kefu demo, tests): no PII in its logs
    registry.check(settings)  # a bad channel setting stops the gateway now, not on its first callback
    gw = services or build_services(settings)
    adapters: dict[str, ChannelAdapter] = {found.name: found.adapter(gw.context(found.name))
                                           for found in registry.channels()}
    chat_page = resources.files("channels").joinpath("static/chat.html").read_text(encoding="utf-8")

    async def index(_: Request) -> Response:
        return HTMLResponse(chat_page)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error")
        return JSONResponse({"error": {"code": code, "message": exc.detail}}, status_code=exc.status_code)

    async def server_error(_: Request, exc: Exception) -> Response:
        log.error("request failed: %s", type(exc).__name__, exc_info=exc)
        return JSONResponse(
            {"error": {"code": "unavailable", "message": "the request was not processed (server error); retry"}},
            status_code=503,
        )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        for line in settings.backend_choice():
            log.info("gateway %s", line)
        # Blocking database work runs in a thread pool; a small pool keeps GIL contention low, and
        # callers queue in the event loop instead of in 40 threads fighting over one interpreter.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.gateway_threads
        await gw.listener.start()
        faq_sync = FaqSync(gw.sessions, settings)  # the knowledge base's FAQ sheets, for decide() (a thread)
        faq_sync.start()
        await run_in_threadpool(intents.intents, settings)  # built now, not inside the first message's callback
        started: list[ChannelAdapter] = []
        try:
            for adapter in adapters.values():  # e.g. the phone's AudioSocket listener
                await adapter.start()
                started.append(adapter)
            yield
        finally:
            for adapter in reversed(started):
                try:
                    await adapter.stop()
                except Exception:  # the rest must still be released
                    log.exception("stopping the %s adapter failed", type(adapter).__name__)
            await gw.listener.stop()
            await run_in_threadpool(faq_sync.stop)
            gw.db.dispose()
            for held in (gw.kv, gw.bus, gw.admission):  # the SQLite KV's connection, the socket bus's socket, the
                # limiter's Redis connections
                close = getattr(held, "close", None)
                if close is not None:
                    close()

    routes: list[Any] = [
        Route("/", index),
        Route("/healthz", healthz),
        Route("/readyz", readiness(gw)),
        Route("/metrics", metrics_page),
    ]
    for channel, adapter in adapters.items():
        routes += ack_metrics.timed_routes(adapter.routes(), channel)
    routes += admin_routes(settings, gw.sessions)  # none without KEFU_ADMIN_TOKEN
    routes += console_routes(ConsoleContext(settings, gw.sessions, gw.kv, gw.bus, gw.listener, gw.ingress,
                                            ConsoleAuth(settings, gw.sessions, gw.kv)))  # /console
    handlers = {HTTPException: http_error, Exception: server_error}
    app = access_log.Gateway(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    app.log_requests = settings.access_log  # one line per HTTP request on kefu.access; every request gets an id
    return app
