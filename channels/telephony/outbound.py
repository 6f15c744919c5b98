"""Worker side of the phone channel: the answer's text goes to the gateway holding the call.

Tokens are published on the call conversation's bus topic as they are generated, and the final
reply when it is stored. When the caller speaks over the answer the gateway sets a cancel flag (the
next token stops the generation) and records what was heard, which becomes the stored answer.
The gateway's :class:`~channels.telephony.call.Call` turns the text into speech. Delivery is
"dispatched" when the reply was published (the caller hears it, or hung up).
"""

from __future__ import annotations

from channels.base import DeliveryProgress, Outbound
from models.envelope import ConversationKey, Reply

CANCEL_KEY = "phone:cancel:{}"  # set by the gateway when the caller spoke over the answer
HEARD_KEY = "phone:heard:{}"  # what the caller heard of it by then
INTERRUPTED_MARK = "…"


class PhoneOutbound(Outbound):
    def stream(self, key: ConversationKey, inbound_id: int, piece: str) -> bool | None:
        if self.deps.kv.get(CANCEL_KEY.format(inbound_id)):
            return False  # the caller interrupted: stop generating
        self.deps.bus.publish(key.topic(), {"type": "token", "message_id": inbound_id, "text": piece})
        return None

    def reply_text(self, inbound_id: int, generated: str) -> str:
        heard = self.deps.kv.get(HEARD_KEY.format(inbound_id))
        return generated if heard is None else heard + INTERRUPTED_MARK

    def send(self, reply: Reply, progress: DeliveryProgress) -> None:
        self.deps.bus.publish(reply.key.topic(), {"type": "reply", "reply_id": reply.reply_id,
                                                  "message_id": reply.inbound_id, "text": reply.text})
