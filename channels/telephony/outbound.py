"""Worker side of the phone channel: the answer's text goes to the gateway holding the call.

Tokens are published on the call conversation's bus topic as they are generated, and the final
reply when it is stored; the gateway's :class:`~channels.telephony.call.Call` turns them into
speech. Delivery is "dispatched" when the reply was published (the caller hears it, or hung up).
"""

from __future__ import annotations

from channels.base import DeliveryProgress, Outbound
from models.envelope import ConversationKey, Reply


class PhoneOutbound(Outbound):
    streams = True

    def stream(self, key: ConversationKey, inbound_id: int, piece: str) -> bool | None:
        self.deps.bus.publish(key.topic(), {"type": "token", "message_id": inbound_id, "text": piece})
        return None

    def send(self, reply: Reply, progress: DeliveryProgress) -> None:
        self.deps.bus.publish(reply.key.topic(), {"type": "reply", "reply_id": reply.reply_id,
                                                  "message_id": reply.inbound_id, "text": reply.text})
