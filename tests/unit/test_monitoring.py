"""compose/'s monitoring: Prometheus scrapes the gateway and every worker's metrics port, its alert rules and the
Grafana dashboard use only metrics Kefu really exports (derived from models/infra/metrics.py), the dashboard and its
provisioning are valid, and the rules and configuration pass `promtool check` where promtool is installed (Debian's
`prometheus` package, about 100 MB: not in the Makefile's SYSTEM_PACKAGES; without it the structure is still
checked here with PyYAML)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from models.infra import metrics
from tests.unit.test_compose import COMPOSE, command, compose_raw, env_example, interpolated, kefu_services

MONITORING = COMPOSE / "monitoring"
ALERTS = MONITORING / "alerts.yml"
ALERTS_TEST = MONITORING / "alerts_test.yml"
DASHBOARD = MONITORING / "grafana" / "kefu.json"
PROMTOOL = shutil.which("promtool")
NO_PROMTOOL = "promtool is not installed (Debian: apt-get install prometheus); the YAML structure is checked instead"

# Names a query may use that Kefu does not export, and why they are there.
EXTERNAL = {
    "up": "Prometheus's own per-target series: is a worker's or the gateway's metrics page answering",
    "redis_key_size": "queue depth: redis-exporter of the same monitoring profile (REDIS_EXPORTER_CHECK_SINGLE_KEYS)",
}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "inf", "nan"}


def exported() -> dict[str, set[str]]:
    """Every series name Kefu's metrics produce and its labels, from the metric objects themselves (not a copy of
    their names)."""
    found: dict[str, set[str]] = {}
    for metric in metrics.ALL:
        assert isinstance(metric, MetricWrapperBase)
        family = next(iter(metric.describe()))
        suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
        for suffix in suffixes.get(family.type, ("",)):
            found[family.name + suffix] = set(metric._labelnames)
    return found


def exported_series() -> set[str]:
    return set(exported())


def series_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions, keywords, label names or
    values, durations or numbers."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, humanize templates)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    found = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name in PROMQL_WORDS:
            continue
        found.add(name)
    return found


def alert_rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text())
    assert isinstance(loaded, dict)
    return loaded


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel.get("targets", [])]


def prometheus() -> dict[str, Any]:
    loaded = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


# --- every name is one Kefu exports --------------------------------------------------------------------------------


def test_the_name_check_can_fail() -> None:
    assert series_names('sum by (le, channel) (rate(kefu_nope_bucket{le="5.0", x=~"a|b"}[5m])) / up') == {
        "kefu_nope_bucket", "up"}
    assert series_names("histogram_quantile(0.95, sum(rate(a_b[1m]))) > 2 and on (job) c") == {"a_b", "c"}
    assert "kefu_nope_bucket" not in exported_series() and "kefu_ack_seconds_bucket" in exported_series()


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_queries_name_only_metrics_kefu_exports(source: str) -> None:
    exprs = [rule["expr"] for rule in alert_rules()] if source == "alerts" else dashboard_exprs()
    assert exprs
    known = exported_series() | set(EXTERNAL)
    unknown = {name: expr for expr in exprs for name in series_names(expr) if name not in known}
    assert unknown == {}, "not a Kefu metric (models/infra/metrics.py) nor an allowed external one"


def test_the_dashboard_shows_what_issue_13_asks_for() -> None:
    used = {name for expr in dashboard_exprs() for name in series_names(expr)}
    wanted = {
        "kefu_ack_seconds_bucket", "kefu_queue_wait_seconds_bucket", "kefu_first_token_seconds_bucket",
        "kefu_generation_seconds_bucket", "kefu_delivery_seconds_bucket",  # latency per stage
        "kefu_messages_received_total",  # QPS by channel
        "kefu_fallbacks_total", "kefu_messages_total",  # error, fallback and hand-off rates
        "redis_key_size",  # queue depth
        "kefu_slots_busy", "kefu_tokens_generated_total", "kefu_kv_cells_used", "kefu_kv_cells", "kefu_model_loaded",
    }
    assert wanted - used == set()
    assert any("channel" in expr and "kefu_messages_received_total" in expr for expr in dashboard_exprs())


def test_the_alerts_cover_issue_13s_list() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    for name in ("KefuModelErrorRateHigh", "KefuFallbackRateHigh", "KefuQueueWaitHigh", "KefuAckOver5s",
                 "KefuNoLlmWorker", "KefuModelNotLoaded", "KefuDeliveryFailures"):
        assert name in rules
    assert "> 0.05" in rules["KefuFallbackRateHigh"]["expr"]
    assert 'le="5.0"' in rules["KefuAckOver5s"]["expr"]  # prometheus_client writes the 5 s bucket's bound so
    assert 5.0 in metrics.ACK_SECONDS._upper_bounds  # and that bucket exists


# --- structure (always) and promtool (when installed) --------------------------------------------------------------


def test_alert_rules_are_well_formed() -> None:
    loaded = yaml.safe_load(ALERTS.read_text())
    assert set(loaded) == {"groups"}
    names = set()
    for group in loaded["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["alert"] not in names and re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
            names.add(rule["alert"])
            assert re.fullmatch(r"\d+[smh]", str(rule["for"])), rule["alert"]
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert rule["annotations"]["summary"]
            assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_accepts_the_rules() -> None:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout


def test_the_alerts_unit_tests_feed_series_kefu_exports() -> None:
    """compose/monitoring/alerts_test.yml (promtool's unit tests of the rules) uses the real series names and labels,
    so an alert that passes them would fire on Kefu's own metrics."""
    loaded = yaml.safe_load(ALERTS_TEST.read_text())
    assert loaded["rule_files"] == ["alerts.yml"]
    labels = exported()
    known = set(labels) | set(EXTERNAL)
    tested = set()
    for case in loaded["tests"]:
        for series in case["input_series"]:
            name, _, rest = series["series"].partition("{")
            assert name in known, name
            given = set(re.findall(r"(\w+)=", rest)) - {"le", "job", "instance"}
            if name.startswith("kefu_"):
                assert given == labels[name], f"{series['series']}: Kefu labels it {sorted(labels[name])}"
        tested |= {check["alertname"] for check in case["alert_rule_test"] if check["exp_alerts"]}
    assert {"KefuFallbackRateHigh", "KefuAckOver5s", "KefuNoLlmWorker", "KefuModelNotLoaded", "KefuDeliveryFailures",
            "KefuQueueWaitHigh"} <= tested


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, "test", "rules", str(ALERTS_TEST)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_accepts_the_configuration(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    config = prometheus()
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]  # where compose mounts it
    config["rule_files"] = [str(ALERTS)]  # here: the file itself
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    done = subprocess.run([PROMTOOL, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# --- compose wiring ------------------------------------------------------------------------------------------------


@pytest.fixture
def stack() -> dict[str, Any]:
    """docker-compose.yml as compose reads it with .env.example."""
    result = interpolated(compose_raw(), env_example(), set())
    assert isinstance(result, dict)
    return result


def test_prometheus_scrapes_the_gateway_and_every_worker_on_its_metrics_port(stack: dict[str, Any]) -> None:
    jobs = {job["job_name"]: job for job in prometheus()["scrape_configs"]}
    scraped: dict[str, int] = {}
    for job in jobs.values():
        for sd in job.get("dns_sd_configs", []):
            assert sd["type"] == "A"
            scraped |= dict.fromkeys(sd["names"], int(sd["port"]))
    assert jobs["kefu-gateway"].get("metrics_path", "/metrics") == "/metrics"
    assert scraped["gateway"] == 8000
    workers = {name: service for name, service in kefu_services(stack) if command(service)[:1] == ["worker"]}
    assert set(workers) == {"worker-llm", "worker-llm-cpu", "worker-io", "beat"}
    for name, service in workers.items():
        env = service["environment"]
        assert int(env["KEFU_WORKER_METRICS_PORT"]) == scraped[name], name
        assert env["KEFU_WORKER_METRICS_HOST"] == "0.0.0.0", f"{name}: 127.0.0.1 is unreachable from prometheus"
    assert {"worker-llm", "worker-llm-cpu"} <= {n for sd in jobs["kefu-llm"]["dns_sd_configs"] for n in sd["names"]}


def test_the_monitoring_services_mount_what_they_need(stack: dict[str, Any]) -> None:
    services = stack["services"]
    prom, grafana = services["prometheus"], services["grafana"]
    assert prom["profiles"] == ["monitoring"] and grafana["profiles"] == ["monitoring"]
    assert "./monitoring/alerts.yml:/etc/prometheus/alerts.yml:ro" in prom["volumes"]
    for volume in [*prom["volumes"], *grafana["volumes"]]:
        source = volume.split(":")[0]
        if source.startswith("./"):
            assert (COMPOSE / source).is_file(), volume
    mounted = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"] if v.startswith("./")}
    provider = yaml.safe_load((MONITORING / "grafana" / "dashboards.yml").read_text())["providers"][0]
    assert mounted[f"{provider['options']['path']}/kefu.json"] == "./monitoring/grafana/kefu.json"
    assert any(path.startswith("/etc/grafana/provisioning/datasources/") for path in mounted)
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert "grafana_admin_password" in grafana["secrets"] and "grafana_admin_password" in stack["secrets"]
    assert str(grafana["ports"][0]).startswith("127.0.0.1:")


def test_the_dashboard_is_a_grafana_dashboard_on_the_provisioned_datasource() -> None:
    board = dashboard()
    assert board["uid"] == "kefu-overview" and board["title"] and isinstance(board["schemaVersion"], int)
    (source,) = yaml.safe_load((MONITORING / "grafana" / "datasources.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat"} and panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), panel["title"]
