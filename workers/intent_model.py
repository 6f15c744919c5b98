"""A message's intent in the worker: the model's, where the rules were unsure.

The gateway stores the rules' intent (models.intents.classify) when it accepts a text message. In the worker:

- a voice message gets the rules' intent when it is transcribed (workers.voice, in the ``transcribed`` row);
- :func:`store` writes an intent to ``inbound.intent`` and audits it (``intent``: label, source, confidence,
  latency) when it differs from the stored one;
- :func:`settle` runs just before the model answers. For a message the rules could not place (source ``none``)
  and with the model on (``KEFU_INTENT_MODEL``: ``on``, or ``auto`` and a Qwen3 GGUF — never the SmolLM2 demo),
  the engine picks one label with llama.cpp's grammar sampler (:func:`models.intents.label_grammar`: the labels
  and nothing else, greedy, at most :data:`MAX_LABEL_TOKENS` tokens) by the earlier of the generation deadline
  and :data:`MODEL_BUDGET_S`. The label is stored and audited (source ``model``), and an intent with a route in
  ``KEFU_INTENT_ROUTES`` returns its decision (models.dialogue.routed) instead of letting the model answer.

A model that fails or answers nothing leaves the rules' intent in place (logged); nothing here raises for it.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import Any

from sqlalchemy import update

from models import audit, intents
from models.dialogue import Decision, HandOff, routed
from models.envelope import ConversationKey, Turn
from models.infra.db import transaction
from models.intents import IntentResult
from models.settings import Settings
from models.tables import InboundRecord
from workers.llm.engine import ChoosingEngine, Generation
from workers.llm.watchdog import GRACE_S
from workers.runtime import Runtime

log = logging.getLogger(__name__)

MAX_LABEL_TOKENS = 24  # the longest label, spelt byte by byte by a small vocabulary, with room to spare
MODEL_BUDGET_S = 5.0  # the label may cost the answer at most this much of its deadline
MAX_TEXT_CHARS = 500  # what the model reads of a long message
MODEL_CONFIDENCE = 0.5  # a grammar-constrained greedy pick says no more than "the likeliest label"


def model_on(settings: Settings, engine: object) -> bool:
    """Whether to ask ``engine`` (which must be able to :meth:`~workers.llm.engine.ChoosingEngine.choose`)."""
    if settings.intent_model == "off" or not isinstance(engine, ChoosingEngine):
        return False
    if settings.intent_model == "on":
        return True
    engine.load()  # the architecture is known once the GGUF is read
    return engine.architecture.startswith("qwen3")


def ask(settings: Settings, engine: ChoosingEngine, text: str, deadline: float) -> IntentResult | None:
    """The model's label for ``text``, or None when it gave none (deadline, failure to finish one)."""
    known = intents.intents(settings)
    labels = intents.model_labels(known)
    turns = [Turn("system", intents.model_instruction(known)), Turn("user", text[:MAX_TEXT_CHARS])]
    picked = _by_deadline(engine, turns, intents.label_grammar(labels), deadline)
    if picked is None:
        return None
    label = picked.text.strip()
    return IntentResult(label, MODEL_CONFIDENCE, "model") if label in labels else None


def _by_deadline(engine: ChoosingEngine, turns: list[Turn], grammar: str, deadline: float) -> Generation | None:
    """``engine.choose`` answered by ``deadline`` + GRACE_S, else None: one model step that outlasts it must not
    hold the answer (as workers.llm.watchdog does for the answer itself); the late result is dropped."""
    outcome: Future[Generation] = Future()

    def run() -> None:
        try:
            outcome.set_result(engine.choose(turns, grammar, max_new=MAX_LABEL_TOKENS, deadline=deadline))
        except BaseException as exc:  # handed to the waiting thread (or dropped with the late result)
            outcome.set_exception(exc)

    threading.Thread(target=run, name="kefu-intent", daemon=True).start()
    try:
        return outcome.result(timeout=max(0.0, deadline + GRACE_S - time.monotonic()))
    except TimeoutError:
        log.warning("the model's intent step outlasted its deadline; the rules' intent stands")
        return None


def store(rt: Runtime, row: InboundRecord, key: ConversationKey, found: IntentResult, **detail: Any) -> None:
    """Write ``found`` to the inbound row and the audit log, unless the row already says so."""
    if found.label == row.intent:
        return
    with transaction(rt.sessions) as session:
        session.execute(update(InboundRecord).where(InboundRecord.id == row.id).values(intent=found.label))
        audit.record(session, audit.INTENT, channel=key.channel, conversation_id=row.conversation_id,
                     inbound_id=row.id, intent=found.label, source=found.source, confidence=found.confidence,
                     **detail)
    row.intent = found.label


def settle(rt: Runtime, row: InboundRecord, key: ConversationKey, handoff: HandOff, *,
           begun: float | None) -> Decision | None:
    """The message's intent before the model answers (see the module's docstring); the route's decision, if the
    model's label has one. ``begun``: when the task began (the generation deadline counts from it)."""
    settings = rt.settings
    if settings.intent_model == "off" or not row.text:
        return None
    found = intents.classify(settings, row.text)  # the gateway's (or the transcription's) intent, again: pure
    if found.sure:
        return None
    started = time.monotonic()
    soft = settings.generation_soft_limit_s
    deadline = min(started + MODEL_BUDGET_S, (begun if begun is not None else started) + soft - min(5.0, soft * 0.2))
    asked = None
    try:
        engine = rt.llm
        if model_on(settings, engine):
            assert isinstance(engine, ChoosingEngine)
            asked = ask(settings, engine, row.text, deadline)
    except Exception as exc:  # the rules' intent stands; the answer matters more than its label
        log.warning("the model gave no intent for inbound %s: %s", row.id, type(exc).__name__)
    if asked is None:
        return None
    store(rt, row, key, asked, latency_ms=int((time.monotonic() - started) * 1000))
    return routed(settings, asked.label, handoff)
