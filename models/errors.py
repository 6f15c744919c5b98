"""The two kinds of failure every external call ends in: worth retrying, or not.

Callers decide on the kind, never on the concrete type: a delivery, a media download and a
platform pull all retry :class:`Retryable` with backoff and record :class:`Permanent` as failed.
Specializations (``channels.base.DeliveryRetryable``, ``channels.wechat_api.PlatformPermanent``…)
add what their callers need to say, not a new kind.
"""

from __future__ import annotations


class KefuError(Exception):
    """Base of Kefu's own errors."""


class Retryable(KefuError):
    """Transient (timeout, 5xx, rate limit, broker or platform briefly away): try again later."""

    retry_after_s: float | None = None  # how long the other side asked us to wait (HTTP Retry-After); None: back off


class Permanent(KefuError):
    """Will not succeed however often it is tried (bad credentials, a closed window, a removed account)."""
