"""The metrics' contract: each is documented, the multiprocess directory is prepared before prometheus_client is
imported and emptied (and an operator's PROMETHEUS_MULTIPROC_DIR dropped when there is no port), ``kefu --version``
answers, and a worker metrics port that cannot be listened on is a configuration error naming
KEFU_WORKER_METRICS_PORT."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import prometheus_client
import pytest

from models.infra import metrics, metrics_dir
from models.settings import ConfigError, Settings, load_settings
from tests.stack import kefu_env

ROOT = Path(__file__).resolve().parents[2]


def documented_rows() -> dict[str, str]:
    """docs/observability.md's metrics table: name -> type."""
    rows = {}
    for line in (ROOT / "docs" / "observability.md").read_text().splitlines():
        found = re.match(r"\| `(kefu_[a-z_]+)` \| (counter|gauge|histogram) \|", line)
        if found:
            rows[found[1]] = found[2]
    return rows


def exposed_name(metric: prometheus_client.metrics.MetricWrapperBase) -> tuple[str, str]:
    family = next(iter(metric.describe()))
    return (f"{family.name}_total" if family.type == "counter" else family.name), family.type


def test_every_metric_is_documented_with_its_type() -> None:
    assert len(metrics.ALL) == len({id(m) for m in metrics.ALL})
    defined = {m for name, m in vars(metrics).items() if isinstance(m, prometheus_client.metrics.MetricWrapperBase)}
    assert defined == set(metrics.ALL), "a metric is missing from metrics.ALL"
    exposed = dict(exposed_name(m) for m in metrics.ALL)
    assert all(name.startswith("kefu_") for name in exposed)
    assert documented_rows() == exposed


def test_the_directory_is_refused_once_prometheus_client_is_imported(tmp_path: Path) -> None:
    assert "prometheus_client" in sys.modules  # imported above, in memory mode
    with pytest.raises(RuntimeError, match="imported before"):
        metrics_dir.prepare(Settings(data_dir=tmp_path), "gateway-8000")


def test_a_prepared_process_counts_in_emptied_files(tmp_path: Path) -> None:
    stale = tmp_path / "metrics" / "worker-9100" / "counter_1.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"junk from an earlier run")
    script = (
        "from models.infra import metrics_dir\n"
        "from models.settings import Settings\n"
        f"metrics_dir.prepare(Settings(data_dir={str(tmp_path)!r}), 'worker-9100')\n"
        "from models.infra import metrics\n"
        "metrics.received('web')\n"
        "print(metrics.exposition()[0].decode())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=True).stdout
    assert not stale.exists()
    assert 'kefu_messages_received_total{channel="web"} 1.0' in out
    assert [p.name for p in stale.parent.glob("counter_*.db")], "the count was not written to the directory"


def test_a_worker_without_a_metrics_port_keeps_its_values_in_memory(tmp_path: Path) -> None:
    """An operator's PROMETHEUS_MULTIPROC_DIR (here a directory that does not exist) is dropped, not written to."""
    script = (
        "from models.infra import metrics_dir\n"
        "metrics_dir.single_process()\n"
        "from models.infra import metrics\n"
        "metrics.received('web')\n"
        "print(metrics.exposition()[0].decode())\n"
    )
    missing = tmp_path / "operator-metrics"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, metrics_dir.ENV: str(missing)})
    assert done.returncode == 0, done.stderr
    assert 'kefu_messages_received_total{channel="web"} 1.0' in done.stdout
    assert not missing.exists()


def test_kefu_version_prints_the_installed_version() -> None:
    done = subprocess.run([sys.executable, "-m", "workers.cli", "--version"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"kefu {version('kefu')}"


def test_a_busy_worker_metrics_port_names_the_setting(tmp_path: Path) -> None:
    from workers import cli

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match="KEFU_WORKER_METRICS_PORT"):
            cli.serve_worker_metrics(Settings(data_dir=tmp_path, worker_metrics_port=port))


def test_a_bad_worker_metrics_port_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEFU_WORKER_METRICS_PORT", "70000")
    with pytest.raises(ConfigError, match="KEFU_WORKER_METRICS_PORT"):
        load_settings()


def test_a_data_dir_that_is_no_directory_stops_the_gateway_naming_it(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "var"
    not_a_dir.write_text("a file")
    done = subprocess.run([sys.executable, "-m", "workers.cli", "gateway", "--port", "1"], cwd=ROOT,
                          env=kefu_env({"data_dir": str(not_a_dir)}), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "configuration error: KEFU_DATA_DIR" in done.stderr and "Traceback" not in done.stderr
