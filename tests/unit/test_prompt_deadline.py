"""The prompt is trimmed to what the engine can read by the deadline, at its own measured prefill rate.

After one long message on a slow model the next short ones fell back too: the long turn stayed in the
history and reading it took the whole deadline. Real llama.cpp (the tiny synthetic Qwen3) on both engines.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.envelope import Turn
from models.settings import Settings
from workers.llm.batched import BatchedEngine
from workers.llm.engine import LlamaEngine
from workers.llm.prefill import PrefillRate
from workers.llm.prompts import fit_turns
from workers.runtime import Runtime

SYSTEM = Turn("system", "You are a helpful assistant.")
LONG = Turn("user", "my order number is long and the story is longer " * 40)
NEWEST = [Turn("user", "second question"), Turn("assistant", "second answer")]
QUESTION = Turn("user", "third question")
TURNS = [SYSTEM, LONG, Turn("assistant", "ok"), *NEWEST, QUESTION]

Engine = LlamaEngine | BatchedEngine  # both trim prompts to the deadline at their own prefill rate


@pytest.fixture(params=["simple", "batched"])
def engine(request: pytest.FixtureRequest, tmp_path: Path, tiny_gguf: Path) -> Iterator[Engine]:
    rt = Runtime(Settings(data_dir=tmp_path, model_path=tiny_gguf, engine=request.param, n_ctx=4096, max_tokens=8,
                          temperature=0.0, seed=7))
    try:
        assert isinstance(rt.llm, LlamaEngine | BatchedEngine)
        yield rt.llm
    finally:
        rt.close()


def test_the_oldest_turns_are_dropped_to_fit_the_time_left(engine: Engine) -> None:
    full = engine.prompt_tokens(TURNS)
    newest = engine.prompt_tokens([SYSTEM, *NEWEST, QUESTION])
    assert len(full) > 4 * len(newest)  # the long turn is most of the prompt
    engine.prefill.observe(1000, 1.0)  # this engine reads 1,000 tokens a second
    seconds = 2.2 * len(newest) / 1000  # half of it for reading: room for the newest turns, not for the long one
    trimmed = engine.prompt_tokens(TURNS, time.monotonic() + seconds)
    assert trimmed == newest  # system prompt and newest exchange kept; the long turn dropped


def test_without_a_measured_rate_or_deadline_only_the_context_window_counts(engine: Engine) -> None:
    full = engine.prompt_tokens(TURNS)
    assert engine.prompt_tokens(TURNS, time.monotonic() + 0.01) == full  # no rate yet
    engine.prefill.observe(1000, 1.0)
    assert engine.prompt_tokens(TURNS, None) == full


def test_the_question_and_system_prompt_stay_when_nothing_else_fits(engine: Engine) -> None:
    engine.prefill.observe(1000, 1.0)
    bare = engine.prompt_tokens([SYSTEM, QUESTION])
    assert engine.prompt_tokens(TURNS, time.monotonic()) == bare  # deadline is now


def test_a_generation_measures_the_prefill_rate(engine: Engine) -> None:
    assert engine.prefill.tokens_per_s is None
    engine.generate(TURNS)
    rate = engine.prefill.tokens_per_s
    assert rate is not None and rate > 0


def test_prefill_rate_ignores_small_samples_and_averages() -> None:
    rate = PrefillRate()
    rate.observe(4, 0.001)  # one decode step: says nothing about reading a prompt
    assert rate.tokens_within(10) is None
    rate.observe(1000, 1.0)
    assert rate.tokens_within(2.0) == 1000  # half of the time left goes to reading the prompt
    rate.observe(500, 1.0)
    assert 500 < (rate.tokens_per_s or 0) < 1000
    assert rate.tokens_within(-1) == 0


def test_fit_turns_keeps_system_and_question_when_not_strict() -> None:
    turns = [SYSTEM, LONG, QUESTION]
    with pytest.raises(ValueError, match="does not fit"):
        fit_turns(turns, len, 1)
    assert fit_turns(turns, len, 1, strict=False) == [SYSTEM, QUESTION]
