"""`kefu status`: what runs and what does not, from real backends (the embedded SQLite database and broker, real
Redis), with queue depths counted from tasks really published and LLM workers from their heartbeat."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.infra import heartbeat
from models.infra.kv import make_kv
from models.infra.migrate import upgrade
from models.infra.queues import Publisher, make_celery
from models.settings import Settings
from workers import cli


def status(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str],
           *flags: str) -> tuple[int, str]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = cli.main(["status", *flags])
    return code, capsys.readouterr().out


def publish(settings: Settings, llm: int, io: int) -> None:
    app = make_celery(settings, "kefu-test", gateway=True)
    publisher = Publisher(app)
    for n in range(llm):
        publisher.handle_inbound(n + 1)
    for n in range(io):
        publisher.deliver(n + 1)


def test_embedded_deployment_from_empty_to_ready(clean_env: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    env = {"KEFU_DATA_DIR": str(clean_env / "var")}
    settings = Settings(data_dir=clean_env / "var")
    code, out = status(monkeypatch, capsys, env)
    assert code == 1
    assert "FAIL  migrations  at nothing (empty database), head is " in out and "run `kefu migrate`" in out
    assert out.splitlines()[-1] == "not ready: missing migrations, llm_worker"

    upgrade(settings)
    publish(settings, llm=3, io=1)
    code, out = status(monkeypatch, capsys, env, "--json")
    found = json.loads(out)
    assert code == 1 and found["missing"] == ["llm_worker"] and found["ok"] is False
    assert found["queues"] == {"llm": 3, "io": 1}
    assert found["checks"]["database"] == found["checks"]["migrations"] == found["checks"]["broker"] == "ok"

    kv = make_kv(settings)
    heartbeat.beat(kv, heartbeat.Heartbeat(node="llm@host", pid=11, model="Qwen3-4B", loaded=False))
    code, out = status(monkeypatch, capsys, env)
    assert code == 1 and "alive, but no model loaded yet" in out and "llm@host pid 11: Qwen3-4B (not loaded)" in out
    heartbeat.beat(kv, heartbeat.Heartbeat(node="llm@host", pid=11, model="Qwen3-4B", loaded=True, slots=8))
    code, out = status(monkeypatch, capsys, env)
    assert code == 0 and out.splitlines()[-1] == "ready"
    assert "llm@host pid 11: Qwen3-4B (loaded, 8 slots)" in out and "queue llm   3 waiting" in out


def test_redis_broker_depths_and_an_unreachable_broker(clean_env: Path, redis14: str,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(data_dir=clean_env / "var", broker_url=redis14)
    upgrade(settings)
    env = {"KEFU_DATA_DIR": str(clean_env / "var"), "KEFU_BROKER_URL": redis14}
    code, out = status(monkeypatch, capsys, env, "--json")
    assert json.loads(out)["queues"] == {"llm": 0, "io": 0}  # Redis keeps no empty list: still a depth of 0
    publish(settings, llm=2, io=5)
    heartbeat.beat(make_kv(settings), heartbeat.Heartbeat(node="llm@gpu0", pid=1, model="m", loaded=True))
    code, out = status(monkeypatch, capsys, env, "--json")
    found = json.loads(out)
    assert code == 0 and found["queues"] == {"llm": 2, "io": 5} and found["missing"] == []
    assert [w["node"] for w in found["llm_workers"]] == ["llm@gpu0"]

    env["KEFU_BROKER_URL"] = "redis://127.0.0.1:1/0"  # nothing listens: broker and heartbeat store both down
    code, out = status(monkeypatch, capsys, env, "--json")
    found = json.loads(out)
    assert code == 1 and found["missing"] == ["broker", "llm_worker"]
    assert found["checks"]["broker"].startswith("unreachable: ") and found["queues"] == {"llm": None, "io": None}
    assert found["checks"]["database"] == "ok"
