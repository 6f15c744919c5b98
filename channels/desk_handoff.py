"""The console's waiting queue as a channel's hand-off: :class:`DeskHandOff` wraps the channel's own port.

For a channel in ``KEFU_DESK_CHANNELS``, once the console has agent accounts: while the desk is open (within
``KEFU_DESK_HOURS`` and an agent present, models.desk) a request for a person puts the conversation in the
console's waiting queue, and the model stays out until an agent hands it back. When the desk is closed the
channel's own hand-off applies (an official account's staff, the kf pool); where there is none, the customer is
told honestly: after hours (``desk_after_hours_reply``) or nobody available (``handoff_unavailable_reply``).
Without agent accounts nothing changes: the channel's own port answers everything.

The desk's state is in the database (conversation.handler), so every gateway and worker process agrees. Whether
the console is in use and whether it is open are cached for :data:`CACHE_S` per process: a hand-off may land in
the queue a second after the last agent went away (it waits there for the next one).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import exists, select
from sqlalchemy.orm import Session, sessionmaker

from channels.base import HandOffPort
from models import business_hours, desk
from models.dialogue import HandOff
from models.envelope import ConversationKey, utcnow
from models.infra.db import transaction
from models.infra.kv import KV
from models.settings import Settings
from models.tables import AgentRecord

CACHE_S = 1.0


class _Cached:
    """A value read at most once per CACHE_S."""

    def __init__(self, read: Callable[[], bool]) -> None:
        self._read = read
        self._value = False
        self._until = 0.0

    def __call__(self) -> bool:
        now = time.monotonic()
        if now >= self._until:
            self._value = self._read()
            self._until = now + CACHE_S
        return self._value


class DeskHandOff(HandOffPort):
    def __init__(self, inner: HandOffPort, settings: Settings, kv: KV, sessions: sessionmaker[Session]) -> None:
        super().__init__(settings, kv)
        self.inner = inner
        self.from_worker = inner.from_worker
        self._sessions = sessions
        self._hours = business_hours.parse(settings.desk_hours, settings.desk_timezone)
        self.in_use = _Cached(self._has_agents)
        self._present = _Cached(self._agents_present)

    def _has_agents(self) -> bool:
        with self._sessions() as session:
            return bool(session.scalar(select(exists().where(AgentRecord.disabled.is_(False)))))

    def _agents_present(self) -> bool:
        with self._sessions() as session:
            return desk.agents_present(session, self.settings.desk_presence_s) > 0

    def open(self) -> bool:
        """Within business hours and an agent present."""
        return self.in_use() and self._hours.is_open(utcnow()) and self._present()

    def availability(self, account: str) -> HandOff:
        if not self.in_use():
            return self.inner.availability(account)
        if self.open():
            return HandOff.PERSON
        own = self.inner.availability(account)
        if own is HandOff.PERSON:
            return own
        return HandOff.NOBODY if self._hours.is_open(utcnow()) else HandOff.AFTER_HOURS

    def begin(self, key: ConversationKey) -> None:
        if self.open():
            with transaction(self._sessions) as session:
                conversation_id = desk.ensure_conversation(session, key)
                desk.queue(session, conversation_id, key.channel, "customer")
            return
        self.inner.begin(key)

    def with_person(self, key: ConversationKey) -> bool:
        return self.desk_owns(key) or self.inner.with_person(key)

    def desk_owns(self, key: ConversationKey) -> bool:
        if not self.in_use():
            return False
        with self._sessions() as session:
            return desk.with_person(session, key)

    def release(self, key: ConversationKey) -> None:
        if self.in_use():
            with transaction(self._sessions) as session:
                conversation_id = desk.conversation_id_of(session, key)
                if conversation_id is not None:
                    desk.hand_back(session, conversation_id, None, why="released")
        self.inner.release(key)

    def later_notice(self, account: str, notice: str) -> str:
        return notice if self.open() else self.inner.later_notice(account, notice)


def port(inner: HandOffPort, channel: str, settings: Settings, kv: KV, sessions: sessionmaker[Session]) -> HandOffPort:
    """The channel's hand-off port, behind the desk when the channel is one of ``KEFU_DESK_CHANNELS``."""
    if channel not in settings.desk_channels:
        return inner
    return DeskHandOff(inner, settings, kv, sessions)
