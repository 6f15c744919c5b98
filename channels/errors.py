"""The channel error tree.

::

    ChannelError
    ├── RequestRejected(status, code, message)   bad input at the edge → that HTTP status
    └── DeliveryError
        ├── DeliveryRetryable (models.errors.Retryable)   transient (timeout, 5xx, rate limit): retry with backoff
        └── DeliveryPermanent (models.errors.Permanent)   will never succeed (user blocked us, window closed)
"""

from __future__ import annotations

from typing import Any

from models.errors import KefuError, Permanent, Retryable


class ChannelError(KefuError):
    """Base of every channel error."""


class RequestRejected(ChannelError):
    """A request the gateway refuses; ``status`` is the HTTP status, ``code`` a stable identifier."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


class DeliveryError(ChannelError):
    """Sending a reply (or fetching what a platform holds for us) failed."""


class DeliveryRetryable(DeliveryError, Retryable):
    """Worth trying again later."""


class DeliveryPermanent(DeliveryError, Permanent):
    """Will not succeed however often it is tried; recorded as failed."""
