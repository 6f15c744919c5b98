"""Tests for workers.context: the context window sent to the model and kept for the next message."""

from __future__ import annotations

from models.envelope import Turn
from workers.context import compose, extend_history


def _exchanges(n: int) -> list[Turn]:
    turns: list[Turn] = []
    for i in range(1, n + 1):
        turns += [Turn("user", f"q{i}"), Turn("assistant", f"a{i}")]
    return turns


def test_compose_keeps_the_last_n_exchanges() -> None:
    turns = compose("sys", _exchanges(4), "new", max_turns=2)
    assert turns == [
        Turn("system", "sys"),
        Turn("user", "q3"),
        Turn("assistant", "a3"),
        Turn("user", "q4"),
        Turn("assistant", "a4"),
        Turn("user", "new"),
    ]


def test_compose_with_short_history_keeps_all_of_it() -> None:
    history = _exchanges(1)
    assert compose("sys", history, "new", max_turns=5) == [Turn("system", "sys"), *history, Turn("user", "new")]


def test_compose_with_no_history() -> None:
    assert compose("sys", [], "hello", max_turns=5) == [Turn("system", "sys"), Turn("user", "hello")]


def test_compose_with_max_turns_zero_sends_no_history() -> None:
    assert compose("sys", _exchanges(3), "hello", max_turns=0) == [Turn("system", "sys"), Turn("user", "hello")]


def test_compose_does_not_mutate_history() -> None:
    history = _exchanges(3)
    before = list(history)
    compose("sys", history, "x", max_turns=1)
    assert history == before


def test_extend_history_appends_the_exchange() -> None:
    assert extend_history(_exchanges(1), "q2", "a2", max_turns=5) == _exchanges(2)
    assert extend_history([], "q1", "a1", max_turns=5) == _exchanges(1)


def test_extend_history_caps_at_n_exchanges() -> None:
    history = extend_history(_exchanges(3), "q4", "a4", max_turns=3)
    assert history == _exchanges(4)[2:]
    assert len(history) == 6
    assert history[0] == Turn("user", "q2") and history[-1] == Turn("assistant", "a4")


def test_extend_history_repeatedly_stays_bounded() -> None:
    history: list[Turn] = []
    for i in range(1, 11):
        history = extend_history(history, f"q{i}", f"a{i}", max_turns=2)
        assert len(history) == 2 * min(i, 2)
    assert history == _exchanges(10)[-4:]


def test_extend_history_with_max_turns_zero_keeps_nothing() -> None:
    assert extend_history(_exchanges(2), "q", "a", max_turns=0) == []


def test_the_channel_hint_is_a_second_system_block() -> None:
    turns = compose("sys", _exchanges(1), "q", max_turns=1, hint="hint")
    assert [(t.role, t.text) for t in turns[:2]] == [("system", "sys"), ("system", "hint")]
    assert compose("sys", [], "q", max_turns=1, hint=None) == [Turn("system", "sys"), Turn("user", "q")]


def test_fit_turns_keeps_every_leading_system_block() -> None:
    from workers.llm.prompts import fit_turns

    turns = compose("sys", _exchanges(3), "q", max_turns=3, hint="hint")
    fitted = fit_turns(turns, len, 5)  # room for the two system blocks, one exchange and the question
    assert [t.text for t in fitted] == ["sys", "hint", "q3", "a3", "q"]


def test_printable_drops_control_characters_but_keeps_layout() -> None:
    from models.envelope import printable

    assert printable("a\x00b\x07c\x1b[31m\x7f") == "abc[31m"
    assert printable("第一行\n\t第二行\r\n") == "第一行\n\t第二行\r\n"
