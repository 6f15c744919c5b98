"""The human desk (models.desk, channels.desk_handoff) on SQLite and PostgreSQL: a request for a person queues the
conversation while an agent is present, claims are exclusive, the model stays out while a person has it (ingress
stores the customer's messages as ``human``), an agent's reply is stored with a pending delivery, hand-back
returns it to the bot, and every change is audited."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from channels.base import HandOffPort
from channels.desk_handoff import DeskHandOff, port
from channels.ingress import Ingress
from models import desk
from models.dialogue import HandOff
from models.envelope import ConversationKey, Inbound, utcnow
from models.infra.db import transaction
from models.infra.kv import SQLiteKV
from models.infra.queues import Publisher
from models.settings import Settings
from models.states import DeliveryStatus, Handler, InboundStatus, Presence, ReplySource
from models.tables import AgentRecord, AuditEvent, ConversationRecord, DeliveryRecord, InboundRecord, ReplyRecord
from tests.integration.conftest import add_agent


class Published:
    def __init__(self) -> None:
        self.inbound: list[int] = []

    def handle_inbound(self, inbound_id: int) -> None:
        self.inbound.append(inbound_id)


class Events:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def publish(self, topic: str, event: dict[str, Any]) -> None:
        self.events.append((topic, event))


def kinds(sessions: sessionmaker[Session], conversation_id: int) -> list[str]:
    with sessions() as session:
        return list(session.scalars(select(AuditEvent.kind).where(AuditEvent.conversation_id == conversation_id)
                                    .order_by(AuditEvent.id)))


KEY = ConversationKey("web", "default", "visitor-1")


def test_without_agent_accounts_the_channels_own_port_decides(db: tuple[Settings, sessionmaker[Session]]) -> None:
    settings, sessions = db
    handoff = port(HandOffPort(settings, SQLiteKV(settings.data_dir / "kv.sqlite")), "web", settings,
                   SQLiteKV(settings.data_dir / "kv.sqlite"), sessions)
    assert isinstance(handoff, DeskHandOff)
    assert handoff.availability("default") is HandOff.NOBODY
    assert not handoff.with_person(KEY)
    phone = port(HandOffPort(settings, SQLiteKV(settings.data_dir / "kv.sqlite")), "phone", settings,
                 SQLiteKV(settings.data_dir / "kv.sqlite"), sessions)
    assert not isinstance(phone, DeskHandOff)  # not one of KEFU_DESK_CHANNELS


def test_queue_claim_reply_hand_back(db: tuple[Settings, sessionmaker[Session]]) -> None:
    settings, sessions = db
    kv = SQLiteKV(settings.data_dir / "kv.sqlite")
    handoff = DeskHandOff(HandOffPort(settings, kv), settings, kv, sessions)
    published, events = Published(), Events()
    ingress = Ingress(sessions, cast(Publisher, published), notify=events)
    first = ingress.accept(Inbound(KEY, "m1", "你好"))
    assert first.queued and published.inbound == [first.inbound_id]
    assert events.events[-1] == (desk.TOPIC, {"type": "message", "conversation_id": first.conversation_id,
                                              "channel": "web"})

    away = add_agent(sessions, "away", online=False)
    assert handoff.availability("default") is HandOff.NOBODY  # an agent exists, but nobody is online
    alice = add_agent(sessions, "alice")
    handoff.in_use._until = handoff._present._until = 0
    assert handoff.availability("default") is HandOff.PERSON
    handoff.begin(KEY)
    assert handoff.with_person(KEY) and handoff.desk_owns(KEY)

    second = ingress.accept(Inbound(KEY, "m2", "还在吗"))  # the model stays out: stored for the person
    assert not second.queued and published.inbound == [first.inbound_id]
    with sessions() as session:
        assert session.get(InboundRecord, second.inbound_id).status == InboundStatus.HUMAN  # type: ignore[union-attr]

    with transaction(sessions) as session:
        held = desk.claim(session, first.conversation_id, alice)
    assert held.handler is Handler.AGENT and held.agent_id == alice
    with pytest.raises(desk.DeskConflict), transaction(sessions) as session:
        desk.claim(session, first.conversation_id, away)
    with pytest.raises(desk.DeskConflict), transaction(sessions) as session:
        desk.store_agent_reply(session, first.conversation_id, away, "我来")

    with transaction(sessions) as session:
        reply_id = desk.store_agent_reply(session, first.conversation_id, alice, "您好，我是客服小王")
    with sessions() as session:
        reply = session.get(ReplyRecord, reply_id)
        assert reply is not None and reply.inbound_id is None and reply.agent_id == alice
        assert reply.source == ReplySource.AGENT
        delivery = session.scalars(select(DeliveryRecord).where(DeliveryRecord.reply_id == reply_id)).one()
        assert delivery.status == DeliveryStatus.PENDING
        conversation = session.get(ConversationRecord, first.conversation_id)
        assert conversation is not None and conversation.last_reply_at is not None

    with transaction(sessions) as session:
        assert not desk.hand_back(session, first.conversation_id, away)  # not theirs
        assert desk.hand_back(session, first.conversation_id, alice)
    assert not handoff.with_person(KEY)
    third = ingress.accept(Inbound(KEY, "m3", "谢谢"))
    assert third.queued  # the bot answers again
    assert kinds(sessions, first.conversation_id).count(desk.DESK_QUEUED) == 1
    trail = kinds(sessions, first.conversation_id)
    assert trail.index(desk.DESK_QUEUED) < trail.index(desk.DESK_CLAIMED) < trail.index(desk.DESK_HANDED_BACK)


def test_presence_expires_and_hours_close_the_desk(db: tuple[Settings, sessionmaker[Session]]) -> None:
    settings, sessions = db
    alice = add_agent(sessions, "alice")
    with sessions() as session:
        assert desk.agents_present(session, 45) == 1
        assert desk.agents_present(session, 45, now=utcnow() + timedelta(seconds=60)) == 0
    with transaction(sessions) as session:
        session.get(AgentRecord, alice).status = Presence.AWAY  # type: ignore[union-attr]
    with sessions() as session:
        assert desk.agents_present(session, 45) == 0

    closed = settings.model_copy(update={"desk_hours": "mon-sun 00:00-00:01"})
    kv = SQLiteKV(settings.data_dir / "kv.sqlite")
    handoff = DeskHandOff(HandOffPort(closed, kv), closed, kv, sessions)
    now = utcnow().astimezone(handoff._hours.zone)
    if now.hour == 0 and now.minute == 0:
        pytest.skip("the test's closed schedule is open during this minute")
    assert handoff.availability("default") is HandOff.AFTER_HOURS
