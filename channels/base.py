"""What a channel is: one :class:`Channel` descriptor per channel module, and the small interfaces it fills.

A channel module (``channels/web.py``, ``channels/wecom_kf/``…) declares ``descriptor = Channel(...)``:
its name, its gateway side (:class:`ChannelAdapter`, built from a :class:`ChannelContext`), its worker
side (:class:`Outbound`, built from :class:`OutboundDeps`), its settings (a
:class:`~models.settings.Section`), how a person takes over its conversations (:class:`HandOffPort`)
and what it can do (streams, voice files, the WeChat/WeCom platform API). ``channels.registry`` lists
the descriptors as ``"module:attribute"`` strings and imports them lazily; the gateway and the workers
read them from there and never branch on a channel's name.

Errors live in :mod:`channels.errors` (re-exported here).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, TypeVar

from pydantic import AfterValidator, BaseModel, field_validator

from channels.admission import Admission, Refusal, Unlimited, admit, refused_answer
from channels.errors import ChannelError, DeliveryError, DeliveryPermanent, DeliveryRetryable, RequestRejected
from models.dialogue import Action, Decision, HandOff, Message, decide
from models.envelope import ConversationKey, Inbound, Reply, Turn
from models.settings import Section, Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker
    from starlette.routing import BaseRoute

    from channels.ingress import Accepted, Ingress
    from channels.wechat_api import AppCredentials, PlatformAPI
    from models.infra.bus import Bus, Listener
    from models.infra.kv import KV
    from models.infra.locks import Locks
    from models.infra.queues import Publisher

__all__ = [
    "Account",
    "Accounts",
    "Channel",
    "ChannelAdapter",
    "ChannelContext",
    "ChannelError",
    "DeliveryError",
    "DeliveryPermanent",
    "DeliveryProgress",
    "DeliveryRetryable",
    "HandOffPort",
    "Outbound",
    "OutboundDeps",
    "RequestRejected",
    "find",
    "unique_names",
]

_URL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class Account(BaseModel):
    """One configured business account of a channel; ``name`` is part of its URL (``/v1/<channel>/{name}``)."""

    name: str

    @field_validator("name")
    @classmethod
    def _url_safe(cls, value: str) -> str:
        if not _URL_NAME.fullmatch(value):
            raise ValueError(f"name {value!r} must be 1-64 letters, digits, '-' or '_' (it is part of the URL)")
        return value


AccountT = TypeVar("AccountT", bound=Account)


def unique_names(accounts: Sequence[AccountT]) -> list[AccountT]:
    """``accounts`` when every entry has its own name; a ValueError otherwise (a field validator: the error names
    the variable)."""
    names = [a.name for a in accounts]
    if len(set(names)) != len(names):
        raise ValueError(f"every entry needs its own name (got {names})")
    return list(accounts)


# A section's list of accounts (a JSON list in its KEFU_* variable), every one with its own name:
# ``wecom_apps: Accounts[WeComApp] = Field(default_factory=list)``
Accounts = Annotated[list[AccountT], AfterValidator(unique_names)]


def find(accounts: Sequence[AccountT], name: str) -> AccountT | None:
    """The account called ``name``, or None."""
    return next((a for a in accounts if a.name == name), None)


class HandOffPort:
    """How one channel passes a conversation to a person. This base: there is nobody to pass it to.

    ``begin`` runs before the notice is stored, so the customer's next message already goes to the
    person; ``with_person`` tells a channel to keep the model out; ``release`` undoes ``begin`` when
    the hand-off could not happen (the notice was never delivered) or the person closed the conversation.
    """

    # A worker can hand the conversation over (``begin`` takes effect after the reply): it decides a message again
    # once it knows the conversation (models.dialogue.FOLLOW_UP_RULES: a yes to the ask-back, failed answers).
    # False where only the channel's own loop can (the phone call transfers itself).
    from_worker: bool = True

    def __init__(self, settings: Settings, kv: KV) -> None:
        self.settings = settings
        self.kv = kv

    def availability(self, account: str) -> HandOff:
        return HandOff.NOBODY

    def begin(self, key: ConversationKey) -> None:
        return None

    def with_person(self, key: ConversationKey) -> bool:
        return False

    def release(self, key: ConversationKey) -> None:
        return None

    def desk_owns(self, key: ConversationKey) -> bool:
        """Whether the agent console (channels.desk_handoff), not the platform's own staff, has the conversation:
        the channel then carries out no platform hand-off (no transfer XML, no kf service-state change) and an
        agent's replies go out through its ordinary outbound."""
        return False

    def later_notice(self, account: str, notice: str) -> str:
        """The notice for a hand-off decided after the platform's own reply has gone (in a worker, for a transcribed
        voice message); ``notice`` (``handoff_reply``) unless the channel carries it out differently then."""
        return notice

    @contextmanager
    def beginning(self, key: ConversationKey) -> Iterator[None]:
        """``begin`` for the block that stores the notice; undone (``release``) if storing it fails, so the customer's
        next message is not kept for a person nobody called."""
        self.begin(key)
        try:
            yield
        except BaseException:
            self.release(key)
            raise


def store_decided(ingress: Ingress, handoff: HandOffPort, inbound: Inbound, decision: Decision, *,
                  passive: bool = False) -> tuple[Accepted, str | None]:
    """Store a message with the reply a decision gave it (ANSWER or HAND_OFF), as ``ingress.accept_answered`` does.

    A hand-off marks the conversation first (so the customer's next message already goes to the person) and
    releases the mark if storing fails; its notice is always sent by ``deliver`` (never passively: the channel's
    passive answer, if any, is the transfer itself). ``passive``: an ANSWER goes back in the callback's response.
    """
    if decision.action is Action.HAND_OFF:
        with handoff.beginning(inbound.key):
            return ingress.accept_answered(inbound, decision.answer(), passive=False)
    return ingress.accept_answered(inbound, decision.answer(), passive=passive)


@dataclass(frozen=True)
class ChannelContext:
    """What the gateway gives a channel adapter: narrow on purpose (no composition root, no engines)."""

    settings: Settings
    ingress: Ingress
    kv: KV
    listener: Listener  # live events for the conversations this gateway holds sockets for
    sessions: sessionmaker[Session]  # reads (history) and channel-owned rows (a pull cursor)
    publisher: Publisher
    handoff: HandOffPort
    bus: Bus | None = None  # live events to other processes (the console's: models.desk.TOPIC)
    # who may add work now (rate limits, backpressure: channels.admission); built once per gateway process
    admission: Admission = field(default_factory=Unlimited)


class ChannelAdapter(ABC):
    """Gateway side of a channel."""

    # the rate-limit scope a customer's message is counted in by take() (KEFU_RATE_LIMIT_PEER, per conversation);
    # None where the channel limits its requests itself before accepting them (the web chat: visitor and IP, 429)
    peer_scope: str | None = "peer"

    def __init__(self, context: ChannelContext) -> None:
        self.ctx = context

    @abstractmethod
    def routes(self) -> list[BaseRoute]:
        """The HTTP/WebSocket routes this channel mounts on the gateway."""

    def take(self, inbound: Inbound) -> Accepted:
        """Carry out the dialogue decision for a customer's text (channels without a platform reply of their own):
        queued for the model, or answered now (FAQ, no person available, a hand-off notice) with a reply that
        is delivered like any other. A message for the model that admission control refuses (:meth:`admit`) is
        stored and answered at once with a polite "please wait" (never dropped, not queued for the model)."""
        if self.ctx.handoff.with_person(inbound.key):  # a person owns the conversation: the model stays out
            return self.ctx.ingress.accept_for_human(inbound, via="desk")
        decision = decide(self.ctx.settings, Message(inbound.text, inbound.kind, channel=inbound.key.channel),
                          self.ctx.handoff.availability(inbound.key.account))
        if decision.action is Action.GENERATE:
            refusal = self.admit(inbound.key)
            if refusal is not None:
                return self.ctx.ingress.accept_answered(inbound, refused_answer(self.ctx.admission, refusal),
                                                        passive=False)[0]
            return self.ctx.ingress.accept(inbound)
        return store_decided(self.ctx.ingress, self.ctx.handoff, inbound, decision)[0]

    def admit(self, key: ConversationKey) -> Refusal | None:
        """Whether the model may take one more message of this conversation (channels.admission): the
        :attr:`peer_scope` limit, then backpressure; None: yes."""
        return admit(self.ctx.admission, key, self.peer_scope)

    async def start(self) -> None:
        """Start what the channel serves besides its routes (a TCP listener); the gateway's lifespan calls it."""
        return None

    async def stop(self) -> None:
        """Stop what :meth:`start` started."""
        return None


@dataclass(frozen=True)
class OutboundDeps:
    """What a worker gives an outbound sender."""

    settings: Settings
    bus: Bus
    sessions: sessionmaker[Session]
    kv: KV
    handoff: HandOffPort
    platform: PlatformAPI | None = None  # the WeChat / WeCom server API client, for channels with platform_api


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

    def __init__(self, deps: OutboundDeps) -> None:
        self.deps = deps

    def stream(self, key: ConversationKey, inbound_id: int, piece: str) -> bool | None:
        """Partial reply text as the model produces it (channels that stream); best effort, never raises.

        Returning False asks the worker to stop generating (nobody is listening any more: a caller
        who spoke over the answer); None or True carry on.
        """
        return None

    def reply_text(self, inbound_id: int, generated: str) -> str:
        """The text to store as the answer (and to keep in the history); the generated text by default.

        The phone keeps only what the caller heard when they spoke over the answer.
        """
        return generated

    def client_history(self, account: str, external_id: str) -> list[Turn] | None:
        """The conversation as the customer's client sent it with this message (an API client keeps its own), which
        the model reads instead of the stored history; None (every other channel): the stored history."""
        return None

    @abstractmethod
    def send(self, reply: Reply, progress: DeliveryProgress) -> None:
        """Send the whole reply; raise DeliveryRetryable or DeliveryPermanent on failure."""


@dataclass(frozen=True)
class PullDeps:
    """What a worker gives a channel's puller."""

    settings: Settings
    sessions: sessionmaker[Session]
    ingress: Ingress
    kv: KV
    locks: Locks
    handoff: HandOffPort
    platform: PlatformAPI | None = None
    admission: Admission = field(default_factory=Unlimited)  # the peer limit and backpressure for pulled messages


class PullBusy(Exception):
    """Another worker is pulling the same source right now; try again in a moment."""


class Puller(ABC):
    """Worker side of a channel whose callbacks only say "there is news" (WeChat Customer Service): the messages
    are pulled by an io worker (task ``kefu.pull``) from one *source* of an account (a 客服账号).

    The gateway records the request durably before publishing the task, so a lost task is found again by
    :meth:`unfinished` (the sweeper publishes it once more).
    """

    def __init__(self, deps: PullDeps) -> None:
        self.deps = deps

    @abstractmethod
    def run(self, account: str, source: str) -> int:
        """Read everything new from ``source``; the number of new messages stored. Raises PullBusy, or a
        Retryable / Permanent error."""

    @abstractmethod
    def unfinished(self, session: Session, requested_before: datetime, limit: int) -> list[tuple[str, str]]:
        """(account, source) pairs with news that no finished pull has read, requested before the given time."""


@dataclass(frozen=True)
class Channel:
    """One channel, as the gateway and the workers see it."""

    name: str  # ConversationKey.channel, stored on every row
    adapter: Callable[[ChannelContext], ChannelAdapter]
    outbound: Callable[[OutboundDeps], Outbound]
    section: type[Section] | None = None  # its settings (accounts), read by Settings.section
    handoff: Callable[[Settings, KV], HandOffPort] = HandOffPort
    streams: bool = False  # shows partial text while the model generates (Outbound.stream)
    # False when the channel may change a stored answer afterwards (the phone keeps only what the caller
    # heard), so a worker reads the history from the database instead of its cache
    cache_context: bool = True
    platform_api: bool = False  # its outbound needs the WeChat / WeCom server API client
    # voice messages the platform did not transcribe: the app whose media/get serves this account's files
    # (None when the account is gone); None: the channel has no voice files
    media_app: Callable[[Settings, str], AppCredentials | None] | None = None
    puller: Callable[[PullDeps], Puller] | None = None  # messages pulled by an io worker (kefu.pull), not pushed

    @property
    def voice_files(self) -> bool:
        return self.media_app is not None

    def settings(self, settings: Settings) -> Section:
        """This channel's section of ``settings``."""
        if self.section is None:
            raise LookupError(f"channel {self.name!r} has no settings section")
        return settings.section(self.section)
