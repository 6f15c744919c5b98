"""Every Prometheus metric of Kefu, defined once, and how a process exposes them.

Names start with ``kefu_``; labels take only values from small fixed sets (channel names, reply sources, intent
labels, platform error codes, route templates), never an id, an openid or a customer's text. The functions below
are the one-line calls the gateway and the workers make where an event already happens; each is cheap (a lock and
a float, or a memory-mapped write in multiprocess mode) and never raises for a label value.

In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set by :mod:`models.infra.metrics_dir` before this module is
imported) :func:`exposition` adds up every process's files of the group; gauges are summed over live processes
(``livesum``), and a process that ends says so with :func:`process_exited`. Without it (tests, ``kefu demo``, an
in-thread gateway) the values live in this process's default registry. docs/observability.md lists every metric.
"""

from __future__ import annotations

import os
from datetime import datetime

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client import start_http_server as _start_http_server
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from models.envelope import utcnow
from models.infra.metrics_dir import ENV

_FAST = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # an acknowledgement, a send
_SLOW = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0)  # waiting, generating

ACK_SECONDS = Histogram(
    "kefu_ack_seconds", "Gateway: from a channel's HTTP request to the start of its response (the platform's "
    "acknowledgement; WeChat and WeCom give up at 5 s)", ["channel", "route", "method"], buckets=_FAST)
MESSAGES_RECEIVED = Counter(
    "kefu_messages_received_total", "Gateway: customer messages accepted (a platform's retry of one is not counted)",
    ["channel"])
MESSAGES = Counter(
    "kefu_messages_total", "Customer messages answered, by the reply's source (outcome: model, fallback, faq, "
    "approved, rule, welcome, handoff; human: a person owns the conversation)", ["channel", "intent", "outcome"])
FALLBACKS = Counter(
    "kefu_fallbacks_total", "Worker: the fallback reply stored instead of the model's (reason: deadline, error, empty, "
    "moderated)", ["channel", "reason"])
QUEUE_WAIT_SECONDS = Histogram(
    "kefu_queue_wait_seconds", "Worker: from a message's publish (queued_at) to its task starting to answer it",
    ["channel"], buckets=_SLOW)
FIRST_TOKEN_SECONDS = Histogram(
    "kefu_first_token_seconds", "Worker: from the model request to its first generated token", ["channel"],
    buckets=_SLOW)
GENERATION_SECONDS = Histogram(
    "kefu_generation_seconds", "Worker: one model answer, from the request to the last token (or the deadline)",
    ["channel"], buckets=_SLOW)
DEADLINE_MISSES = Counter(
    "kefu_deadline_misses_total", "Worker: generations stopped by the generation deadline (KEFU_GENERATION_SOFT_"
    "LIMIT_S less its margin)", ["channel"])
TOKENS_GENERATED = Counter(
    "kefu_tokens_generated_total", "Worker: tokens the model generated (rate() of it is tokens per second)")
DELIVERY_SECONDS = Histogram(
    "kefu_delivery_seconds", "Worker: one send of a reply through its channel (the platform's API, the bus)",
    ["channel"], buckets=_FAST)
DELIVERY_FAILURES = Counter(
    "kefu_delivery_failures_total", "Worker: failed sends (kind: retry, permanent, exhausted) by the platform's error "
    "code (errcode; '' when it gave none)", ["channel", "kind", "code"])
MODEL_LOADED = Gauge(
    "kefu_model_loaded", "Worker: processes with the chat model loaded (0: none can generate)",
    multiprocess_mode="livesum")
SLOTS = Gauge("kefu_slots", "Worker: the batched engine's slots (conversations decoded together)",
              multiprocess_mode="livesum")
SLOTS_BUSY = Gauge("kefu_slots_busy", "Worker: the batched engine's slots generating or reading a prompt now",
                   multiprocess_mode="livesum")

KV_CELLS = Gauge("kefu_kv_cells", "Worker: the batched engine's KV cache, in token cells (KEFU_N_SLOTS x KEFU_N_CTX)",
                 multiprocess_mode="livesum")
KV_CELLS_USED = Gauge(
    "kefu_kv_cells_used", "Worker: KV cache cells held by the shared system prompt and the conversations being "
    "generated, at the last scheduler step", multiprocess_mode="livesum")
MODEL_OUTCOMES = Counter(
    "kefu_model_outcomes_total", "Worker: model answers by model and gray-release arm (primary, canary); outcome ok, "
    "error (the fallback replaced it: failure, empty, deadline) or moderated", ["model", "arm", "outcome"])
MODEL_SHARE = Gauge(
    "kefu_model_share", "Worker: the share of conversations each model answers, as the worker last saw the gray "
    "release (a canary taken out: 0)", ["model", "arm"], multiprocess_mode="mostrecent")
CANARY_ROLLBACKS = Counter(
    "kefu_canary_rollbacks_total", "Worker: canaries taken out automatically (error rate over the threshold)",
    ["model"])

ADMISSION_REFUSED = Counter(
    "kefu_admission_refused_total", "Requests and messages refused by admission control (scope: ip, visitor, peer, "
    "api_key, backpressure)", ["channel", "scope"])
ADMISSION_ERRORS = Counter(
    "kefu_admission_errors_total", "Rate-limit checks skipped because the limiter's storage failed (the request went "
    "through: fail open)", ["scope"])

ALL = (ACK_SECONDS, MESSAGES_RECEIVED, MESSAGES, FALLBACKS, QUEUE_WAIT_SECONDS, FIRST_TOKEN_SECONDS,
       GENERATION_SECONDS, DEADLINE_MISSES, TOKENS_GENERATED, DELIVERY_SECONDS, DELIVERY_FAILURES, MODEL_LOADED, SLOTS,
       SLOTS_BUSY, KV_CELLS, KV_CELLS_USED, ADMISSION_REFUSED, ADMISSION_ERRORS,
       MODEL_OUTCOMES, MODEL_SHARE, CANARY_ROLLBACKS)


# --- the one-line calls --------------------------------------------------------------------------------------------

def acked(channel: str, route: str, method: str, seconds: float) -> None:
    ACK_SECONDS.labels(channel, route, method).observe(seconds)


def received(channel: str) -> None:
    MESSAGES_RECEIVED.labels(channel).inc()


def answered(channel: str, intent: str | None, outcome: str) -> None:
    MESSAGES.labels(channel, intent or "none", outcome).inc()


def fell_back(channel: str, reason: str) -> None:
    FALLBACKS.labels(channel, reason).inc()


def started_after_queue(channel: str, queued_at: datetime | None) -> None:
    """The queue wait of a message whose task starts now (nothing when it was never published: queued_at None)."""
    if queued_at is not None:
        QUEUE_WAIT_SECONDS.labels(channel).observe(max(0.0, (utcnow() - queued_at).total_seconds()))


def generated(channel: str, *, first_token_s: float | None, total_s: float, tokens: int, deadline_missed: bool
              ) -> None:
    if first_token_s is not None:
        FIRST_TOKEN_SECONDS.labels(channel).observe(first_token_s)
    GENERATION_SECONDS.labels(channel).observe(total_s)
    TOKENS_GENERATED.inc(tokens)
    if deadline_missed:
        DEADLINE_MISSES.labels(channel).inc()


def sent(channel: str, seconds: float) -> None:
    DELIVERY_SECONDS.labels(channel).observe(seconds)


def send_failed(channel: str, kind: str, error: BaseException) -> None:
    code = getattr(error, "errcode", None)
    DELIVERY_FAILURES.labels(channel, kind, "" if code is None else str(code)).inc()


def model_loaded(loaded: bool) -> None:
    MODEL_LOADED.set(1 if loaded else 0)


def slots(total: int) -> None:
    SLOTS.set(total)


def slots_busy(busy: int) -> None:
    SLOTS_BUSY.set(busy)


def kv_cells(total: int, used: int) -> None:
    KV_CELLS.set(total)
    KV_CELLS_USED.set(used)


def model_outcome(model: str, arm: str, outcome: str) -> None:
    MODEL_OUTCOMES.labels(model, arm, outcome).inc()


def model_share(model: str, arm: str, share: float) -> None:
    MODEL_SHARE.labels(model, arm).set(share)


def canary_rolled_back(model: str) -> None:
    CANARY_ROLLBACKS.labels(model).inc()


def admission_refused(channel: str, scope: str) -> None:
    ADMISSION_REFUSED.labels(channel, scope).inc()


def admission_failed(scope: str) -> None:
    ADMISSION_ERRORS.labels(scope).inc()


# --- exposing them ---------------------------------------------------------------------------------------------------

def registry() -> CollectorRegistry:
    """What a scrape reads: every process's files of the group in multiprocess mode, else this process's values."""
    if ENV not in os.environ:
        return REGISTRY
    collected = CollectorRegistry()
    multiprocess.MultiProcessCollector(collected)
    return collected


def exposition() -> tuple[bytes, str]:
    """The text a scrape gets, and its content type."""
    return generate_latest(registry()), CONTENT_TYPE_LATEST


def serve(host: str, port: int) -> None:
    """Serve the metrics on ``http://host:port/`` from a daemon thread (a worker's metrics; the gateway has /metrics).
    Raises OSError when the port cannot be listened on."""
    _start_http_server(port, addr=host, registry=registry())


def process_exited() -> None:
    """This process ends: its live gauges stop counting (multiprocess mode; nothing to do otherwise)."""
    if ENV in os.environ:
        multiprocess.mark_process_dead(os.getpid())
