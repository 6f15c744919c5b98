"""Answering one customer message in the worker, under its conversation's lock (``tasks.handle_inbound``).

- A voice message the platform did not transcribe is transcribed first (:mod:`workers.voice`) and
  then decided like typed text (:func:`models.dialogue.decide`): a rule's answer, a hand-off through
  the channel's port, or the model; ``voice_unclear_reply`` when no text comes out.
- The model's answer: the conversation's recent turns (cache, or the database for channels that may
  change a stored answer), the system prompt and — where the channel can hand off — the hand-off
  hint; streamed to channels that stream; any failure still stores the channel's fallback reply.
- With an embedding model (``KEFU_EMBEDDING_MODEL_PATH``), the FAQ is matched again first, its lexical and dense
  confidences fused (:mod:`workers.dense_faq`): an entry at ``KEFU_FAQ_FUSED_THRESHOLD`` answers, why ``faq_fused``,
  its match audited ``kb_used``.
- A message the rules could not give an intent may get the model's (:mod:`workers.intent_model`, a grammar of
  the labels), stored and audited; an intent route for it (``KEFU_INTENT_ROUTES``) decides instead of the model.
- With a knowledge base (``kefu kb import``), the best passages for the question are a further system
  block (:mod:`workers.grounding`, :func:`workers.llm.prompts.knowledge_block`): answer from them only,
  say so when they do not cover it; their ids are audited ``kb_used`` with the reply.
- The deadline (``generation_soft_limit_s`` less a margin, counted from when the task began) holds whatever the
  pool: a model step that outlasts it is left to finish in the background (:mod:`workers.llm.watchdog`) and
  the text so far, or the fallback, is stored, audited ``generation_failed`` with :data:`MISSED_REASON` when
  nothing came out (``finish_reason`` ``deadline_missed`` in ``generation_finished`` either way).
- An answer whose store fails (a database blip) is kept in the kv store (:mod:`workers.kept_answers`): the
  task's retry stores the same text instead of generating again.
- The model's reply is moderated (:mod:`models.moderation`: mask, or the fallback instead) and masked
  (:mod:`models.pii`) before it is stored or kept in the history; streamed text holds back a trailing run
  of digits until it ends and sends it masked, so no full ID, card or mobile number is ever streamed.
- A number 1-5 right after the request for a satisfaction score (decision ``csat_score``, workers.follow_up) is
  answered with the thanks and the score stored (models.csat.record) in the same transaction.
- Every answer is written by :func:`models.replies.store_reply` in one transaction with its
  generation audit rows; a second worker that answered first wins and its reply is kept.
- Metrics (:mod:`models.infra.metrics`): the queue wait when answering begins, the generation's first token,
  duration, tokens and deadline miss, why a fallback was stored, and each stored answer by channel, intent, source.

Returns the reply id; the task publishes ``deliver`` for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select
from sqlalchemy.orm import Session

from models import audit, csat, moderation, pii, transcript
from models.dialogue import CSAT_SCORE, Action, Decision, HandOff, Message, decide, fallback_reply, faq_decision, prompt_hint
from models.envelope import ConversationKey, Turn
from models.infra import metrics
from models.infra.db import transaction
from models.knowledge.fused_faq import WHY_FUSED
from models.replies import MODERATED_OUT, Answer, reply_id_of, store_reply
from models.states import ReplySource
from models.tables import ConversationRecord, InboundRecord
from workers import follow_up, gray_release, intent_model, kept_answers, voice
from workers.context import compose, extend_history
from workers.llm.engine import Generation, TextEngine
from workers.llm.prompts import knowledge_block, knowledge_chars
from workers.llm.watchdog import DEADLINE_MISSED, generate_by
from workers.runtime import Runtime

log = logging.getLogger(__name__)

MISSED_REASON = "deadline missed: a model step outlasted the generation deadline"
SOFT_LIMIT_FAILURE = "soft time limit exceeded"  # Celery's soft limit struck the generation (a deadline miss)


def answer(rt: Runtime, row: InboundRecord, key: ConversationKey) -> int:
    """Answer the message; the reply id. Raises voice.TryAgain while a voice download should be retried."""
    begun = time.monotonic()  # the deadline counts from here, as Celery's soft limit does from the task's start
    metrics.started_after_queue(key.channel, row.queued_at)
    if row.media_id is None:
        return generate(rt, row, key, begun=begun)
    if voice.pending(row):
        try:
            row = voice.transcribe(rt, row, key)
        except voice.Unclear:
            return store(rt, row, key, Answer(rt.settings.voice_unclear_reply, ReplySource.RULE, why="voice_unclear"),
                         inbound_text=voice.UNRECOGNIZED)
    handoff = rt.handoff(key.channel)
    decision = decide(rt.settings, Message(row.text, "voice", channel=key.channel), handoff.availability(key.account))
    if decision.action is Action.GENERATE:
        return generate(rt, row, key, begun=begun)
    return carry_out(rt, row, key, decision)


def known_only_now(rt: Runtime, row: InboundRecord, key: ConversationKey, handoff: HandOff,
                   begun: float | None) -> Decision | None:
    """What the worker decides before the model answers, knowing what the gateway could not: a yes to the ask-back
    or a run of failed answers (workers.follow_up), then the model's intent for a message the rules could not
    place, when it has a route (workers.intent_model.settle)."""
    if rt.handoff(key.channel).from_worker:
        with rt.sessions() as session:
            follow = follow_up.decide_again(session, rt.settings, row.text, row.conversation_id, row.id, key.channel,
                                            handoff)
        if follow.action is not Action.GENERATE:
            return follow
    return intent_model.settle(rt, row, key, handoff, begun=begun)


def carry_out(rt: Runtime, row: InboundRecord, key: ConversationKey, decision: Decision) -> int:
    """Store a decision that answers now (ANSWER or HAND_OFF); a hand-off's notice is delivered next and the
    channel carries the hand-off out."""
    if decision.action is Action.HAND_OFF:
        handoff = rt.handoff(key.channel)
        notice = Answer(handoff.later_notice(key.account, decision.text), ReplySource.HANDOFF, why=decision.why)
        with handoff.beginning(key):
            return store(rt, row, key, notice)
    if decision.why == CSAT_SCORE:  # the thanks, and the score in the same transaction
        score = csat.score_of(row.text)
        assert score is not None  # the rule decided on it
        return store(rt, row, key, decision.answer(),
                     also=lambda session: csat.record(session, row.conversation_id, score, key.channel))
    return store(rt, row, key, decision.answer())


@dataclass
class _Run:
    """One generation attempt: what came out, and why it failed if it did."""

    generation: Generation | None = None
    failure: str | None = None
    latency_ms: int = 0
    kb_used: dict[str, Any] | None = None  # the knowledge-base sources the model was given (the audit detail)
    model: str | None = None  # the model asked (generation_failed names it)


def store(rt: Runtime, row: InboundRecord, key: ConversationKey, answer: Answer, *,
          inbound_text: str | None = None, run: _Run | None = None,
          also: Callable[[Session], object] | None = None) -> int:
    """Store an answer with its pending delivery (and the generation's audit rows); the reply id that won.
    ``also``: more to write in the same transaction when this answer wins (a satisfaction score)."""
    with transaction(rt.sessions) as session:
        before = (lambda reply_id: _record_generation(session, row, key, reply_id, run)) if run is not None else None
        reply_id = store_reply(session, inbound_id=row.id, conversation_id=row.conversation_id, channel=key.channel,
                               answer=answer, inbound_text=inbound_text, before_audit=before)
        if reply_id is None:  # another worker stored one first; keep theirs
            existing = reply_id_of(session, row.id)
            assert existing is not None
            return existing
        if also is not None:
            also(session)
    metrics.answered(key.channel, row.intent, answer.source)
    return reply_id


def generate(rt: Runtime, row: InboundRecord, key: ConversationKey, *, begun: float | None = None) -> int:
    """The model's answer; ``begun`` (monotonic): when the task's work on it began, which the deadline counts from
    (the history, follow-up and knowledge look-ups spend it too); None: from the model call."""
    settings = rt.settings
    channel = rt.channel(key.channel)
    handoff = rt.handoff(key.channel).availability(key.account)
    history, round_ = _history(rt, row, channel.cache_context)
    kept = kept_answers.take(rt.kv, row.id)
    if kept is None:
        if (decided := known_only_now(rt, row, key, handoff, begun)) is not None:
            return carry_out(rt, row, key, decided)  # a yes to the ask-back, failed answers, a routed model intent
        if rt.dense_faq is not None and (found := rt.dense_faq.match(row.text)) is not None:
            # a paraphrase of an FAQ entry the gateway's lexical match abstained on (workers/dense_faq.py)
            return store(rt, row, key, faq_decision(found.entry, WHY_FUSED).answer(),  # an approved answer says so
                         run=_Run(kb_used=found.audit_detail()))
    if kept is not None:  # generated by an attempt whose store failed: store that text, do not generate again
        answer, run = kept.answer, _Run(kept.generation, kept.failure, kept.latency_ms, kept.kb_used)
    else:
        hint = prompt_hint(settings, handoff)
        previous = next((t.text for t in reversed(history) if t.role == "user"), "")
        grounding = rt.knowledge.lookup(row.text, previous)  # None: no knowledge base, the prompt is as it always was
        knowledge = None if grounding is None else knowledge_block(
            [(s.title, s.heading, s.text) for s in grounding.sources], offer_person=hint is not None,
            max_chars=knowledge_chars(settings.n_ctx))
        turns = compose(settings.system_prompt, history, row.text, settings.context_turns, hint=hint,
                        knowledge=knowledge)
        answer, run = _generated(rt, row, key, turns, handoff, begun)
        run.kb_used = None if grounding is None else grounding.audit_detail()
    try:
        reply_id = store(rt, row, key, answer, run=run)
    except Exception:  # a database blip: the task retries, and the retry stores this same answer
        kept_answers.keep(rt.kv, row.id, kept_answers.Kept(answer, run.generation, run.failure, run.latency_ms,
                                                           run.kb_used))
        raise
    if kept is not None:
        kept_answers.forget(rt.kv, row.id)
    rt.context.save(row.conversation_id, row.id,
                    extend_history(history, row.text, answer.text, settings.context_turns), round_)
    return reply_id


def _history(rt: Runtime, row: InboundRecord, cached: bool) -> tuple[list[Turn], int]:
    """The conversation's recent turns (the cache where the channel allows, else the database) and its round (its
    ``handoffs``: a window cached before a person took the conversation lacks the agent's messages)."""
    round_ = 0
    supplied = rt.outbound(row.channel).client_history(row.account, row.external_id)
    if supplied is not None:  # the client keeps the conversation (the API channel): its messages are the history
        return supplied, round_
    if cached:
        with rt.sessions() as session:
            round_ = int(session.scalar(select(ConversationRecord.handoffs)
                                        .where(ConversationRecord.id == row.conversation_id)) or 0)
        history = rt.context.load(row.conversation_id, row.id, round_)
        if history is not None:
            return history, round_
    with rt.sessions() as session:
        return transcript.context_turns(session, row.conversation_id, row.id, rt.settings.context_turns), round_


def _generated(rt: Runtime, row: InboundRecord, key: ConversationKey, turns: list[Turn], handoff: HandOff,
               begun: float | None) -> tuple[Answer, _Run]:
    with transaction(rt.sessions) as session:
        audit.record(session, audit.GENERATION_STARTED, channel=key.channel,
                     conversation_id=row.conversation_id, inbound_id=row.id)
    gray = rt.gray  # a canary model on part of the conversations (workers.gray_release), or None
    arm = gray_release.PRIMARY if gray is None else gray.arm(row.conversation_id)
    engine = gray.engine if gray is not None and arm == gray_release.CANARY else rt.llm
    run = _run_model(rt, row, key, turns, begun, engine)
    run.model = run.generation.model if run.generation else engine.model_name  # a fallback names the model that failed
    text, source, why = _moderated(rt, *_outcome(rt, row, key, run, handoff), handoff)
    _count(key.channel, run, source, why)
    if gray is not None:
        gray.record(arm, gray_release.outcome_of(source, why), row.conversation_id)
    if source is ReplySource.MODEL:
        text = pii.mask(text)  # the one place: never a full ID, card or mobile number in the reply or the history
    answer = Answer(text, source, model=run.model,
                    prompt_tokens=run.generation.prompt_tokens if run.generation else 0,
                    completion_tokens=run.generation.completion_tokens if run.generation else 0,
                    latency_ms=run.latency_ms, why=why)
    return answer, run


def _run_model(rt: Runtime, row: InboundRecord, key: ConversationKey, turns: list[Turn], begun: float | None,
               engine: TextEngine | None = None) -> _Run:
    """``engine``: the one that answers (default the primary, ``rt.llm``)."""
    outbound = rt.outbound(key.channel)
    masker = pii.StreamMasker()  # holds back a run of digits until it ends, then sends it masked

    def masked(piece: str) -> bool | None:
        safe = masker.feed(piece)
        return outbound.stream(key, row.id, safe) if safe else None

    on_text = masked if rt.channel(key.channel).streams else None
    soft = rt.settings.generation_soft_limit_s
    started = time.monotonic()
    deadline = (begun if begun is not None else started) + soft - min(5.0, soft * 0.2)
    run = _Run()
    try:
        # the deadline holds even when one model step outlasts it (a pool where Celery cannot stop a thread)
        run.generation = generate_by(engine or rt.llm, turns, on_text=on_text, deadline=deadline)
        tail = masker.flush()
        if on_text is not None and tail and run.generation.finish_reason != "cancelled":
            outbound.stream(key, row.id, tail)
    except SoftTimeLimitExceeded:
        run.failure = SOFT_LIMIT_FAILURE
    except Exception as exc:  # any model failure still gets the customer an answer
        log.exception("generation failed for inbound %s", row.id)
        run.failure = f"{type(exc).__name__}: {exc}"[:500]
    run.latency_ms = int((time.monotonic() - started) * 1000)
    return run


def _outcome(rt: Runtime, row: InboundRecord, key: ConversationKey, run: _Run, handoff: HandOff
             ) -> tuple[str, ReplySource]:
    """The text to store and its source; records in ``run`` why the fallback was needed."""
    fallback = fallback_reply(rt.settings, handoff)
    generation = run.generation
    if generation is None:
        return fallback, ReplySource.FALLBACK
    if generation.finish_reason == "cancelled":  # the listener stopped it (a caller who spoke over it): no failure
        return rt.outbound(key.channel).reply_text(row.id, generation.text) or fallback, ReplySource.MODEL
    if not generation.text.strip():
        run.failure = (MISSED_REASON if generation.finish_reason == DEADLINE_MISSED
                       else f"empty output ({generation.finish_reason})")
        return fallback, ReplySource.FALLBACK
    return generation.text, ReplySource.MODEL


def _moderated(rt: Runtime, text: str, source: ReplySource, handoff: HandOff) -> tuple[str, ReplySource, str | None]:
    """The model's reply after outbound moderation, and the ``why`` that audits it: ``mask`` stars the words;
    ``refuse`` or ``hand_off`` replace the reply with the channel's fallback (which offers 转人工 where possible)."""
    if source is not ReplySource.MODEL:
        return text, source, None
    finding = (outcome := moderation.check(rt.settings, text, moderation.Direction.OUTBOUND)).finding
    if finding is None:
        return text, source, None
    why = f"{MODERATED_OUT}{finding.verdict}:{finding.rule}"
    if finding.verdict is moderation.Verdict.MASK:
        return outcome.text, source, why
    return fallback_reply(rt.settings, handoff), ReplySource.FALLBACK, why


def _count(channel: str, run: _Run, source: ReplySource, why: str | None) -> None:
    """The generation's metrics, and why the fallback replaced it if it did (models.infra.metrics)."""
    generation = run.generation
    missed = run.failure == SOFT_LIMIT_FAILURE or (  # the engine's own deadline, or the watchdog's
        generation is not None and generation.finish_reason in ("deadline", DEADLINE_MISSED))
    if generation is not None:
        metrics.generated(channel, first_token_s=generation.first_token_s, total_s=run.latency_ms / 1000,
                          tokens=generation.completion_tokens, deadline_missed=missed)
    elif missed:
        metrics.generated(channel, first_token_s=None, total_s=run.latency_ms / 1000, tokens=0, deadline_missed=True)
    if source is ReplySource.FALLBACK:
        reason = ("moderated" if why is not None and why.startswith(MODERATED_OUT) else "deadline" if missed
                  else "empty" if generation is not None else "error")
        metrics.fell_back(channel, reason)


def _record_generation(session: Any, row: InboundRecord, key: ConversationKey, reply_id: int, run: _Run) -> None:
    ids: dict[str, Any] = {"channel": key.channel, "conversation_id": row.conversation_id, "inbound_id": row.id,
                           "reply_id": reply_id}
    generation = run.generation
    if generation is not None:
        audit.record(session, audit.GENERATION_FINISHED, **ids, model=generation.model,
                     prompt_tokens=generation.prompt_tokens, completion_tokens=generation.completion_tokens,
                     latency_ms=run.latency_ms, first_token_ms=_ms(generation.first_token_s),
                     finish_reason=generation.finish_reason)
    if run.failure is not None:
        named: dict[str, Any] = {} if run.model is None else {"model": run.model}
        audit.record(session, audit.GENERATION_FAILED, **ids, reason=run.failure, **named)
    if run.kb_used is not None:
        audit.record(session, audit.KB_USED, **ids, **run.kb_used)


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)
