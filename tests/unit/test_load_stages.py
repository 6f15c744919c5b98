"""The load test's stage schedule (bench/load_stages.py): ramps at the spawn rate, holds, and the stage of a moment."""

from __future__ import annotations

import pytest

from bench.load_stages import parse_stages, stage_at, total_s


def test_ramps_take_users_added_over_spawn_rate() -> None:
    stages = parse_stages("100:60, 250:30,1000:120", spawn_rate=25)
    assert [(s.users, s.start_s, s.steady_s, s.end_s) for s in stages] == [
        (100, 0.0, 4.0, 64.0), (250, 64.0, 70.0, 100.0), (1000, 100.0, 130.0, 250.0)]
    assert total_s(stages) == 250.0


def test_a_moment_falls_in_one_stage_and_none_after_the_last() -> None:
    stages = parse_stages("10:5,20:5", spawn_rate=10)  # [0, 6) then [6, 12)
    assert stage_at(stages, 0.0) == stages[0]
    assert stage_at(stages, 5.99) == stages[0]
    assert stage_at(stages, 6.0) == stages[1]
    assert stage_at(stages, 12.0) is None
    assert stage_at(stages, -1.0) is None


def test_ramping_down_takes_time_too() -> None:
    stages = parse_stages("100:10,50:10", spawn_rate=10)
    assert stages[1].steady_s - stages[1].start_s == 5.0


@pytest.mark.parametrize("text", ["", "100", "100:x", "0:60", "100:0", "a:60"])
def test_malformed_stages_are_refused_with_the_format(text: str) -> None:
    with pytest.raises(ValueError, match=r"USERS:HOLD|no stages"):
        parse_stages(text, spawn_rate=10)


def test_spawn_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="spawn rate"):
        parse_stages("10:10", spawn_rate=0)
