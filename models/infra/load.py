"""How long a new message would wait for the model: published by LLM workers, read by channels.

The batched engine knows its queue; a gateway does not. Each LLM worker process writes its current
wait estimate to the shared KV store (throttled, short expiry, so a stopped worker's figure fades);
a channel that can say something at once (a WeChat passive reply) reads it and tells the customer to
hold on instead of leaving them in silence. With several LLM workers the last writer wins: a rough
figure, which is all a "please wait" needs.
"""

from __future__ import annotations

import logging

from models.infra.kv import KV

log = logging.getLogger(__name__)

WAIT_KEY = "llm:wait_estimate_s"
WAIT_TTL_S = 30.0


def publish_wait(kv: KV, seconds: float) -> None:
    try:
        kv.set(WAIT_KEY, f"{max(0.0, seconds):.2f}", WAIT_TTL_S)
    except Exception as exc:  # best effort: the figure is advice, never worth failing a generation
        log.debug("could not publish the wait estimate: %s", type(exc).__name__)


def current_wait(kv: KV) -> float:
    """The latest published estimate in seconds; 0.0 when none is known."""
    try:
        value = kv.get(WAIT_KEY)
        return float(value) if value else 0.0
    except Exception:
        return 0.0
