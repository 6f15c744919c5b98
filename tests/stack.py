"""What only the tests and benchmarks need to run Kefu's processes, beside the demo's launchers.

:class:`GatewayProcess` runs ``kefu gateway`` as a child process (so a load generator does not share
the gateway's interpreter); :func:`kefu_env` builds a child's ``KEFU_*`` environment. The worker and
the in-thread gateway are the demo's own: import them from :mod:`workers.demo.processes`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workers.demo.processes import free_port, terminate


def kefu_env(values: Mapping[str, Any], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child ``kefu`` process: ``base`` (default: ours) without any KEFU_* variable,
    plus ``values`` as KEFU_* variables (lists and dicts as JSON, as Settings reads them)."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("KEFU_")}
    env.update({f"KEFU_{k.upper()}": json.dumps(v) if isinstance(v, list | dict) else str(v)
                for k, v in values.items() if v is not None})
    return env


class GatewayProcess:
    """``kefu gateway`` in a child process (so a load generator does not share its interpreter)."""

    def __init__(self, env: dict[str, str], log_path: Path, port: int | None = None, workers: int = 1) -> None:
        self.port = port or free_port()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "gateway", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", str(workers)],
            env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    http_url = property(lambda self: f"http://127.0.0.1:{self.port}")
    ws_url = property(lambda self: f"ws://127.0.0.1:{self.port}")

    def start(self, timeout: float = 30) -> GatewayProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError("gateway did not start")

    def stop(self, timeout: float = 20) -> None:
        terminate(self.proc, timeout)
        self._log.close()
