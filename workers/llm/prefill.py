"""How many prompt tokens an engine reads in a time budget, from its own measured prefill rate.

The history was trimmed to the context window only, so after one long message on a slow model the next
short ones also fell back: their prompt (the long turn still in the history) took the whole deadline to
read. :class:`PrefillRate` keeps a moving average of the tokens per second the engine evaluated in
prompt-sized batches (at least :data:`MIN_SAMPLE` tokens; single decode steps say nothing about reading a
prompt), and :meth:`PrefillRate.tokens_within` turns the time left into a token budget for
:func:`workers.llm.engine.build_prompt`, which then drops the oldest turns (never the system prompt or the
question). Until a first measurement there is no budget. Thread-safe; never raises.
"""

from __future__ import annotations

import threading

MIN_SAMPLE = 32  # prompt tokens in one measurement, at least
PREFILL_SHARE = 0.5  # of the time left, for reading the prompt; the rest is for the answer
WEIGHT = 0.3  # of the newest measurement in the moving average


class PrefillRate:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens_per_s: float | None = None

    @property
    def tokens_per_s(self) -> float | None:
        return self._tokens_per_s

    def observe(self, tokens: int, seconds: float) -> None:
        """``tokens`` prompt tokens were evaluated in ``seconds``."""
        if tokens < MIN_SAMPLE or seconds <= 0:
            return
        rate = tokens / seconds
        with self._lock:
            old = self._tokens_per_s
            self._tokens_per_s = rate if old is None else (1 - WEIGHT) * old + WEIGHT * rate

    def tokens_within(self, seconds_left: float) -> int | None:
        """Prompt tokens that can be read in :data:`PREFILL_SHARE` of ``seconds_left``; None before any measurement."""
        rate = self._tokens_per_s
        if rate is None:
            return None
        return int(rate * max(0.0, seconds_left) * PREFILL_SHARE)
