"""Who serves a kf customer: the service states, and the marker for a hand-off decided but not yet carried out.

A hand-off is decided when the customer's message is pulled (or its voice transcribed); the notice
is delivered next and ``kf/service_state/trans`` comes after it (:mod:`channels.wecom_kf.outbound`).
In between, the marker makes the next pulled message count as the person's
(:meth:`KfHandOff.with_person`); it is cleared when the transfer is done, or when the notice can
never be sent (no notice, no transfer: the model answers again).
"""

from __future__ import annotations

from channels.base import HandOffPort
from channels.wecom_kf.config import split_peer
from models.dialogue import HandOff
from models.envelope import ConversationKey

HANDOFF_PENDING_TTL_S = 120  # the notice's delivery (with its retries) and the transfer happen well within this
HUMAN_STATES = frozenset({2, 3})  # 2 waiting in the pool for a person, 3 served by a person
POOL, SERVICER = 2, 3


def handoff_key(key: ConversationKey) -> str:
    open_kfid, user = split_peer(key.peer)
    return f"kf:handoff:{key.account}:{open_kfid}:{user}"


class KfHandOff(HandOffPort):
    """Every kf account can pass a customer to a person: the queue pool or the configured servicer."""

    def availability(self, account_name: str) -> HandOff:
        return HandOff.PERSON

    def begin(self, key: ConversationKey) -> None:
        self.kv.set(handoff_key(key), "1", HANDOFF_PENDING_TTL_S)

    def with_person(self, key: ConversationKey) -> bool:
        """True while a decided hand-off waits for its transfer (the platform's state says the rest)."""
        return bool(self.kv.get(handoff_key(key)))

    def release(self, key: ConversationKey) -> None:
        self.kv.delete(handoff_key(key))
