"""The load test's stages: how many users, for how long, and which stage a moment falls in. Pure.

Shared by ``bench/locustfile.py`` (its ``LoadTestShape`` ramps through them) and ``bench/load_test.py`` (which
splits the samples and the CPU figures by stage). Kept apart from the locustfile because importing ``locust``
monkey-patches the interpreter with gevent, which the stack-starting process must not have.

A stage is written ``USERS:HOLD_S``; ``--stages 100:60,250:60`` ramps to 100 users at the spawn rate, holds them
for 60 s, ramps to 250, holds 60 s, then stops. Samples taken while ramping belong to the stage being ramped to
but are not *steady*: the per-stage figures are the steady ones. Raises ``ValueError`` on a malformed list.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    index: int
    users: int
    start_s: float  # seconds after the test's start: the ramp towards ``users`` begins
    steady_s: float  # ``users`` are all running from here …
    end_s: float  # … until here


def parse_stages(text: str, spawn_rate: float) -> list[Stage]:
    """``"100:60,250:60"`` → the stages with their times, each ramp taking (users added) / ``spawn_rate`` s."""
    if spawn_rate <= 0:
        raise ValueError("the spawn rate must be positive")
    stages: list[Stage] = []
    at, users_before = 0.0, 0
    for n, item in enumerate(part.strip() for part in text.split(",") if part.strip()):
        users_text, sep, hold_text = item.partition(":")
        try:
            users, hold = int(users_text), float(hold_text)
        except ValueError:
            raise ValueError(f"stage {item!r}: write USERS:HOLD_SECONDS, e.g. 250:60") from None
        if not sep or users < 1 or hold <= 0:
            raise ValueError(f"stage {item!r}: write USERS:HOLD_SECONDS with at least 1 user and a positive hold")
        ramp = abs(users - users_before) / spawn_rate
        stages.append(Stage(n, users, at, at + ramp, at + ramp + hold))
        at, users_before = at + ramp + hold, users
    if not stages:
        raise ValueError("no stages: write e.g. 100:60,250:60,500:90,1000:120")
    return stages


def stage_at(stages: list[Stage], t: float) -> Stage | None:
    """The stage running ``t`` seconds after the start; None before the start or after the last one."""
    return next((s for s in stages if s.start_s <= t < s.end_s), None)


def total_s(stages: list[Stage]) -> float:
    return stages[-1].end_s if stages else 0.0
