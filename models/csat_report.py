"""The satisfaction report: customers' scores (``csat`` rows, 1-5) of the last days, per agent and for the bot.

:func:`report` reads only; one grouped query. A row's ``agent_id`` NULL is the bot's stretch of a conversation
(models.tables.CsatRecord). Each line has the number of scores, their average (None when there are none) and how
many of each score 1-5; the lines are the bot first, then agents by name, and a total. An agent whose account was
deleted keeps its line, named by id. Scores outside 1-5 (none are stored: models.csat refuses them) would count
in ``count`` and the average but in no bucket.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.envelope import utcnow
from models.tables import AgentRecord, CsatRecord

SCORES = (1, 2, 3, 4, 5)
MAX_DAYS = 366


@dataclass
class Line:
    agent_id: int | None  # None: the bot
    name: str
    count: int = 0
    total: int = 0
    distribution: dict[int, int] = field(default_factory=lambda: dict.fromkeys(SCORES, 0))

    @property
    def average(self) -> float | None:
        return round(self.total / self.count, 2) if self.count else None

    def json(self) -> dict[str, Any]:
        return {"agent_id": self.agent_id, "name": self.name, "count": self.count, "average": self.average,
                "distribution": {str(s): n for s, n in self.distribution.items()}}


@dataclass(frozen=True)
class Report:
    since: datetime
    days: int
    lines: list[Line]  # the bot, then each agent with scores
    total: Line

    def json(self) -> dict[str, Any]:
        return {"since": self.since.isoformat(), "days": self.days, "lines": [line.json() for line in self.lines],
                "total": self.total.json()}


def report(session: Session, days: int = 30, now: datetime | None = None) -> Report:
    """Scores given within the last ``days`` days (1-MAX_DAYS; ValueError otherwise)."""
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days must be 1-{MAX_DAYS}")
    since = (now or utcnow()) - timedelta(days=days)
    rows = session.execute(select(CsatRecord.agent_id, CsatRecord.score, func.count())
                           .where(CsatRecord.created_at >= since)
                           .group_by(CsatRecord.agent_id, CsatRecord.score)).all()
    names: dict[int | None, str] = dict(session.execute(select(AgentRecord.id, AgentRecord.display_name)).all())
    lines: dict[int | None, Line] = {None: Line(None, "机器人")}
    total = Line(None, "合计")
    for agent_id, score, n in rows:
        line = lines.setdefault(agent_id, Line(agent_id, names.get(agent_id) or f"#{agent_id}"))
        for target in (line, total):
            target.count += n
            target.total += score * n
            if score in target.distribution:
                target.distribution[score] += n
    agents = sorted((line for key, line in lines.items() if key is not None), key=lambda line: line.name)
    return Report(since, days, [lines[None], *agents], total)
