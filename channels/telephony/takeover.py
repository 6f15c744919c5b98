"""An agent takes a live phone call from the console: :func:`transfer_claimed_call`.

When an agent claims a phone conversation in the console, the call still on the line is transferred exactly as
key 0 or a spoken 转人工 would (the hotline's ``transfer_to``, else ``KEFU_PHONE_TRANSFER_TO``; with neither, the
caller hears the apology and the call ends): the console publishes :data:`TRANSFER` on the call's topic
(``ConversationKey.topic()``), and the gateway process holding the call (channels.telephony.call) carries it out.
The event is fire-and-forget like every bus event: no gateway holds the call (it ended) → nothing happens.

Call it after the claim has committed. It never raises for a bus failure (the bus does not raise).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.envelope import ConversationKey
from models.infra.bus import Bus
from models.tables import ConversationRecord

CHANNEL = "phone"
TRANSFER = "transfer"  # the event's type: {"type": "transfer", "agent_id": …}


def transfer_claimed_call(bus: Bus, session: Session, conversation_id: int, agent_id: int | None = None) -> bool:
    """Ask the gateway holding the conversation's call to transfer it; False (nothing published) when the
    conversation is not a phone conversation (or does not exist)."""
    row = session.execute(select(ConversationRecord.channel, ConversationRecord.account, ConversationRecord.peer)
                          .where(ConversationRecord.id == conversation_id)).first()
    if row is None or row.channel != CHANNEL:
        return False
    bus.publish(ConversationKey(row.channel, row.account, row.peer).topic(), {"type": TRANSFER, "agent_id": agent_id})
    return True
