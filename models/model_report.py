"""Models side by side (``kefu model compare``): what each chat model's answers of the last days were like.

:func:`compare` reads only. A reply belongs to the model named in its ``model`` column: the model's answers and,
since the gray release (workers/gray_release.py), the fallback stored when that model failed. Per model:

- ``answers``: its replies; ``fallbacks`` and ``fallback_rate``: those that are the fallback (a failure, empty
  output, the deadline with nothing said, or outbound moderation refusing the text);
- ``latency_p50_ms`` / ``latency_p95_ms``: ``reply.latency_ms`` of its answers that are not fallbacks (the nearest
  rank; None without any);
- ``conversations``: the conversations it answered in; ``handoff_rate``: the share of them a person was asked for
  (``conversation.handoffs`` > 0), whenever in the conversation that was;
- ``csat_mean`` / ``csat_count``: the satisfaction scores given in those conversations in the period (any round: a
  score is asked for when a person hands the conversation back, so it rates the whole conversation).

A conversation answered by two models (moved back to the primary after a rollback) counts for both. Models are
sorted by answers, most first. Raises what the session raises (a database error).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from models.envelope import utcnow
from models.states import ReplySource
from models.tables import ConversationRecord, CsatRecord, ReplyRecord

MAX_DAYS = 366


@dataclass(frozen=True)
class ModelLine:
    model: str
    answers: int
    fallbacks: int
    latency_p50_ms: int | None
    latency_p95_ms: int | None
    conversations: int
    handed_off: int
    csat_mean: float | None
    csat_count: int

    @property
    def fallback_rate(self) -> float:
        return self.fallbacks / self.answers if self.answers else 0.0

    @property
    def handoff_rate(self) -> float:
        return self.handed_off / self.conversations if self.conversations else 0.0

    def json(self) -> dict[str, Any]:
        return {**asdict(self), "fallback_rate": round(self.fallback_rate, 4),
                "handoff_rate": round(self.handoff_rate, 4)}


def percentile(sorted_values: list[int], p: float) -> int | None:
    """The nearest-rank ``p``-th percentile (0 < p <= 100) of already sorted values; None for none."""
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


def compare(session: Session, days: int = 7, now: datetime | None = None) -> tuple[datetime, list[ModelLine]]:
    """(since, one line per model that answered since then); ``days`` 1..MAX_DAYS (ValueError otherwise)."""
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days must be 1..{MAX_DAYS}")
    since = (now or utcnow()) - timedelta(days=days)
    recent = (ReplyRecord.model.is_not(None), ReplyRecord.created_at >= since)
    counts: dict[str, list[int]] = {}  # model -> [answers, fallbacks]
    for model, source, n in session.execute(select(ReplyRecord.model, ReplyRecord.source, func.count())
                                            .where(*recent).group_by(ReplyRecord.model, ReplyRecord.source)):
        line = counts.setdefault(str(model), [0, 0])
        line[0] += int(n)
        line[1] += int(n) if source == ReplySource.FALLBACK else 0
    latencies: dict[str, list[int]] = {}
    for model, latency in session.execute(select(ReplyRecord.model, ReplyRecord.latency_ms).where(
            *recent, ReplyRecord.source != ReplySource.FALLBACK).order_by(ReplyRecord.model, ReplyRecord.latency_ms)):
        latencies.setdefault(str(model), []).append(int(latency))
    conversations = dict(session.execute(select(ReplyRecord.model, func.count(distinct(ReplyRecord.conversation_id)))
                                         .where(*recent).group_by(ReplyRecord.model)).all())
    handed_off = dict(session.execute(
        select(ReplyRecord.model, func.count(distinct(ReplyRecord.conversation_id)))
        .join(ConversationRecord, ConversationRecord.id == ReplyRecord.conversation_id)
        .where(*recent, ConversationRecord.handoffs > 0).group_by(ReplyRecord.model)).all())
    answered_in = select(ReplyRecord.model, ReplyRecord.conversation_id).where(*recent).distinct().subquery()
    csat = {str(model): (float(mean), int(n)) for model, mean, n in session.execute(
        select(answered_in.c.model, func.avg(CsatRecord.score), func.count(CsatRecord.id))
        .join(CsatRecord, CsatRecord.conversation_id == answered_in.c.conversation_id)
        .where(CsatRecord.created_at >= since).group_by(answered_in.c.model))}
    lines = []
    for model, (answers, fallbacks) in counts.items():
        spread = latencies.get(model, [])
        mean, scored = csat.get(model, (None, 0))
        lines.append(ModelLine(model, answers, fallbacks, percentile(spread, 50), percentile(spread, 95),
                               int(conversations.get(model, 0)), int(handed_off.get(model, 0)),
                               None if mean is None else round(mean, 2), scored))
    return since, sorted(lines, key=lambda line: (-line.answers, line.model))
