"""The adapter interface every channel implements, and the channel error tree.

Gateway side, a :class:`ChannelAdapter` contributes routes; it verifies, parses and hands an
``Inbound`` to ingress. Worker side, an :class:`Outbound` sends a reply back out (and may stream
partial text while the model generates). Outbounds are registered as ``"module:Class"`` strings
and imported lazily, so a worker only loads the channels it sends to.

Errors::

    ChannelError
    ├── RequestRejected(status, code, message)   bad input at the edge → that HTTP status
    └── DeliveryError
        ├── DeliveryRetryable                     transient (timeout, 5xx, rate limit): retry with backoff
        └── DeliveryPermanent                     will never succeed (user blocked us, window closed)
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from models.envelope import ConversationKey, Reply

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker
    from starlette.routing import BaseRoute

    from channels.wechat_api import PlatformAPI
    from models.bus import Bus
    from models.kv import KV
    from models.settings import Settings


class ChannelError(Exception):
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
    """Sending a reply failed."""


class DeliveryRetryable(DeliveryError):
    """Worth trying again later."""


class DeliveryPermanent(DeliveryError):
    """Will not succeed however often it is tried; recorded as failed."""


@dataclass(frozen=True)
class OutboundDeps:
    """What a worker gives an outbound sender."""

    settings: Settings
    bus: Bus
    sessions: sessionmaker[Session]
    platform: PlatformAPI | None = None  # WeChat / WeCom server API client, for the channels that use it
    kv: KV | None = None  # the shared key-value store (e.g. what a caller heard before interrupting)


class DeliveryProgress:
    """How many parts of a multi-part reply went out already; ``record`` persists a new count.

    A retried delivery resumes after the last part the platform accepted instead of sending it again.
    """

    def __init__(self, parts_sent: int, record: Callable[[int], None]) -> None:
        self.parts_sent = parts_sent
        self._record = record

    def record(self, parts_sent: int) -> None:
        self.parts_sent = parts_sent
        self._record(parts_sent)


class Outbound(ABC):
    """Sends replies out through one channel."""

    streams: bool = False  # True when the channel shows partial text while it is generated
    # False when the channel may change a stored answer afterwards (the phone keeps only what the caller
    # heard), so the worker reads the history from the database instead of its cache
    cache_context: bool = True
    # True when a reply with source "handoff" moves the conversation to a person (WeChat Customer Service),
    # so a worker applies the hand-off keywords to text it produced itself (a transcribed voice message)
    hands_off: bool = False

    def __init__(self, deps: OutboundDeps) -> None:
        self.deps = deps

    def stream(self, key: ConversationKey, inbound_id: int, piece: str) -> bool | None:
        """Partial reply text as the model produces it; best effort, never raises.

        Returning False asks the worker to stop generating (nobody is listening any more: a caller
        who spoke over the answer); None or True carry on.
        """
        return None

    def reply_text(self, inbound_id: int, generated: str) -> str:
        """The text to store as the answer (and to keep in the history); the generated text by default.

        The phone keeps only what the caller heard when they spoke over the answer.
        """
        return generated

    @abstractmethod
    def send(self, reply: Reply, progress: DeliveryProgress) -> None:
        """Send the whole reply; raise DeliveryRetryable or DeliveryPermanent on failure."""


class ChannelAdapter(ABC):
    """Gateway side of a channel."""

    name: str

    @abstractmethod
    def routes(self) -> list[BaseRoute]:
        """The HTTP/WebSocket routes this channel mounts on the gateway."""


OUTBOUNDS: dict[str, str] = {
    "web": "channels.web:WebOutbound",
    "wechat_mp": "channels.wechat_mp:WeChatMPOutbound",
    "wecom": "channels.wecom:WeComOutbound",
    "wecom_kf": "channels.wecom_kf:WeComKfOutbound",
    "phone": "channels.telephony.outbound:PhoneOutbound",
}


def load_outbound(channel: str, deps: OutboundDeps) -> Outbound:
    try:
        target = OUTBOUNDS[channel]
    except KeyError:
        raise DeliveryPermanent(f"no outbound sender registered for channel {channel!r}") from None
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    outbound: Outbound = cls(deps)
    return outbound
