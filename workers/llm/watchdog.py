"""The generation deadline holds whatever the pool: a model step that outlasts it no longer holds the answer.

An engine checks its deadline between decode steps, and Celery cannot stop a thread (threads pool: no
hard time limit), so one step that takes too long (a huge prefill, a contended GPU, a model paged out)
used to hold the reply for as long as it took. :func:`generate_by` runs the engine's ``generate`` in a
helper thread and waits for it until ``deadline + GRACE_S``. Past that it returns at once:

- a :class:`~workers.llm.engine.Generation` with the text generated so far and ``finish_reason``
  ``deadline_missed`` (:data:`DEADLINE_MISSED`); the caller applies its usual rules (partial text, or the
  fallback when there is none) and audits the miss;
- no streamed piece reaches ``on_text`` after it returned (the callback is closed under a lock), and the
  engine is asked to stop (the callback answers False, which cancels the generation at its next step);
- the stuck step finishes in the background; its late result is dropped and logged.

Raises what the engine raises when it answers in time (``GenerationError``, ``PromptTooLong``), and whatever
interrupts the wait (Celery's ``SoftTimeLimitExceeded`` in a prefork child), after closing the callback.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future

from models.envelope import Turn
from workers.llm.engine import Generation, TextCallback, TextEngine
from workers.llm.prompts import strip_think

log = logging.getLogger(__name__)

GRACE_S = 0.5  # an engine ends at its deadline by itself within a step; the watchdog is for a step that does not
DEADLINE_MISSED = "deadline_missed"


class _Relay:
    """The engine's streaming callback: keeps the text so far and forwards it until the watchdog closes it."""

    def __init__(self, on_text: TextCallback | None) -> None:
        self._on_text = on_text
        self._lock = threading.Lock()
        self._pieces: list[str] = []
        self._closed = False

    def __call__(self, piece: str) -> bool | None:
        with self._lock:  # held while forwarding: close() returns only once no piece is on its way out
            if self._closed:
                return False
            self._pieces.append(piece)
            return None if self._on_text is None else self._on_text(piece)

    def close(self) -> str:
        """Stop forwarding; the text generated so far."""
        with self._lock:
            self._closed = True
            return strip_think("".join(self._pieces))


def generate_by(engine: TextEngine, turns: list[Turn], *, on_text: TextCallback | None,
                deadline: float | None) -> Generation:
    """``engine.generate`` answered by ``deadline`` (a ``time.monotonic()`` instant) plus :data:`GRACE_S`."""
    if deadline is None:
        return engine.generate(turns, on_text=on_text)
    started = time.monotonic()
    relay = _Relay(on_text)
    outcome: Future[Generation] = Future()

    def run() -> None:
        try:
            outcome.set_result(engine.generate(turns, on_text=relay, deadline=deadline))
        except BaseException as exc:  # handed to the waiting thread, or logged when it has gone
            outcome.set_exception(exc)

    threading.Thread(target=run, name="kefu-generation", daemon=True).start()
    try:
        return outcome.result(timeout=max(0.0, deadline + GRACE_S - time.monotonic()))
    except TimeoutError:
        text = relay.close()
        log.warning("a model step outlasted the generation deadline; answering without it")
        outcome.add_done_callback(_late)
        return Generation(text=text, model=engine.model_name, prompt_tokens=0, completion_tokens=0,
                          finish_reason=DEADLINE_MISSED, first_token_s=None, total_s=time.monotonic() - started)
    except BaseException:
        relay.close()
        raise


def _late(outcome: Future[Generation]) -> None:
    exc = outcome.exception()
    if exc is not None:
        log.warning("a generation that missed its deadline ended with %s", type(exc).__name__)
    else:
        log.info("a generation that missed its deadline ended (%s); its result was dropped",
                 outcome.result().finish_reason)
