"""Business hours: when the human desk takes conversations (``KEFU_DESK_HOURS`` in ``KEFU_DESK_TIMEZONE``).

The format is what an operator writes on a notice board: ``mon-fri 09:00-18:00; sat 10:00-16:00``. Days are
``mon tue wed thu fri sat sun`` (a range wraps: ``fri-mon``); a day may have several spans separated by commas
(``mon-fri 09:00-12:00,13:30-18:00``); ``24:00`` ends a day. An empty schedule means always open. Pure: no I/O.

Raises ValueError with the offending part on a schedule that does not parse (the settings validator turns it
into a start-up error naming the variable).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SPAN = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")


@dataclass(frozen=True, slots=True)
class Span:
    start: int  # minutes after midnight
    end: int


@dataclass(frozen=True, slots=True)
class Schedule:
    """Open spans per weekday (0 = Monday); ``always`` when no schedule was given."""

    days: tuple[tuple[Span, ...], ...]
    zone: ZoneInfo
    always: bool = False

    def is_open(self, at: datetime) -> bool:
        if self.always:
            return True
        local = at.astimezone(self.zone)
        minute = local.hour * 60 + local.minute
        return any(span.start <= minute < span.end for span in self.days[local.weekday()])


def _minutes(hours: str, minutes: str, part: str) -> int:
    value = int(hours) * 60 + int(minutes)
    if int(minutes) >= 60 or value > 24 * 60:
        raise ValueError(f"{part!r}: not a time of day")
    return value


def _days(text: str, part: str) -> list[int]:
    first, _, last = text.partition("-")
    try:
        start = DAYS.index(first)
        end = DAYS.index(last) if last else start
    except ValueError:
        raise ValueError(f"{part!r}: days are {', '.join(DAYS)} (e.g. mon-fri)") from None
    return [(start + i) % 7 for i in range((end - start) % 7 + 1)]


def parse(schedule: str, zone: str = "Asia/Shanghai") -> Schedule:
    tz = ZoneInfo(zone)
    text = schedule.strip().lower()
    if not text:
        return Schedule(tuple(() for _ in DAYS), tz, always=True)
    days: list[list[Span]] = [[] for _ in DAYS]
    for part in filter(None, (p.strip() for p in text.split(";"))):
        day_text, _, spans_text = part.partition(" ")
        if not spans_text.strip():
            raise ValueError(f"{part!r}: write days then hours, e.g. 'mon-fri 09:00-18:00'")
        spans = []
        for span_text in spans_text.replace(" ", "").split(","):
            m = _SPAN.match(span_text)
            if m is None:
                raise ValueError(f"{part!r}: hours are HH:MM-HH:MM, e.g. 09:00-18:00")
            span = Span(_minutes(m[1], m[2], part), _minutes(m[3], m[4], part))
            if span.end <= span.start:
                raise ValueError(f"{part!r}: a span must end after it starts")
            spans.append(span)
        for day in _days(day_text, part):
            days[day].extend(spans)
    return Schedule(tuple(tuple(d) for d in days), tz)
