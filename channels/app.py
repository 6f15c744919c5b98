"""The ASGI gateway: mounts each channel adapter's routes, health checks and the chat page.

The gateway only accepts, persists and publishes; it never generates. It is stateless apart from
open sockets, so any number of gateway processes can run behind a load balancer.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
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

from channels.ingress import Ingress
from models.bus import Listener, make_listener
from models.db import make_engine, make_session_factory, ping
from models.kv import KV, make_kv
from models.queues import Publisher, make_celery
from models.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    publisher: Publisher
    ingress: Ingress
    listener: Listener
    kv: KV


def build_gateway(settings: Settings) -> Gateway:
    engine = make_engine(settings, pre_ping=False)
    sessions = make_session_factory(engine)
    publisher = Publisher(make_celery(settings, "kefu-gateway"))
    return Gateway(settings, engine, sessions, publisher, Ingress(sessions, publisher), make_listener(settings),
                   make_kv(settings))


def create_app(settings: Settings, gateway: Gateway | None = None) -> Starlette:
    from channels.telephony.adapter import TelephonyAdapter
    from channels.telephony.audiosocket_server import AudioSocketServer
    from channels.web import WebAdapter  # adapters are looked up here, the composition point
    from channels.wechat_mp import WeChatMPAdapter
    from channels.wecom import WeComAdapter
    from channels.wecom_kf import WeComKfAdapter

    gw = gateway or build_gateway(settings)
    telephony = TelephonyAdapter(gw)
    adapters = [WebAdapter(gw), WeChatMPAdapter(gw), WeComAdapter(gw), WeComKfAdapter(gw), telephony]
    audiosocket = AudioSocketServer(gw, telephony) if settings.audiosocket_port is not None else None
    chat_page = resources.files("channels").joinpath("static/chat.html").read_text(encoding="utf-8")

    async def index(_: Request) -> Response:
        return HTMLResponse(chat_page)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        checks: dict[str, Any] = {}
        for name, probe in (
            ("database", lambda: ping(gw.engine)),
            ("broker", lambda: gw.publisher.ping(settings.publish_timeout_s)),
        ):
            try:
                await run_in_threadpool(probe)
                checks[name] = "ok"
            except Exception as exc:
                checks[name] = f"unreachable: {type(exc).__name__}"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
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
        if audiosocket is not None:
            assert settings.audiosocket_port is not None
            await audiosocket.start(settings.host, settings.audiosocket_port)
        try:
            yield
        finally:
            if audiosocket is not None:
                await audiosocket.stop()
            await gw.listener.stop()
            gw.engine.dispose()
            close = getattr(gw.kv, "close", None)
            if close is not None:
                close()

    routes: list[Any] = [
        Route("/", index),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
    ]
    for adapter in adapters:
        routes += adapter.routes()
    handlers = {HTTPException: http_error, Exception: server_error}
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
