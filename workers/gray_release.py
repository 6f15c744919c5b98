"""Gray release: a second chat model (the canary) answers a share of the conversations, and is taken out by itself
when it fails.

- The canary is ``KEFU_CANARY_BACKEND``: a GGUF path (a local model, run with the primary's settings) or a backend as
  JSON (:class:`workers.llm.backends.Backend`, e.g. ``{"kind": "openai", "urls": [...], "model": "..."}``; its key
  in ``KEFU_CANARY_API_KEY``). Its *id* is a hash of that text: state and counts belong to one canary, so a new
  canary starts afresh and an old one's rollback does not hold the new one back. Unset: no gray release at all.
- Assignment (:func:`on_canary`): a conversation is the canary's when a stable hash of (canary id, conversation id)
  falls below ``KEFU_CANARY_SHARE``; every worker computes the same, so while the canary is *active* a conversation
  always gets the same model. *Rolled back*: every conversation is the primary's again (those that were on the
  canary are moved back at their next message); *promoted*: every conversation is the canary's.
- The state is one key of the shared KV store (Redis, or the embedded SQLite file), read on every model answer: a
  change reaches every worker at its next answer. Absent means active. If Redis loses its data, an auto-rolled-back
  canary is active again (and is taken out again if it still fails).
- Outcomes: each model answer of either arm counts ``ok`` or ``error`` (the fallback replaced it: a failure, empty
  output, the deadline with nothing said) in a sliding window of ``KEFU_CANARY_WINDOW_S`` shared by every worker,
  ten buckets of KV counters (``KV.incr``, atomic: two workers never lose a count); a read covers the last window
  to 1.1 windows. A reply that outbound moderation refused counts ``moderated`` in the metrics but not in the
  window: the model did answer, the policy refused the text, and customers who provoke it must not be able to take
  a model out.
- Rollback: after each canary error (only an error raises the rate: answers that went well cost no window read),
  when the window holds at least ``KEFU_CANARY_MIN_REQUESTS`` answers and
  errors / answers exceeds ``KEFU_CANARY_MAX_ERROR_RATE``, the canary is rolled back (active or promoted alike):
  one worker wins (``KV.add``), stores the state, audits ``model_rolled_back`` (model, rate, counts, window, by
  ``auto``) and counts ``kefu_canary_rollbacks_total``. The answer that tripped it already has its fallback reply:
  no message is lost. ``kefu model resume`` (back on its share) and ``promote`` (every conversation) start a new
  window *epoch*: the errors of an earlier stretch do not count again.
- The canary's engine is built on the first canary conversation a process answers and closed (in the background:
  its running answers end first) once that process sees the canary out, giving a second local model's memory back.
- Counting and the state never cost a customer the answer: a KV store that fails is logged, and the conversation
  goes to the primary.

Raises :class:`~models.settings.ConfigError` for a ``KEFU_CANARY_BACKEND`` that cannot be used, naming it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from models import audit
from models.envelope import Turn, utcnow
from models.infra import metrics
from models.infra.db import transaction
from models.infra.kv import KV
from models.replies import MODERATED_OUT
from models.settings import ConfigError, Settings
from models.states import ReplySource
from workers.llm.engine import Generation, TextCallback, TextEngine

if TYPE_CHECKING:
    from workers.llm.backends import Backend

log = logging.getLogger(__name__)

PRIMARY, CANARY = "primary", "canary"
ACTIVE, ROLLED_BACK, PROMOTED = "active", "rolled_back", "promoted"
OK, ERROR, MODERATED = "ok", "error", "moderated"
BUCKETS = 10  # the window is counted in this many buckets
STATE_TTL_S = 10 * 365 * 24 * 3600.0  # the KV store wants an expiry; a state lasts until it is changed


@dataclass(frozen=True)
class Canary:
    """The configured canary: ``id`` (12 hex digits of the setting's hash), its backend and the model's name."""

    id: str
    backend: Backend
    name: str


@dataclass(frozen=True)
class Phase:
    """The canary's state: ``active`` (its share), ``rolled_back`` (none) or ``promoted`` (all); who changed it,
    why and when; ``epoch`` numbers the windows (``kefu model resume`` and ``promote`` start a new one)."""

    state: str = ACTIVE
    by: str = ""
    reason: str = ""
    at: str = ""
    epoch: int = 0

    def shares(self, share: float) -> tuple[float, float]:
        """(primary's, canary's) share of conversations in this state."""
        canary = {ACTIVE: share, ROLLED_BACK: 0.0, PROMOTED: 1.0}[self.state]
        return 1.0 - canary, canary


@dataclass(frozen=True)
class Window:
    """One arm's answers and errors in the sliding window."""

    answers: int
    errors: int

    @property
    def rate(self) -> float:
        return self.errors / self.answers if self.answers else 0.0


def canary_of(settings: Settings) -> Canary | None:
    """The configured canary, or None; ConfigError naming KEFU_CANARY_BACKEND when it cannot be used."""
    text = settings.canary_backend
    if not text:
        return None
    from workers.llm.backends import Backend

    key = settings.canary_api_key.get_secret_value() if settings.canary_api_key is not None else None
    try:
        if text.startswith("{"):
            backend = Backend.model_validate({**json.loads(text), **({"api_key": key} if key else {})})
        else:
            backend = Backend(kind="local", model_path=Path(text).expanduser())
    except ValidationError as exc:
        raise ConfigError("KEFU_CANARY_BACKEND: " + "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())) from None
    if backend.kind == "local":
        if backend.model_path is None or not backend.model_path.expanduser().is_file():
            raise ConfigError(f"KEFU_CANARY_BACKEND: the canary's GGUF {backend.model_path} is not a file")
        name = backend.model_path.stem
    else:
        if not backend.urls or not backend.model:
            raise ConfigError("KEFU_CANARY_BACKEND: an openai canary needs \"urls\" (base URLs ending in /v1) and "
                              "\"model\"")
        name = backend.model
    return Canary(hashlib.sha256(text.encode()).hexdigest()[:12], backend, name)


def on_canary(canary_id: str, conversation_id: int, share: float) -> bool:
    """Whether the conversation is in the canary's share: a stable hash of both ids, uniform in [0, 1)."""
    digest = hashlib.sha256(f"{canary_id}:{conversation_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def phase_of(kv: KV, canary: Canary) -> Phase:
    """The canary's state in the shared KV store (raises what the store raises)."""
    raw = kv.get(f"gray:{canary.id}:state")
    if raw is None:
        return Phase()
    try:
        found = Phase(**json.loads(raw))
    except (ValueError, TypeError):
        found = None
    if found is None or found.state not in (ACTIVE, ROLLED_BACK, PROMOTED):
        log.warning("the gray release's state does not parse; the canary counts as active")
        return Phase()
    return found


def outcome_of(source: ReplySource, why: str | None) -> str:
    """``ok``, ``error`` (the fallback replaced the answer) or ``moderated`` (outbound moderation refused it)."""
    if source is not ReplySource.FALLBACK:
        return OK
    return MODERATED if why is not None and why.startswith(MODERATED_OUT) else ERROR


class LazyEngine:
    """The canary's engine, built on its first answer and closed when the canary is out (built again on resume).
    A build that fails fails that answer (the fallback is stored, the error counted), like a model that fails."""

    def __init__(self, name: str, build: Callable[[], TextEngine], primary_loaded: Callable[[], bool] = lambda: True
                 ) -> None:
        self._name, self._build, self._primary_loaded = name, build, primary_loaded
        self._engine: TextEngine | None = None
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self._name

    @property
    def loaded(self) -> bool:
        return self._engine is not None and bool(getattr(self._engine, "loaded", True))

    def _built(self) -> TextEngine:
        with self._lock:
            if self._engine is None:
                self._engine = self._build()
            return self._engine

    def load(self) -> Any:
        return self._built().load()

    def generate(self, turns: list[Turn], *, on_text: TextCallback | None = None,
                 deadline: float | None = None) -> Generation:
        return self._built().generate(turns, on_text=on_text, deadline=deadline)

    def close(self) -> None:
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()
            # a local engine's close() reports the process's model unloaded (kefu_model_loaded, which the
            # "no model loaded" alert reads); the gauge is the primary's, which is still there
            metrics.model_loaded(self._primary_loaded())

    def release(self) -> None:
        """Close the engine in the background, if it was built (its running answers end, or fail, first)."""
        if self._engine is not None:
            threading.Thread(target=self.close, name="kefu-canary-close", daemon=True).start()


class GrayRelease:
    """The gray release as one worker process sees it (one per process: :attr:`workers.runtime.Runtime.gray`)."""

    def __init__(self, settings: Settings, kv: KV, sessions: sessionmaker[Session], canary: Canary,
                 build: Callable[[], TextEngine], primary: str, primary_loaded: Callable[[], bool] = lambda: True
                 ) -> None:
        self.settings, self.kv, self.sessions, self.canary, self.primary = settings, kv, sessions, canary, primary
        self.engine = LazyEngine(canary.name, build, primary_loaded)

    # --- the state -------------------------------------------------------------------------------------------------

    def _key(self, *parts: object) -> str:
        return ":".join(["gray", self.canary.id, *map(str, parts)])

    def phase(self) -> Phase:
        return phase_of(self.kv, self.canary)

    def change(self, state: str, *, by: str, reason: str = "", conversation_id: int | None = None,
               detail: dict[str, Any] | None = None) -> Phase:
        """Store a new state and audit it (``model_rolled_back``, ``model_promoted``, ``model_resumed``)."""
        kind = {ROLLED_BACK: audit.MODEL_ROLLED_BACK, PROMOTED: audit.MODEL_PROMOTED, ACTIVE: audit.MODEL_RESUMED}[state]
        before = self.phase()
        # resumed or promoted: a new window, so the errors of an earlier stretch neither take it out at once nor
        # stop a second automatic rollback (one per epoch)
        epoch = before.epoch if state == ROLLED_BACK else before.epoch + 1
        now = Phase(state, by, reason[:200], utcnow().isoformat(timespec="seconds"), epoch)
        self.kv.set(self._key("state"), json.dumps(asdict(now)), STATE_TTL_S)
        with transaction(self.sessions) as session:
            audit.record(session, kind, conversation_id=conversation_id, model=self.canary.name, canary=self.canary.id,
                         previous=before.state, by=by, reason=now.reason, **(detail or {}))
        log.warning("canary %s (%s): %s -> %s by %s%s", self.canary.name, self.canary.id, before.state, state, by,
                    f" ({now.reason})" if now.reason else "")
        return now

    # --- answering -------------------------------------------------------------------------------------------------

    def arm(self, conversation_id: int) -> str:
        """The arm that answers this conversation now (the primary when the state cannot be read)."""
        try:
            phase = self.phase()
        except Exception as exc:  # a KV store that fails: the primary answers
            log.warning("gray release state not read (%s): the primary answers", type(exc).__name__)
            return PRIMARY
        primary_share, canary_share = phase.shares(self.settings.canary_share)
        metrics.model_share(self.primary, PRIMARY, primary_share)
        metrics.model_share(self.canary.name, CANARY, canary_share)
        if phase.state == ROLLED_BACK:
            self.engine.release()
            return PRIMARY
        if phase.state == PROMOTED or on_canary(self.canary.id, conversation_id, self.settings.canary_share):
            return CANARY
        return PRIMARY

    def record(self, arm: str, outcome: str, conversation_id: int | None = None) -> None:
        """Count one answer of ``arm``; a canary's may take it out. Never raises."""
        metrics.model_outcome(self.primary if arm == PRIMARY else self.canary.name, arm, outcome)
        if outcome == MODERATED:
            return
        try:
            phase = self.phase()
            bucket_s = self.settings.canary_window_s / BUCKETS
            bucket = int(time.time() // bucket_s)
            self.kv.incr(self._key(phase.epoch, arm, outcome, bucket), self.settings.canary_window_s + 2 * bucket_s)
            if arm == CANARY and outcome == ERROR and phase.state != ROLLED_BACK:  # only an error raises the rate
                self._judge(phase, conversation_id)
        except Exception:
            log.exception("gray release outcome not counted")

    def window(self, arm: str, epoch: int | None = None) -> Window:
        """``arm``'s answers and errors over the last window (to 1.1 windows) of ``epoch`` (default: the current)."""
        epoch = self.phase().epoch if epoch is None else epoch
        bucket_s = self.settings.canary_window_s / BUCKETS
        newest = int(time.time() // bucket_s)
        counts = {OK: 0, ERROR: 0}
        for outcome in counts:
            for bucket in range(newest - BUCKETS, newest + 1):
                counts[outcome] += int(self.kv.get(self._key(epoch, arm, outcome, bucket)) or 0)
        return Window(counts[OK] + counts[ERROR], counts[ERROR])

    def _judge(self, phase: Phase, conversation_id: int | None) -> None:
        s = self.settings
        seen = self.window(CANARY, phase.epoch)
        if seen.answers < s.canary_min_requests or seen.rate <= s.canary_max_error_rate:
            return
        if not self.kv.add(self._key(phase.epoch, "rolled_back"), "1", STATE_TTL_S):
            return  # another worker took it out
        self.change(ROLLED_BACK, by="auto", reason=f"error rate {seen.rate:.1%} > {s.canary_max_error_rate:.1%}",
                    conversation_id=conversation_id, detail={
                        "rate": round(seen.rate, 4), "errors": seen.errors, "answers": seen.answers,
                        "window_s": s.canary_window_s, "max_error_rate": s.canary_max_error_rate,
                        "min_requests": s.canary_min_requests})
        metrics.canary_rolled_back(self.canary.name)
        self.engine.release()

    def close(self) -> None:
        self.engine.close()


def build_canary(settings: Settings, canary: Canary) -> TextEngine:
    """The canary's engine (not loaded): the model backends' own builder, without the queue's wait estimate (the
    primary's alone is published)."""
    from workers.llm.backends import build_engine

    return build_engine(settings, canary.backend)


def make(settings: Settings, kv: KV, sessions: sessionmaker[Session], primary: str,
         primary_loaded: Callable[[], bool] = lambda: True) -> GrayRelease | None:
    """This process's gray release, or None without a canary (ConfigError when it cannot be used).
    ``primary_loaded``: whether the primary engine is loaded (what ``kefu_model_loaded`` says again once a local
    canary is closed)."""
    canary = canary_of(settings)
    if canary is None:
        return None
    if canary.name == primary:
        log.warning("the canary's model name %r is the primary's: replies, metrics and `kefu model compare` cannot "
                    "tell them apart (give the canary's GGUF another file name)", primary)
    return GrayRelease(settings, kv, sessions, canary, lambda: build_canary(settings, canary), primary, primary_loaded)
