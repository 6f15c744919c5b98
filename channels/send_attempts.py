"""Send attempts, recorded before each platform call, so a redelivery knows a part may already be out.

A worker can die after the platform accepted a part and before ``parts_sent`` was recorded; the
redelivery (the sweeper, after ``redeliver_after_s``) then sends that part again. What happens next
depends on the platform:

- WeChat Customer Service ``kf/send_msg`` takes our ``msgid`` and refuses one already used in the
  客服账号: the resend is refused and no duplicate reaches the customer
  (:mod:`channels.wecom_kf.outbound` records that refusal as ``resend_refused``);
- the official account's customer-service message and the WeCom app's ``message/send`` take no
  idempotency key: the part is sent again (at least once). The resend is audited as
  ``possible_duplicate`` — at most one extra copy per crash, of the one part that was in flight.

:meth:`SendAttempts.sending` inserts a ``send_attempted`` audit row (reply id and part number, never
text) in its own transaction *before* the call, and says whether that part may be out already: attempted
before, and that attempt not answered with an errcode. An errcode answer (45009, -1, 40003…) means the
platform does not have the part: it is audited ``send_refused`` with the errcode, so the resend is
neither a possible duplicate nor (kf) a refusal of a used ``msgid``. A timeout or a dropped connection
says nothing either way and counts as attempted. Database errors propagate (the delivery is retried).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from channels.wechat_api import PlatformPermanent, PlatformRetryable
from models import audit
from models.envelope import Reply
from models.infra.db import transaction
from models.tables import AuditEvent

log = logging.getLogger(__name__)


class SendAttempts:
    """The attempts of one reply's delivery: which parts were tried before this run, and the record of each try."""

    def __init__(self, sessions: sessionmaker[Session], reply: Reply) -> None:
        self._sessions = sessions
        self._reply = reply
        self._before: set[int] = set()  # parts whose last attempt may have reached the platform
        with sessions() as session:  # ix_audit_inbound narrows it to this message's few rows
            rows = session.execute(select(AuditEvent.kind, AuditEvent.detail).where(
                AuditEvent.inbound_id == reply.inbound_id, AuditEvent.reply_id == reply.reply_id,
                AuditEvent.kind.in_((audit.SEND_ATTEMPTED, audit.SEND_REFUSED))).order_by(AuditEvent.id))
            for kind, detail in rows:
                part = detail.get("part") if isinstance(detail, dict) else None
                if isinstance(part, int):
                    (self._before.add if kind == audit.SEND_ATTEMPTED else self._before.discard)(part)

    def _ids(self) -> dict[str, Any]:
        r = self._reply
        return {"channel": r.key.channel, "conversation_id": r.conversation_id, "inbound_id": r.inbound_id,
                "reply_id": r.reply_id}

    @contextmanager
    def sending(self, part: int, *, idempotent: bool) -> Iterator[bool]:
        """Around one platform call for ``part``: records the attempt before it, yields True when the part may be
        out already, and records an errcode answer (``send_refused``) as it propagates.

        ``idempotent``: the platform call carries a key that makes a resend harmless; otherwise a resend is
        audited as ``possible_duplicate``."""
        again = self._begin(part, idempotent=idempotent)
        try:
            yield again
        except (PlatformPermanent, PlatformRetryable) as exc:
            if exc.errcode:  # the platform answered: it does not have the part
                self.note(audit.SEND_REFUSED, part, errcode=exc.errcode)
            raise

    def _begin(self, part: int, *, idempotent: bool) -> bool:
        again = part in self._before
        with transaction(self._sessions) as session:
            if again and not idempotent:
                audit.record(session, audit.POSSIBLE_DUPLICATE, **self._ids(), part=part)
            audit.record(session, audit.SEND_ATTEMPTED, **self._ids(), part=part)
        if again and not idempotent:
            log.warning("%s reply %s part %d is sent again after an unfinished attempt: the customer may get it twice",
                        self._reply.key.channel, self._reply.reply_id, part)
        return again

    def note(self, kind: str, part: int, **detail: Any) -> None:
        with transaction(self._sessions) as session:
            audit.record(session, kind, **self._ids(), part=part, **detail)
