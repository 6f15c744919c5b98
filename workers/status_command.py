"""``kefu status``: what of a Kefu deployment is running and what is not, checked from wherever the command runs.

Checks, each bounded in time (``KEFU_DB_RESPONSE_TIMEOUT_S`` for the database, ``KEFU_PUBLISH_TIMEOUT_S`` for the
broker and the KV store) and never raising: the database answers, its schema is at the migrations' head, the broker
answers, the depth of each queue (``llm``, ``io``), and the LLM worker processes alive with their model (their
heartbeat: :mod:`models.infra.heartbeat`). Required: database, migrations, broker, and at least one LLM worker
with its model loaded; :func:`run` returns 1 when any of them is missing, 0 otherwise. Queue depths are shown, never
judged (a deep queue is an alert's business: compose/monitoring/alerts.yml). With a canary model
(``KEFU_CANARY_BACKEND``), its state is shown too (WARN once taken out), never required.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from models.settings import Settings

REQUIRED = ("database", "migrations", "broker", "llm_worker")


@dataclass
class Status:
    checks: dict[str, str] = field(default_factory=dict)  # name -> "ok" or what is wrong
    queues: dict[str, int | None] = field(default_factory=dict)  # None: could not be read
    llm_workers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def missing(self) -> list[str]:
        return [name for name in REQUIRED if self.checks.get(name) != "ok"]

    def as_json(self) -> dict[str, Any]:
        return {"ok": not self.missing, "missing": self.missing, **asdict(self)}


def _failure(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
    return f"unreachable: {type(exc).__name__}" + (f": {first}" if first else "")


def check_database(settings: Settings, status: Status) -> None:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from models.infra.db import make_engine
    from models.infra.migrate import alembic_config

    engine = make_engine(settings, pre_ping=False, response_timeout_s=settings.db_response_timeout_s)
    try:
        with engine.connect() as conn:
            current = set(MigrationContext.configure(conn).get_current_heads())
    except Exception as exc:
        status.checks["database"] = _failure(exc)
        status.checks["migrations"] = "unknown (no database)"
        return
    finally:
        engine.dispose()
    status.checks["database"] = "ok"
    heads = set(ScriptDirectory.from_config(alembic_config(settings)).get_heads())
    if current == heads:
        status.checks["migrations"] = "ok"
    else:
        status.checks["migrations"] = (f"at {', '.join(sorted(current)) or 'nothing (empty database)'}, head is "
                                       f"{', '.join(sorted(heads))}: run `kefu migrate`")


def check_broker(settings: Settings, status: Status) -> None:
    from models.infra.queues import QUEUES, Publisher, make_celery, queue_depth

    app = make_celery(settings, "kefu-status", gateway=True)
    try:
        Publisher(app).ping(settings.publish_timeout_s)
    except Exception as exc:
        status.checks["broker"] = _failure(exc)
        status.queues = dict.fromkeys(QUEUES)
        return
    status.checks["broker"] = "ok"
    status.queues = dict.fromkeys(QUEUES)
    try:
        for queue in QUEUES:
            status.queues[queue] = queue_depth(app, queue)
    except Exception:  # the broker went away since the ping: the depths left unknown say so
        return


def check_llm_workers(settings: Settings, status: Status) -> None:
    from models.infra import heartbeat
    from models.infra.kv import make_kv

    try:
        kv = make_kv(settings, settings.publish_timeout_s)
    except Exception as exc:
        status.checks["llm_worker"] = _failure(exc)
        return
    try:
        workers = heartbeat.alive(kv)
    except Exception as exc:
        status.checks["llm_worker"] = _failure(exc)
        return
    finally:
        getattr(kv, "close", lambda: None)()
    status.llm_workers = [asdict(w) for w in workers]
    lacking = heartbeat.missing(workers)
    if not lacking:
        status.checks["llm_worker"] = "ok"
    elif lacking == ["llm_worker"]:
        status.checks["llm_worker"] = f"none alive (no heartbeat within {heartbeat.TTL_S:.0f} s)"
    else:
        status.checks["llm_worker"] = "alive, but no model loaded yet (start it with --warm, or send a message)"


def check_phone_speech(settings: Settings, status: Status) -> None:
    """Shown, not required: whether Mandarin callers would be understood (channels/telephony/asr_language.py)."""
    from channels.telephony import asr_language
    from models.settings import ConfigError

    try:
        found = asr_language.problem(settings)
    except ConfigError as exc:  # a phone setting that does not even parse
        found = str(exc)
    status.checks["phone_speech"] = "ok" if found is None else found


def check_canary(settings: Settings, status: Status) -> None:
    """Shown, not required: the gray release's canary model and its state (workers.gray_release; details in
    ``kefu model status``). Nothing without KEFU_CANARY_BACKEND."""
    if not settings.canary_backend:
        return
    from models.infra.kv import make_kv
    from workers.gray_release import canary_of, phase_of

    try:
        canary = canary_of(settings)
        assert canary is not None
        kv = make_kv(settings, settings.publish_timeout_s)
        try:
            phase = phase_of(kv, canary)
        finally:
            getattr(kv, "close", lambda: None)()
    except Exception as exc:
        status.checks["canary"] = _failure(exc)
        return
    share = phase.shares(settings.canary_share)[1]
    changed = f" by {phase.by} at {phase.at}" + (f": {phase.reason}" if phase.reason else "") if phase.by else ""
    status.checks["canary"] = f"{canary.name} {phase.state}{changed} ({share:.0%} of conversations)"


def collect(settings: Settings) -> Status:
    status = Status()
    check_database(settings, status)
    check_broker(settings, status)
    check_llm_workers(settings, status)
    check_phone_speech(settings, status)
    check_canary(settings, status)
    return status


def render(status: Status) -> str:
    lines = []
    for name in REQUIRED:
        answer = status.checks.get(name, "unknown")
        lines.append(f"{'ok  ' if answer == 'ok' else 'FAIL'}  {name:<11} {answer}")
    if "phone_speech" in status.checks:
        answer = status.checks["phone_speech"]
        lines.append(f"{'ok  ' if answer == 'ok' else 'WARN'}  phone_speech {answer}")
    lines += _canary_line(status)
    for queue, depth in status.queues.items():
        lines.append(f"      queue {queue:<5} {'unknown' if depth is None else f'{depth} waiting'}")
    for worker in status.llm_workers:
        model = worker["model"] or "(engine not built yet)"
        state = f"loaded, {worker['slots']} slots" if worker["loaded"] and worker["slots"] else (
            "loaded" if worker["loaded"] else "not loaded")
        lines.append(f"      llm   {worker['node']} pid {worker['pid']}: {model} ({state})")
    lines.append("ready" if not status.missing else f"not ready: missing {', '.join(status.missing)}")
    return "\n".join(lines)


def _canary_line(status: Status) -> list[str]:
    """The canary's line, if there is a canary: WARN once taken out (or unreadable), worth a look, never a failure."""
    if "canary" not in status.checks:
        return []
    answer = status.checks["canary"]
    warn = " rolled_back" in answer or answer.startswith("unreachable")
    return [f"{'WARN' if warn else 'ok  '}  canary      {answer}"]


def run(settings: Settings, as_json: bool) -> int:
    status = collect(settings)
    print(json.dumps(status.as_json(), indent=2, ensure_ascii=False) if as_json else render(status))
    return 1 if status.missing else 0
