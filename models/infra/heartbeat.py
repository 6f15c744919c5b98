"""The LLM workers' heartbeat: which worker process is alive, on which node, with which chat model loaded.

Each process that serves the ``llm`` queue writes one member of the group :data:`GROUP` in the shared KV store
(:mod:`models.infra.kv`: Redis in production, the SQLite file under ``KEFU_DATA_DIR`` shared by the processes of one
host otherwise) every :data:`INTERVAL_S`, living :data:`TTL_S`; a process that dies stops writing and its key
expires, one that stops cleanly deletes it. The gateway's ``/readyz`` and ``kefu status`` read them with
:func:`alive`.

Guarantees: a heartbeat is never older than :data:`TTL_S` when read; a value that does not parse is skipped, not
raised. Raises whatever the KV store raises (a Redis that does not answer): callers decide what that means.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from models.infra.kv import KV

GROUP = "llm_workers"
INTERVAL_S = 5.0
TTL_S = 15.0  # three beats: one late or lost write does not make a worker look dead


@dataclass(frozen=True)
class Heartbeat:
    """One LLM worker process as it last said: its Celery node, pid, model file name, whether that model is loaded
    (a worker without ``--warm`` loads it on its first message), and the batched engine's slots (0: simple)."""

    node: str
    pid: int
    model: str
    loaded: bool
    slots: int = 0

    @property
    def member(self) -> str:
        return f"{self.node}:{self.pid}"


def beat(kv: KV, heartbeat: Heartbeat) -> None:
    kv.join(GROUP, heartbeat.member, json.dumps(asdict(heartbeat), ensure_ascii=False), TTL_S)


def stopped(kv: KV, heartbeat: Heartbeat) -> None:
    """The process stops serving: readiness notices now, not when its heartbeat expires."""
    kv.leave(GROUP, heartbeat.member)


def alive(kv: KV) -> list[Heartbeat]:
    """Every LLM worker process that beat within :data:`TTL_S`, sorted by node and pid."""
    found = []
    for value in kv.members(GROUP).values():
        try:
            raw = json.loads(value)
            found.append(Heartbeat(node=str(raw["node"]), pid=int(raw["pid"]), model=str(raw["model"]),
                                   loaded=bool(raw["loaded"]), slots=int(raw.get("slots", 0))))
        except (ValueError, KeyError, TypeError):
            continue  # another version's value, or garbage: not a worker this one can vouch for
    return sorted(found, key=lambda h: (h.node, h.pid))


def missing(workers: list[Heartbeat]) -> list[str]:
    """What readiness still lacks: ``llm_worker`` (none alive) or ``llm_model`` (alive, none has its model loaded)."""
    if not workers:
        return ["llm_worker"]
    if not any(w.loaded for w in workers):
        return ["llm_model"]
    return []
