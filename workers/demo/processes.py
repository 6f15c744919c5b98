"""Kefu's processes started from Python: a worker in a child process, the gateway in a thread.

Used by ``kefu demo``, and by the integration tests and benchmarks (``tests/stack.py`` adds what only
they need), so all three exercise the same real processes an operator runs (``kefu gateway`` /
``kefu worker``) on real sockets and queues. Nothing here raises for a child that fails to start:
:meth:`WorkerProcess.wait` answers False and the log says why; :meth:`GatewayThread.start` raises
``RuntimeError`` when the server does not come up in time.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from channels.app import GRACEFUL_SHUTDOWN_S, create_app
from models.settings import Settings


def terminate(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM (a graceful Celery/uvicorn shutdown), then SIGKILL if it takes longer than ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WorkerProcess:
    """``kefu worker`` in a child process, its output in a log file; ``wait()`` until it is ready."""

    def __init__(self, env: dict[str, str], log_path: Path, *, queues: str = "llm,io", beat: bool = False,
                 warm: bool = True, extra: list[str] | None = None) -> None:
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.ready = threading.Event()
        self.model_loaded = threading.Event()
        argv = [sys.executable, "-m", "workers.cli", "worker", "--queues", queues, *(extra or [])]
        if warm:
            argv.append("--warm")
        else:
            self.model_loaded.set()
        if beat:
            argv.append("--beat")
        self.proc = subprocess.Popen(  # noqa: S603 - our own entry point
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        with self.log_path.open("a") as out:
            for line in self.proc.stdout:
                out.write(line)
                out.flush()
                if " ready." in line:
                    self.ready.set()
                if ("model " in line and " loaded in " in line) or "warm-up failed" in line:
                    self.model_loaded.set()

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for event in (self.ready, self.model_loaded):
            if not event.wait(max(0.0, deadline - time.monotonic())):
                return False
        return self.proc.poll() is None

    def stop(self, timeout: float = 20) -> None:
        terminate(self.proc, timeout)
        self._pump_thread.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._pump_thread.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class GatewayThread:
    """The gateway ASGI app served by uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, settings: Settings, port: int | None = None) -> None:
        self.port = port or free_port()
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                ws_max_size=settings.max_body_bytes, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> GatewayThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("gateway did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
