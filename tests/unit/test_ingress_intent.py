"""Ingress stores the rules' intent with a message and in its received audit row (models.intents via the intent
function the gateway and workers give it); none for a message without text or with only its kind's placeholder,
and a failing classifier never loses the message. Messages are hand-written."""

from __future__ import annotations

from functools import partial
from typing import Any, cast

import pytest
from sqlalchemy import Engine, select

from channels.ingress import Ingress
from models import intents
from models.envelope import ConversationKey, Inbound
from models.infra.db import make_session_factory
from models.infra.queues import Publisher
from models.settings import Settings
from models.tables import AuditEvent, InboundRecord

KEY = ConversationKey("web", "default", "v1")


class Published:
    def __init__(self) -> None:
        self.ids: list[int] = []

    def handle_inbound(self, inbound_id: int) -> None:
        self.ids.append(inbound_id)


def ingress(db: Engine, intent: Any = partial(intents.label, Settings())) -> Ingress:
    return Ingress(make_session_factory(db), cast(Publisher, Published()), intent=intent)


def row_and_received(db: Engine, inbound_id: int) -> tuple[str | None, dict[str, Any]]:
    sessions = make_session_factory(db)
    with sessions() as session:
        intent = session.scalars(select(InboundRecord.intent).where(InboundRecord.id == inbound_id)).one()
        received = session.scalars(select(AuditEvent.detail).where(
            AuditEvent.inbound_id == inbound_id, AuditEvent.kind == "received")).one()
    return intent, received


def test_a_message_is_stored_and_audited_with_its_intent(db: Engine) -> None:
    accepted = ingress(db).accept(Inbound(KEY, "m1", "我要退货"))
    assert row_and_received(db, accepted.inbound_id) == ("return_refund", {"message_kind": "text", "chars": 4,
                                                                           "intent": "return_refund"})
    again = ingress(db).accept(Inbound(KEY, "m1", "我要退货"))  # the platform's retry: no second label
    assert again.duplicate and again.inbound_id == accepted.inbound_id


@pytest.mark.parametrize("inbound", [Inbound(KEY, "v1", "", "voice", media_id="MEDIA"),
                                     Inbound(KEY, "i1", "[image]", "image")], ids=["voice", "image"])
def test_no_intent_without_text(db: Engine, inbound: Inbound) -> None:
    intent, received = row_and_received(db, ingress(db).accept(inbound).inbound_id)
    assert intent is None and "intent" not in received


def test_a_failing_classifier_never_loses_the_message(db: Engine) -> None:
    def broken(text: str) -> str:
        raise RuntimeError("bug")

    accepted = ingress(db, broken).accept(Inbound(KEY, "m2", "我要退货"))
    assert row_and_received(db, accepted.inbound_id)[0] is None and accepted.queued
