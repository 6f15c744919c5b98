"""What one model attempt adds to the worker's metrics (workers.answering._count): the generation's histograms and
tokens, a deadline miss whichever part stopped it, and why the fallback replaced the answer."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from models.replies import MODERATED_OUT
from models.states import ReplySource
from workers.answering import MISSED_REASON, SOFT_LIMIT_FAILURE, _count, _Run
from workers.llm.engine import Generation
from workers.llm.watchdog import DEADLINE_MISSED

CHANNEL = "test_metrics_channel"  # a channel of its own: other tests' counts do not mix in


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"channel": CHANNEL, **labels}) or 0.0


def tokens() -> float:
    return REGISTRY.get_sample_value("kefu_tokens_generated_total") or 0.0


def generation(text: str, finish: str, first_token_s: float | None = 0.2, tokens: int = 7) -> Generation:
    return Generation(text, "tiny", 30, tokens, finish, first_token_s, 1.5)


def test_a_model_answer_counts_its_generation_and_tokens() -> None:
    before = (value("kefu_generation_seconds_count"), value("kefu_first_token_seconds_count"), tokens())
    _count(CHANNEL, _Run(generation("您好", "stop"), latency_ms=1500), ReplySource.MODEL, None)
    assert value("kefu_generation_seconds_count") == before[0] + 1
    assert value("kefu_first_token_seconds_count") == before[1] + 1
    assert tokens() == before[2] + 7
    assert value("kefu_generation_seconds_sum") >= 1.5


@pytest.mark.parametrize(("run", "why", "reason", "missed"), [
    (_Run(generation("", DEADLINE_MISSED, None, 0), MISSED_REASON, 25_000), None, "deadline", True),
    (_Run(generation("", "deadline", None, 0), "empty output (deadline)", 25_000), None, "deadline", True),
    (_Run(None, SOFT_LIMIT_FAILURE, 30_000), None, "deadline", True),
    (_Run(None, "GenerationError: out of memory", 10), None, "error", False),
    (_Run(generation("", "stop", 0.1, 1), "empty output (stop)", 300), None, "empty", False),
    (_Run(generation("违禁的回答", "stop"), None, 900), f"{MODERATED_OUT}refuse:words", "moderated", False),
])
def test_a_fallback_is_counted_with_its_reason(run: _Run, why: str | None, reason: str, missed: bool) -> None:
    before = (value("kefu_fallbacks_total", reason=reason), value("kefu_deadline_misses_total"))
    _count(CHANNEL, run, ReplySource.FALLBACK, why)
    assert value("kefu_fallbacks_total", reason=reason) == before[0] + 1
    assert value("kefu_deadline_misses_total") == before[1] + missed


def test_a_partial_answer_at_the_deadline_is_a_miss_but_no_fallback() -> None:
    before = (value("kefu_deadline_misses_total"), sum(value("kefu_fallbacks_total", reason=r)
                                                       for r in ("deadline", "error", "empty", "moderated")))
    _count(CHANNEL, _Run(generation("您好，您的订单", "deadline"), latency_ms=25_000), ReplySource.MODEL, None)
    assert value("kefu_deadline_misses_total") == before[0] + 1
    assert sum(value("kefu_fallbacks_total", reason=r) for r in ("deadline", "error", "empty", "moderated")) == before[1]
