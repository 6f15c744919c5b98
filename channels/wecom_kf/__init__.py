"""WeChat Customer Service (微信客服) channel: "there is news" callbacks, ``kf/sync_msg`` pulls, ``kf/send_msg``.

A package: ``config`` (settings, credentials, peers), ``handoff`` (service states, the port),
``adapter`` (the callback), ``sync`` (the pull, in an io worker), ``outbound`` (replies, the transfer).

The ``kf_msg_or_event`` callback carries no message, only the 客服账号 (``OpenKfId``) and a sync
token. ``POST /v1/wecom-kf/{account}`` verifies it (:class:`~channels.wechat_guard.CallbackGuard`,
receive id: the corpid), bumps that account's ``kf_cursor.requested``, publishes ``kefu.pull``
and answers at once. The pull runs in an io worker (:class:`KfSync`):

- one sync per (account, open_kfid) at a time, under a 10 s lease renewed while it runs (a sync
  killed mid-way is taken over within seconds); a sync that finds the lease taken retries shortly,
  so news that arrives during a sync is never left unread; at most one pull per (account,
  open_kfid) is queued or waiting (:mod:`~channels.wecom_kf.queued`), and a platform retry of a
  callback already recorded queues none;
- every page: all customer messages of ``msg_list`` are persisted (their ``msgid`` is the dedup
  key), *then* ``next_cursor`` is stored; ``has_more`` is followed to the end. A crash between the
  two re-reads one page and the messages already stored are skipped without an API call — a restart
  neither loses nor repeats a message;
- the sweeper publishes the sync again for any account whose news no finished sync has read.

Dialogue rules: a message while a human owns the conversation (service state 2 or 3) is stored
for the human and the model stays out; a customer asking for a person (models.handoff_detect) gets
``handoff_reply`` and the session is moved to the queue pool (state 2) or to the configured servicer
(state 3) with ``kf/service_state/trans``; so is a conversation the model could not answer (its
fallback reply) unless ``handoff_on_fallback`` is off. FAQ hits and unsupported message types are
answered at once without the model. A voice message (``voice.media_id``) is queued as it is: the
worker downloads it (WeCom ``media/get``), transcribes it and applies the same rules to the text
(:mod:`workers.voice`). Replies go through ``kf/send_msg`` with our own deterministic ``msgid``
(a resend after a crash is refused by the platform, so the customer gets each part once), at most
5 messages of 2,048 UTF-8 bytes within 48 hours of the customer's message; 95018 (the session
state no longer allows it: a human took over) is a permanent, recorded failure.
"""

from __future__ import annotations

from channels.base import Channel
from channels.wecom_kf.adapter import WeComKfAdapter
from channels.wecom_kf.config import CHANNEL, WeComKfAccount, WeComKfSettings, account, media_app
from channels.wecom_kf.handoff import KfHandOff
from channels.wecom_kf.outbound import WeComKfOutbound
from channels.wecom_kf.sync import KfSync

__all__ = ["CHANNEL", "WeComKfAccount", "account", "descriptor"]

descriptor = Channel(name=CHANNEL, adapter=WeComKfAdapter, outbound=WeComKfOutbound, section=WeComKfSettings,
                     handoff=KfHandOff, platform_api=True, media_app=media_app, puller=KfSync)
