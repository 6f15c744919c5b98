"""The kf pull under faults: a pull killed mid-way is taken over within seconds (a short lease, renewed while
the pull runs), news never queues more than one pull per 客服账号, and a platform retry of the callback queues
none — against real Redis and PostgreSQL (or the embedded backends) and the loopback WeCom server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select

from channels.base import ChannelContext, PullBusy
from channels.wechat_fake import FakeWeChat
from channels.wecom_kf.adapter import WeComKfAdapter, request_sync
from channels.wecom_kf.config import account, credentials
from channels.wecom_kf.sync import KfSync
from models.infra.kv import RedisKV
from models.infra.migrate import upgrade
from models.settings import Settings
from models.tables import KfCursorRecord
from tests import services
from tests import wechat_platform as wp
from tests.conftest import REPO
from tests.integration.conftest import BACKENDS, wait_for
from tests.stack import kefu_env
from workers.runtime import Runtime

REDIS_DB = 15  # published tasks stay in this database: no test worker consumes them


class RecordingPublisher:
    """Counts the pulls the gateway publishes (the real publish is not what is under test here)."""

    def __init__(self) -> None:
        self.pulls: list[tuple[str, str, str]] = []

    def pull(self, channel: str, account: str, source: str, countdown: float | None = None) -> None:
        self.pulls.append((channel, account, source))


@dataclass
class KfWorld:
    settings: Settings
    rt: Runtime
    fake: FakeWeChat
    values: dict[str, Any]

    @property
    def sync(self) -> KfSync:
        puller = self.rt.puller("wecom_kf")
        assert isinstance(puller, KfSync)
        return puller

    def cursor(self, open_kfid: str) -> KfCursorRecord:
        with self.rt.sessions() as s:
            return s.scalars(select(KfCursorRecord).where(KfCursorRecord.open_kfid == open_kfid)).one()


@pytest.fixture(params=BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KfWorld]:
    values: dict[str, Any] = {"data_dir": str(tmp_path), "secret_key": "test-secret",
                              "wecom_kf_accounts": [wp.kf_account()]}
    database = None
    if request.param == "redis-postgres":  # a database of its own: the cursor rows are this test's only
        services.ensure_postgres()
        services.ensure_redis()
        database, url = services.create_database()
        values.update(database_url=url, broker_url=services.redis_db_url(REDIS_DB))
    with FakeWeChat() as fake:
        fake.add_corp_app(wp.CORPID, wp.KF_SECRET)
        values["wecom_api_base"] = fake.base_url
        settings = Settings(**values)
        upgrade(settings)
        rt = Runtime(settings)
        try:
            yield KfWorld(settings, rt, fake, values)
        finally:
            rt.close()
            if database is not None:
                services.drop_database(database)
                services.redis_db_url(REDIS_DB)  # flushes what was published


def context(world: KfWorld, publisher: RecordingPublisher) -> ChannelContext:
    rt = world.rt
    return ChannelContext(settings=world.settings, ingress=rt.ingress, kv=rt.kv, listener=None,  # type: ignore[arg-type]
                          sessions=rt.sessions, publisher=publisher, handoff=rt.handoff("wecom_kf"))  # type: ignore[arg-type]


def test_news_while_a_pull_is_on_its_way_queues_no_other_pull(world: KfWorld) -> None:
    kfid = "wkQueued001"
    publisher = RecordingPublisher()
    for _ in range(5):  # the platform notifies per message; the first pull has not started yet
        request_sync(world.rt.sessions, publisher, world.rt.kv, "kf", kfid, None)  # type: ignore[arg-type]
    assert publisher.pulls == [("wecom_kf", "kf", kfid)]
    assert world.cursor(kfid).requested == 5  # every notice is recorded all the same
    with world.rt.sessions() as s:  # nor does the sweeper publish another while that one is queued
        assert world.sync.unfinished(s, world.cursor(kfid).requested_at.replace(year=2100), 10) == []

    world.fake.queue_kf_messages(kfid, [{"external_userid": "wm-q", "content": "在吗"}])
    assert world.sync.run("kf", kfid) == 1  # the queued pull reads all five notices' news
    cursor = world.cursor(kfid)
    assert cursor.synced == cursor.requested == 5
    request_sync(world.rt.sessions, publisher, world.rt.kv, "kf", kfid, None)  # type: ignore[arg-type]
    assert len(publisher.pulls) == 2  # news after the pull started publishes a new one


def test_a_pull_waiting_for_a_running_one_is_the_only_one_queued(world: KfWorld) -> None:
    kfid = "wkWaiting01"
    publisher = RecordingPublisher()
    request_sync(world.rt.sessions, publisher, world.rt.kv, "kf", kfid, None)  # type: ignore[arg-type]
    with world.rt.locks.hold(f"kfsync:kf:{kfid}", ttl_s=10, wait_s=0) as held:  # another worker's pull runs
        assert held
        for _ in range(3):
            with pytest.raises(PullBusy):
                world.sync.run("kf", kfid)  # the queued pull waits (its task retries shortly)
            request_sync(world.rt.sessions, publisher, world.rt.kv, "kf", kfid, None)  # type: ignore[arg-type]
    assert len(publisher.pulls) == 1  # 3 retries and 3 notices later, still one pull on its way


def test_a_platform_retry_of_the_callback_queues_no_extra_pull(world: KfWorld) -> None:
    kfid = "wkRetried01"
    publisher = RecordingPublisher()
    adapter = WeComKfAdapter(context(world, publisher))
    found = adapter.account("kf")
    assert found is not None
    callback = wp.corp_callback(wp.kf_event_xml(kfid))
    assert adapter.handle(found, callback.params, callback.body) == ""
    world.fake.queue_kf_messages(kfid, [{"external_userid": "wm-r", "content": "你好"}])
    assert world.sync.run("kf", kfid) == 1  # the pull ran: a new notice would publish again
    for _ in range(3):  # the platform did not see the answer within 5 s and retries the very same callback
        assert adapter.handle(found, callback.params, callback.body) == ""
    assert len(publisher.pulls) == 1
    assert world.cursor(kfid).requested == 1


def test_news_is_recorded_while_the_kv_store_is_down(world: KfWorld) -> None:
    """The guard lets an encrypted kf callback through without its nonce store (Redis); the news must then be in
    the database before the adapter touches that store, or it is lost once WeChat's retries are spent."""
    kfid = "wkKvDown001"
    rt = world.rt
    down = RedisKV("redis://127.0.0.1:1/0", timeout_s=0.5)  # nothing listens on port 1: refused at once
    adapter = WeComKfAdapter(ChannelContext(settings=world.settings, ingress=rt.ingress, kv=down, listener=None,  # type: ignore[arg-type]
                                            sessions=rt.sessions, publisher=RecordingPublisher(),  # type: ignore[arg-type]
                                            handoff=rt.handoff("wecom_kf")))
    found = adapter.account("kf")
    assert found is not None
    callback = wp.corp_callback(wp.kf_event_xml(kfid))  # carries a sync Token, kept in the KV store
    with pytest.raises(redis.RedisError):  # the platform gets a 5xx and retries
        adapter.handle(found, callback.params, callback.body)
    assert world.cursor(kfid).requested == 1  # durable: the sweeper publishes the pull once the store is back


CHILD = """
import sys
from models.settings import Settings
from workers.runtime import Runtime
Runtime(Settings()).puller("wecom_kf").run("kf", sys.argv[1])
"""


def test_a_pull_killed_mid_way_is_taken_over_within_seconds(world: KfWorld, tmp_path: Path) -> None:
    if world.settings.effective_redis_url is None:
        pytest.skip("the embedded lock is a flock, released by the kernel when its process dies")
    kfid = "wkKilled001"
    world.fake.queue_kf_messages(kfid, [{"external_userid": "wm-k", "content": f"问题{i}"} for i in range(3)])
    request_sync(world.rt.sessions, RecordingPublisher(), world.rt.kv, "kf", kfid, None)  # type: ignore[arg-type]
    found = account(world.settings, "kf")
    assert found is not None  # the access token is fetched now: the child hangs in kf/sync_msg, not in gettoken
    world.rt.platform.post(credentials(found), "/cgi-bin/kf/service_state/get", {"open_kfid": kfid,
                                                                                 "external_userid": "wm-k"})
    world.fake.set_latency(120)  # the child's pull hangs inside its first platform call
    env = {**kefu_env(world.values), "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, kfid], env=env, cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis.from_url(str(world.settings.effective_redis_url))
    try:
        wait_for(lambda: client.exists(f"kefu:lock:kfsync:kf:{kfid}"), timeout=60)  # it holds the lease, waiting
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
        client.close()
    world.fake.set_latency(0)
    killed_at = time.monotonic()

    def take_over() -> int | None:
        try:
            return world.sync.run("kf", kfid)
        except PullBusy:
            return None

    # Before the short lease the dead pull's lock blocked every pull for its fixed 300 s.
    assert wait_for(take_over, timeout=45, interval=0.5) == 3
    print(f"taken over {time.monotonic() - killed_at:.1f} s after the kill")
    cursor = world.cursor(kfid)
    assert cursor.synced == cursor.requested
