"""Replies through ``kf/send_msg`` (our own ``msgid``, at most 5 messages of 2,048 UTF-8 bytes, within 48 hours);
the hand-off through ``kf/service_state/trans`` once its notice is out. 95018 (the session state no longer
allows it: a person took over) is a permanent, recorded failure.

Effectively once: every part carries a deterministic ``msgid`` (:func:`kf_msgid`: the reply, the part and
the customer's message time; at most 32 bytes of ``[0-9a-zA-Z_-]``), which the platform requires to be
unique in the 客服账号 and refuses when it is used again. Each attempt is recorded before the call
(:class:`~channels.send_attempts.SendAttempts`); when a part attempted before a crash or a timeout (not
answered with an errcode) is refused on its resend, the platform already has it: the part counts as sent
and ``resend_refused`` is audited with the errcode — the customer got it once. The documentation names no errcode for a used
``msgid``, so any refusal of a resent part counts, except the codes that mean something else
(:data:`NOT_A_USED_MSGID`)."""

from __future__ import annotations

from typing import Any

from channels import truncation
from channels import wechat_protocol as wx
from channels.base import DeliveryPermanent, DeliveryProgress, Outbound
from channels.send_attempts import SendAttempts
from channels.wechat_api import PlatformPermanent
from channels.wecom_kf.config import CHANNEL, WeComKfAccount, account, credentials, split_peer
from channels.wecom_kf.handoff import HUMAN_STATES, POOL, SERVICER
from models import audit
from models.envelope import Reply
from models.infra.db import transaction
from models.states import ReplySource

STATE_FORBIDS_SENDING = 95018
# refusals of a resent part that do not mean "this msgid was used": the session state, the 5-message and 48-hour
# limits (95001, 95002), text too long (45002)
NOT_A_USED_MSGID = frozenset({STATE_FORBIDS_SENDING, 95001, 95002, 45002})


def kf_msgid(reply: Reply, part: int) -> str:
    """The same for every attempt of one part; the customer's message time keeps it unique in the 客服账号 even
    after a database is rebuilt and reply ids start again."""
    stamp = f"-{int(reply.inbound_at.timestamp()):x}" if reply.inbound_at is not None else ""
    return f"kefu-{reply.reply_id}-{part}{stamp}"


class WeComKfOutbound(Outbound):
    """Replies through ``/cgi-bin/kf/send_msg``; hand-off through ``kf/service_state/trans``."""

    def send(self, reply: Reply, progress: DeliveryProgress) -> None:
        found = account(self.deps.settings, reply.key.account)
        if found is None:
            raise DeliveryPermanent(f"WeChat Customer Service account {reply.key.account!r} is no longer configured")
        platform = self.deps.platform
        if platform is None:
            raise DeliveryPermanent("no platform API client in this worker")
        open_kfid, user = split_peer(reply.key.peer)
        parts = wx.split_utf8(truncation.outgoing_text(self.deps.sessions, reply))
        try:
            wx.require_service_window(reply.inbound_at)
            attempts = SendAttempts(self.deps.sessions, reply)
            for index in range(progress.parts_sent, len(parts)):
                with attempts.sending(index, idempotent=True) as again:
                    try:
                        platform.post(credentials(found), "/cgi-bin/kf/send_msg", {
                            "touser": user, "open_kfid": open_kfid, "msgid": kf_msgid(reply, index),
                            "msgtype": "text", "text": {"content": parts[index]},
                        })
                    except PlatformPermanent as exc:
                        if exc.errcode == STATE_FORBIDS_SENDING:
                            raise DeliveryPermanent("errcode 95018: the session state no longer allows sending "
                                                    "(a person has taken over); not sent") from exc
                        if not again or exc.errcode in NOT_A_USED_MSGID:
                            raise
                        attempts.note(audit.RESEND_REFUSED, index, errcode=exc.errcode)  # out before the crash
                progress.record(index + 1)
        except DeliveryPermanent:
            if reply.source == ReplySource.HANDOFF:  # no notice, no transfer: no person is coming, so the model
                self.deps.handoff.release(reply.key)  # answers again
            raise
        if self.deps.handoff.desk_owns(reply.key):  # the console's agents answer through send_msg: the session
            return                                     # stays with Kefu (state 1), no transfer to a servicer
        if reply.source == ReplySource.HANDOFF or (reply.source == ReplySource.FALLBACK and found.handoff_on_fallback):
            self._hand_off(found, open_kfid, user, reply)

    def _hand_off(self, account: WeComKfAccount, open_kfid: str, user: str, reply: Reply) -> None:
        platform = self.deps.platform
        assert platform is not None
        app = credentials(account)
        ids = {"open_kfid": open_kfid, "external_userid": user}
        state = int(platform.post(app, "/cgi-bin/kf/service_state/get", ids).get("service_state", 0))
        if state not in HUMAN_STATES:  # a retried delivery after a successful transfer does not transfer twice
            target = SERVICER if account.servicer_userid else POOL
            payload: dict[str, Any] = {**ids, "service_state": target}
            if account.servicer_userid:
                payload["servicer_userid"] = account.servicer_userid
            platform.post(app, "/cgi-bin/kf/service_state/trans", payload)
            state = target
        self.deps.handoff.release(reply.key)  # the platform says who serves the customer from now on
        with transaction(self.deps.sessions) as session:
            audit.record(session, audit.HANDED_OFF, channel=CHANNEL, conversation_id=reply.conversation_id,
                         inbound_id=reply.inbound_id, reply_id=reply.reply_id, service_state=state,
                         reason="asked for a person" if reply.source == ReplySource.HANDOFF else "model could not answer")
