"""Admission control: who may add work now (rate limits per subject, and backpressure from the model's queue).

:class:`Admission` answers one question before a channel accepts work: may this request go on? ``None`` means yes;
a :class:`Refusal` says which limit held (``scope``), for how long to wait (``retry_after_s``, >= 1: the
``Retry-After`` value) and the limit itself. Each channel carries the refusal out its own way (docs/admission.md): the
web chat and the API answer 429 and store nothing; the WeChat family and every channel going through
:meth:`~channels.base.ChannelAdapter.take` store the message and answer it at once with a polite "please wait" reply
(never dropped, never queued for the model).

- :meth:`Admission.limit`: the ``KEFU_RATE_LIMIT_<SCOPE>`` limits of one scope (``ip``, ``visitor``, ``peer``,
  ``api_key``), several per scope in the ``limits`` notation (``"5 per 2 seconds;60 per minute"``, "" turns the
  scope off), counted by the ``limits`` library's *moving window*: exact (a fixed window lets twice the limit through
  across a window's edge; the issue's attack is exactly such a burst), at the cost of one stored timestamp per hit
  (bounded by the limit's amount per subject). A request consumes every limit of the scope up to the one that
  refuses it. The counts live in Redis when Kefu has one (the KV store's URL: every gateway and worker shares them),
  else in this process's memory (embedded: each process counts for itself).
- :meth:`Admission.backpressure`: refuses new model work while the LLM workers' published wait estimate
  (:func:`models.infra.load.current_wait`, read at most once a second per process) is above
  ``KEFU_BACKPRESSURE_WAIT_S`` (0: off).

Guarantees: every refusal is audited (``admission_refused``: channel, scope, limit, retry_after_s and, for a rate
limit, ``subject``: a keyed 12-character hash of the IP, visitor, openid or API key, never the value) and counted
(``kefu_admission_refused_total`` by channel and scope); an audit row that cannot be written is logged and the
refusal still stands. The limiter's keys hold the same hashes, never the subjects. A limiter storage that fails
(Redis down or slow) lets the request through (*fail open*): admission control guards capacity, and refusing every
customer because the limiter's store is down would turn a Redis outage into a full outage of the service; the
failure is logged and counted (``kefu_admission_errors_total``) and the limiter is not asked again for
:data:`STORAGE_RETRY_AFTER_S`, so a hung Redis costs one socket timeout per few seconds, not one per request.
Raises ValueError for an unknown scope (a programming error) and, from :func:`parse_limits`, for a malformed limit.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage, RedisStorage, Storage
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy.orm import Session, sessionmaker

from channels.errors import RequestRejected
from models import audit
from models.envelope import ConversationKey
from models.infra import metrics
from models.infra.db import transaction
from models.infra.kv import KV
from models.infra.load import current_wait
from models.replies import Answer
from models.settings import ConfigError, Settings
from models.states import ReplySource

log = logging.getLogger(__name__)

IP, VISITOR, PEER, API_KEY, BACKPRESSURE = "ip", "visitor", "peer", "api_key", "backpressure"
SCOPES = (IP, VISITOR, PEER, API_KEY)
STORAGE_RETRY_AFTER_S = 5.0  # after the limiter's storage failed, requests go through unchecked this long
WAIT_READ_EVERY_S = 1.0  # the wait estimate is read from the KV store at most this often per process
KEY_PREFIX = "kefu:limits"


@dataclass(frozen=True)
class Refusal:
    scope: str  # "ip" | "visitor" | "peer" | "api_key" | "backpressure"
    retry_after_s: int  # >= 1, for Retry-After
    limit: str  # the limit that held, e.g. "20 per 1 minute", or the wait estimate for backpressure


def parse_limits(value: str) -> list[RateLimitItem]:
    """The limits of one ``KEFU_RATE_LIMIT_*`` value; [] for "" (the scope is off). ValueError naming the notation."""
    if not value.strip():
        return []
    try:
        return list(parse_many(value))
    except ValueError:
        raise ValueError(f"{value!r} is not a rate limit: write e.g. '5 per 2 seconds;60 per minute' "
                         "(several separated by ';'; '' turns the limit off)") from None


def subject_hash(key: bytes, scope: str, subject: str) -> str:
    """What is stored of a subject (an IP, openid, API key): 12 hex characters of a keyed hash, same on every
    process with the same ``KEFU_SECRET_KEY``; not reversible without it (an IPv4 address is, by brute force, from a
    plain hash)."""
    return hmac.new(key, f"{scope}\0{subject}".encode(), hashlib.sha256).hexdigest()[:12]


def _hash_key(settings: Settings) -> bytes:
    try:
        return settings.signing_key()
    except ConfigError:  # a worker without KEFU_SECRET_KEY: the hashes stay stable, only keyed by a constant
        return b"kefu-admission"


def make_storage(settings: Settings, timeout_s: float) -> Storage:
    """Redis (the KV store's URL, ``timeout_s`` per call) when Kefu has one; this process's memory otherwise."""
    url = settings.effective_redis_url
    if url:
        return RedisStorage(url, key_prefix=KEY_PREFIX, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    return MemoryStorage()


class Admission:
    """Rate limits and backpressure for one process; thread-safe (the limiter's storage is)."""

    def __init__(self, settings: Settings, kv: KV, sessions: sessionmaker[Session], storage: Storage) -> None:
        self.settings = settings
        self._kv = kv
        self._sessions = sessions
        self.storage = storage
        self._limiter = MovingWindowRateLimiter(storage)
        self._limits: dict[str, list[RateLimitItem]] = {
            IP: parse_limits(settings.rate_limit_ip), VISITOR: parse_limits(settings.rate_limit_visitor),
            PEER: parse_limits(settings.rate_limit_peer), API_KEY: parse_limits(settings.rate_limit_api_key)}
        self._key = _hash_key(settings)
        self._skip_until = 0.0  # monotonic: the storage failed; unchecked until then
        self._wait = (0.0, -math.inf)  # (estimate, monotonic time it was read)
        self._wait_lock = threading.Lock()

    @classmethod
    def build(cls, settings: Settings, kv: KV, sessions: sessionmaker[Session], timeout_s: float) -> Admission:
        return cls(settings, kv, sessions, make_storage(settings, timeout_s))

    def limit(self, scope: str, subject: str, *, channel: str) -> Refusal | None:
        """Count one request of ``subject`` (an IP, a visitor id, ``channel:account:peer``, an API key's id) against
        the scope's limits; a Refusal (audited, counted) when one of them is used up, else None."""
        if scope not in self._limits:
            raise ValueError(f"unknown admission scope {scope!r} (one of {', '.join(SCOPES)})")
        items = self._limits[scope]
        if not items or time.monotonic() < self._skip_until:
            return None
        hashed = subject_hash(self._key, scope, subject)
        try:
            for item in items:
                if not self._limiter.hit(item, scope, hashed):
                    reset_at = self._limiter.get_window_stats(item, scope, hashed).reset_time
                    refusal = Refusal(scope, max(1, math.ceil(reset_at - time.time())), str(item))
                    self._refused(refusal, channel, subject=hashed)
                    return refusal
        except Exception as exc:  # fail open: see the module's docstring
            self._skip_until = time.monotonic() + STORAGE_RETRY_AFTER_S
            metrics.admission_failed(scope)
            log.error("rate limit %s not checked (its storage failed: %s); letting requests through for %.0f s",
                      scope, type(exc).__name__, STORAGE_RETRY_AFTER_S)
        return None

    def backpressure(self, *, channel: str) -> Refusal | None:
        """A Refusal (audited, counted) while the model's estimated wait is above ``KEFU_BACKPRESSURE_WAIT_S``."""
        threshold = self.settings.backpressure_wait_s
        if threshold <= 0:
            return None
        wait = self._current_wait()
        if wait <= threshold:
            return None
        refusal = Refusal(BACKPRESSURE, max(1, math.ceil(wait - threshold)),
                          f"estimated wait {wait:.0f} s > {threshold:g} s")
        self._refused(refusal, channel, wait_estimate_s=round(wait, 1))
        return refusal

    def close(self) -> None:
        """Release the storage's connections (Redis) or its expiry timer (memory)."""
        client = getattr(self.storage, "storage", None)  # RedisStorage's redis client
        if isinstance(self.storage, RedisStorage) and client is not None:
            client.close()
        timer = getattr(self.storage, "timer", None)
        if timer is not None:
            timer.cancel()

    def wait_text(self, refusal: Refusal) -> str:
        """The polite Chinese reply a customer gets for a refused message on a chat channel."""
        return self.settings.backpressure_reply if refusal.scope == BACKPRESSURE else self.settings.rate_limited_reply

    def _current_wait(self) -> float:
        with self._wait_lock:
            value, read_at = self._wait
            now = time.monotonic()
            if now - read_at >= WAIT_READ_EVERY_S:
                value = current_wait(self._kv)  # 0.0 when none is known or the KV store fails
                self._wait = (value, now)
            return value

    def _refused(self, refusal: Refusal, channel: str, **detail: Any) -> None:
        metrics.admission_refused(channel, refusal.scope)
        try:
            with transaction(self._sessions) as session:
                audit.record(session, audit.ADMISSION_REFUSED, channel=channel, scope=refusal.scope,
                             limit=refusal.limit, retry_after_s=refusal.retry_after_s, **detail)
        except Exception as exc:  # the refusal stands; the counter has it
            log.error("admission_refused (%s, %s) not audited: %s", channel, refusal.scope, type(exc).__name__)


class Unlimited(Admission):
    """Lets everything through: the admission of a context built without one (a test of another part)."""

    def __init__(self) -> None:  # no storage, no settings
        pass

    def limit(self, scope: str, subject: str, *, channel: str) -> Refusal | None:
        return None

    def backpressure(self, *, channel: str) -> Refusal | None:
        return None

    def wait_text(self, refusal: Refusal) -> str:
        return ""

    def close(self) -> None:
        return None


class RateLimited(RequestRejected):
    """429 ``rate_limited`` for a request refused before it was accepted; ``retry_after_s`` goes in Retry-After."""

    def __init__(self, refusal: Refusal, message: str) -> None:
        super().__init__(429, "rate_limited", message)
        self.refusal = refusal
        self.retry_after_s = refusal.retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


def peer_subject(key: ConversationKey) -> str:
    """The subject of a conversation's peer limit: one customer of one account of one channel."""
    return f"{key.channel}:{key.account}:{key.peer}"


def admit(admission: Admission, key: ConversationKey, peer_scope: str | None = PEER) -> Refusal | None:
    """Whether the model may take one more message of this conversation: the peer limit (``peer_scope``; None: not
    counted), then backpressure. None: yes; otherwise the refusal (audited and counted already)."""
    if peer_scope is not None:
        refusal = admission.limit(peer_scope, peer_subject(key), channel=key.channel)
        if refusal is not None:
            return refusal
    return admission.backpressure(channel=key.channel)


def refused_answer(admission: Admission, refusal: Refusal) -> Answer:
    """The reply stored for a chat message admission control refused (a rule's, ``why`` naming the refusal)."""
    return Answer(admission.wait_text(refusal), ReplySource.RULE, why=f"{audit.ADMISSION_REFUSED}:{refusal.scope}")
