"""Where the Prometheus metrics of one group of processes live: a directory of their own, emptied at its start.

prometheus_client chooses once, when it is first imported, between values in memory (one process) and values in
memory-mapped files under ``PROMETHEUS_MULTIPROC_DIR`` (multiprocess mode: each process of ``kefu gateway
--workers N`` or of a prefork worker writes its own files, and a scrape adds them up). So :func:`prepare` runs in a
group's first process before anything imports prometheus_client, and the processes it starts inherit the variable.

A group is ``gateway-<port>`` or ``worker-<metrics port>`` under ``KEFU_DATA_DIR/metrics``: one port is served by one
group at a time, so two groups on one host never share (or clean) a directory. Cleaning at start drops the counts
of a previous run, as a process restart does in single-process mode.

Raises ``ConfigError`` naming ``KEFU_DATA_DIR`` when the directory cannot be created or emptied, and
``RuntimeError`` when prometheus_client is already imported with another choice (a programming error: the values
would silently stay per process).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from models.settings import ConfigError, Settings

ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare(settings: Settings, group: str) -> Path:
    """Create and empty ``data_dir/metrics/<group>`` and put this process (and its children) in multiprocess mode."""
    directory = (settings.data_dir / "metrics" / group).resolve()
    if "prometheus_client" in sys.modules and os.environ.get(ENV) != str(directory):
        raise RuntimeError("prometheus_client was imported before the metrics directory was prepared")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
    except OSError as exc:
        raise ConfigError(f"KEFU_DATA_DIR {str(settings.data_dir)!r}: the metrics directory {directory} cannot be "
                          f"created or emptied ({exc.strerror or exc}); make KEFU_DATA_DIR a writable directory") from exc
    os.environ[ENV] = str(directory)
    return directory


def single_process() -> None:
    """This process keeps its metrics in memory, whatever the environment it was started with said."""
    if "prometheus_client" in sys.modules and ENV in os.environ:
        raise RuntimeError("prometheus_client was imported in multiprocess mode")
    os.environ.pop(ENV, None)
