"""A long model queue (as the LLM workers report it) gets WeChat customers a passive "please wait"."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from channels.app import Services, build_services
from channels.wechat_mp import WeChatMPAdapter
from models.infra.load import WAIT_KEY, current_wait, publish_wait
from models.infra.migrate import upgrade
from models.settings import Settings
from models.tables import AuditEvent, InboundRecord
from tests import wechat_platform as wp


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Services]:
    settings = Settings(data_dir=tmp_path, wechat_accounts=[wp.account()], busy_notice_after_s=4.0)
    upgrade(settings)
    gw = build_services(settings)
    try:
        yield gw
    finally:
        gw.db.dispose()
        getattr(gw.kv, "close", lambda: None)()


def ask(gw: Services, msgid: int, mode: str = "aes") -> tuple[str, wp.Callback]:
    cb = wp.callback(wp.text_xml("o-busy", "我的快递到哪了？", msgid=msgid), mode=mode)
    adapter = WeChatMPAdapter(gw.context("wechat_mp"))
    account = adapter.account("shop")
    assert account is not None
    return adapter.handle(account, cb.params, cb.body), cb


def audit_kinds(gw: Services, external_id: str) -> list[str]:
    with gw.sessions() as s:
        inbound_id = s.scalars(select(InboundRecord.id).where(InboundRecord.external_id == external_id)).one()
        return list(s.scalars(select(AuditEvent.kind).where(AuditEvent.inbound_id == inbound_id).order_by(AuditEvent.id)))


def test_a_long_queue_gets_a_passive_please_wait(gateway: Services) -> None:
    publish_wait(gateway.kv, 12.5)
    assert current_wait(gateway.kv) == 12.5
    answer, cb = ask(gateway, 7001)
    assert wp.read_passive_reply(answer, cb) == gateway.settings.busy_notice
    assert audit_kinds(gateway, "7001") == ["received", "queued", "busy_notice"]  # and the model still answers


def test_a_short_queue_or_no_estimate_stays_silent(gateway: Services) -> None:
    publish_wait(gateway.kv, 1.0)
    assert ask(gateway, 7002, mode="raw")[0] == "success"
    gateway.kv.delete(WAIT_KEY)
    assert current_wait(gateway.kv) == 0.0
    assert ask(gateway, 7003, mode="raw")[0] == "success"
    assert "busy_notice" not in audit_kinds(gateway, "7002")
