from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from websockets.sync.client import ClientConnection, connect

from models.envelope import utcnow
from models.infra.db import make_engine, make_session_factory, transaction
from models.infra.migrate import upgrade
from models.settings import Settings
from models.states import Presence, Role
from models.tables import AgentRecord, AuditEvent, InboundRecord
from tests import services
from tests.conftest import as_env, settings_kwargs
from workers.demo.processes import GatewayThread, WorkerProcess

BACKENDS = ["embedded", "redis-postgres"]


@dataclass
class Stack:
    backend: str
    settings: Settings
    gateway: GatewayThread
    worker: WorkerProcess
    sessions: sessionmaker[Session]
    env: dict[str, str]

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.gateway.http_url, timeout=10)

    def visitor(self) -> tuple[str, str]:
        with self.http() as http:
            body = http.post("/v1/web/sessions").json()
        return body["visitor_id"], body["token"]

    def close(self) -> None:
        self.gateway.stop()
        self.worker.stop()
        self.sessions.kw["bind"].dispose()

    def ws(self, token: str) -> ClientConnection:
        return connect(f"{self.gateway.ws_url}/v1/web/ws?token={token}", open_timeout=10)


def stored_rows(sessions: sessionmaker[Session]) -> tuple[int, int]:
    """(inbound rows, audit rows): what a refused request must leave unchanged."""
    with sessions() as s:
        return (s.scalar(select(func.count()).select_from(InboundRecord)) or 0,
                s.scalar(select(func.count()).select_from(AuditEvent)) or 0)


def recv_until(ws: ClientConnection, pred: Any, timeout: float = 60) -> list[dict[str, Any]]:
    """Frames received until one satisfies ``pred`` (inclusive)."""
    frames: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no matching frame within {timeout}s; got {frames}")
        frame = json.loads(ws.recv(timeout=remaining))
        frames.append(frame)
        if pred(frame):
            return frames


def wait_for(check: Any, timeout: float = 60, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met in time")


def settled(value: Any, quiet_s: float = 2.0, timeout: float = 60) -> Any:
    """``value()`` once it has not changed for ``quiet_s``: for "exactly N" checks, which right after
    waiting for ">= N" could not see a duplicate that arrives a moment later."""
    deadline = time.monotonic() + timeout
    last, since = value(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = value()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
    raise TimeoutError("the value kept changing")


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Settings, sessionmaker[Session]]]:
    """A migrated, empty database of each kind (SQLite in tmp_path; a fresh PostgreSQL database, dropped after)."""
    name = None
    if request.param == "sqlite":
        settings = Settings(data_dir=tmp_path)
    else:
        services.ensure_postgres()
        name, url = services.create_database()
        settings = Settings(data_dir=tmp_path, database_url=url)
    upgrade(settings)
    engine = make_engine(settings)
    try:
        yield settings, make_session_factory(engine)
    finally:
        engine.dispose()
        if name is not None:
            services.drop_database(name)


def add_agent(sessions: sessionmaker[Session], name: str, role: Role = Role.AGENT, *, display_name: str | None = None,
              online: bool = True) -> int:
    """A console account (no usable password), online and seen now unless ``online`` is False (away)."""
    with transaction(sessions) as session:
        agent = AgentRecord(username=name, display_name=display_name or name, role=role, password_hash="x",
                            status=Presence.ONLINE if online else Presence.AWAY, seen_at=utcnow())
        session.add(agent)
        session.flush()
        return int(agent.id)


def start_stack(backend: str, data_dir: Path, model: Path, pg: str | None, rds: str | None,
                **overrides: Any) -> Stack:
    values = settings_kwargs(backend, data_dir, model, pg, rds) | overrides
    settings = Settings(**values)
    upgrade(settings)
    env = as_env(values)
    worker = WorkerProcess(env, data_dir / "worker.log")
    gateway = GatewayThread(settings).start()
    if not worker.wait(timeout=120):
        gateway.stop()
        worker.stop()
        raise RuntimeError(f"worker did not start; log:\n{(data_dir / 'worker.log').read_text()[-3000:]}")
    engine = make_engine(settings)
    return Stack(backend, settings, gateway, worker, make_session_factory(engine), env)


@pytest.fixture(scope="module")
def module_pg_url() -> Iterator[str]:
    """A PostgreSQL database of this test module's own (dropped after it): what one module leaves behind — console
    agents still counting as present, which open the human desk — cannot change what the next module sees."""
    services.ensure_postgres()
    name, url = services.create_database()
    try:
        yield url
    finally:
        services.drop_database(name)


@pytest.fixture(scope="module", params=BACKENDS)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[Stack]:
    backend = request.param
    pg = request.getfixturevalue("module_pg_url") if backend == "redis-postgres" else None
    rds = request.getfixturevalue("redis_url") if backend == "redis-postgres" else None
    data_dir = tmp_path_factory.mktemp(f"stack-{backend}")
    s = start_stack(backend, data_dir, tiny_gguf, pg, rds)
    try:
        yield s
    finally:
        s.close()
