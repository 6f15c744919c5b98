"""A generated answer kept when storing it failed, so the retry stores the same text instead of generating again.

A database blip at store time used to throw the finished generation away: the task's retry ran the model
again (seconds of GPU, and at a temperature above 0 a different text from the one already streamed to the
customer). :func:`keep` puts the answer and its generation's audit facts (:class:`Kept`: the generation, the
failure, the latency, the knowledge-base sources it was given) in the kv store (Redis, or the embedded SQLite kv)
under the inbound id for :data:`KEEP_S`; :func:`take` gives them back to the next attempt, which stores and
audits them as they were. The text is the reply as it would have been stored (already masked by
:func:`models.pii.mask`); nothing is logged.

Never raises: a kv failure only means the retry generates again, as before.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import Any, NamedTuple

from models.infra.kv import KV
from models.replies import Answer
from models.states import ReplySource
from workers.llm.engine import Generation

log = logging.getLogger(__name__)

KEEP_S = 3600  # well past the task's retries (seconds) and the sweeper's requeue (about a minute)


class Kept(NamedTuple):
    """An answer and the audit facts of the generation that made it."""

    answer: Answer
    generation: Generation | None
    failure: str | None
    latency_ms: int
    kb_used: dict[str, Any] | None  # the ``kb_used`` audit detail, None without a knowledge base


def _key(inbound_id: int) -> str:
    return f"kept-answer:{inbound_id}"


def keep(kv: KV, inbound_id: int, kept: Kept) -> None:
    """Keep an answer that could not be stored; best effort."""
    value = {**kept._asdict(), "answer": asdict(kept.answer),
             "generation": None if kept.generation is None else asdict(kept.generation)}
    try:
        kv.set(_key(inbound_id), json.dumps(value, ensure_ascii=False), KEEP_S)
    except Exception as exc:
        log.warning("could not keep the answer to inbound %s (%s); a retry generates again", inbound_id,
                    type(exc).__name__)


def take(kv: KV, inbound_id: int) -> Kept | None:
    """The answer kept for this inbound, or None."""
    try:
        raw = kv.get(_key(inbound_id))
    except Exception as exc:
        log.warning("kept answers unavailable (%s); generating", type(exc).__name__)
        return None
    if raw is None:
        return None
    try:
        value: dict[str, Any] = json.loads(raw)
        fields = value["answer"]
        answer = Answer(**{**fields, "source": ReplySource(fields["source"])})
        generation = None if value["generation"] is None else Generation(**value["generation"])
        return Kept(answer, generation, value["failure"], int(value["latency_ms"]), value.get("kb_used"))
    except (ValueError, KeyError, TypeError):
        log.warning("kept answer of inbound %s unreadable; generating", inbound_id)
        return None


def forget(kv: KV, inbound_id: int) -> None:
    """The answer is stored: drop the kept copy (it would expire anyway)."""
    try:
        kv.delete(_key(inbound_id))
    except Exception as exc:
        log.warning("could not drop a kept answer (%s); it expires by itself", type(exc).__name__)
