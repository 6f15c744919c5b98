"""A real OpenAI-compatible server for tests: llama-cpp-python's own ``llama_cpp.server`` on a GGUF, in a child process.

It speaks ``GET /v1/models`` and ``POST /v1/chat/completions`` (plain and SSE streaming) exactly as that server does,
with its ``--api_key`` check, so :mod:`workers.llm.upstream` is tested against a server it did not write. The
server never sends ``usage`` in a stream (Kefu then estimates the counts). One request at a time: a new request
interrupts a running one (its ``interrupt_requests`` default), so tests send them one after another.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from workers.demo.processes import free_port

API_KEY = "sk-test-upstream-0123456789"
MODEL = "tiny-upstream"


class OpenAIServer:
    def __init__(self, model: Path, log_path: Path, *, alias: str = MODEL, api_key: str = API_KEY) -> None:
        self.port = free_port()
        self.alias, self.api_key = alias, api_key
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("a")
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", alias,
             "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "1024", "--n_threads", "1",
             "--api_key", api_key, "--seed", "7"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    @property
    def url(self) -> str:
        """The base URL, ending in /v1, as KEFU_UPSTREAM_URLS takes it."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120) -> OpenAIServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                answer = httpx.get(f"{self.url}/models", headers={"Authorization": f"Bearer {self.api_key}"},
                                   timeout=2)
                if answer.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"llama_cpp.server did not start; log:\n{self.log_path.read_text()[-3000:]}")

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
