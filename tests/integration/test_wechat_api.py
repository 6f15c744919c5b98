"""Access tokens shared across workers, bounded token retries, and multi-part customer-service sends,
against the loopback WeChat server."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from channels.base import DeliveryPermanent, DeliveryProgress, HandOffPort, OutboundDeps
from channels.wechat_api import AccessTokens, AppCredentials, PlatformAPI, PlatformPermanent, PlatformRetryable, make_http
from channels.wechat_fake import FakeWeChat
from channels.wechat_mp import WeChatMPOutbound
from models.envelope import ConversationKey, Reply
from models.infra.bus import SocketBus
from models.infra.db import make_engine, make_session_factory
from models.infra.kv import make_kv
from models.infra.locks import make_locks
from models.infra.migrate import upgrade
from models.settings import Settings
from tests import wechat_platform as wp
from tests.conftest import REPO

APP = AppCredentials("mp", wp.APPID, wp.SECRET)


@pytest.fixture
def fake() -> Iterator[FakeWeChat]:
    with FakeWeChat() as f:
        f.add_mp_app(wp.APPID, wp.SECRET)
        yield f


@pytest.fixture(params=["embedded", "redis"])
def settings(request: pytest.FixtureRequest, tmp_path: Path, fake: FakeWeChat) -> Settings:
    extra = {}
    if request.param == "redis":
        extra["redis_url"] = url = request.getfixturevalue("redis_url")
        with redis.Redis.from_url(url) as r:  # tokens cached by an earlier test's fake would look valid
            for key in r.scan_iter("kefu:kv:wxtoken:*"):
                r.delete(key)
    return Settings(data_dir=tmp_path, wechat_api_base=fake.base_url, wechat_accounts=[wp.account()], **extra)


def client(settings: Settings) -> tuple[PlatformAPI, AccessTokens]:
    http = make_http(5)
    tokens = AccessTokens(http, make_kv(settings), make_locks(settings), mp_base=settings.wechat_api_base,
                          corp_base=settings.wecom_api_base)
    return PlatformAPI(http, tokens, mp_base=settings.wechat_api_base, corp_base=settings.wecom_api_base), tokens


def test_eight_concurrent_workers_refresh_the_token_once(settings: Settings, fake: FakeWeChat) -> None:
    fake.set_latency(0.2)  # a slow token endpoint widens the race
    pairs = [client(settings) for _ in range(8)]  # separate clients, shared store: like 8 processes
    clients = [tokens for _, tokens in pairs]
    barrier = threading.Barrier(8)
    tokens: list[str] = []

    def work(tokens_client: AccessTokens) -> None:
        barrier.wait()
        tokens.append(tokens_client.get(APP))

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for api, _ in pairs:
        api.close()
    assert len(set(tokens)) == 1 and len(tokens) == 8
    assert fake.token_requests == [("stable_token", wp.APPID)]


def test_eight_worker_processes_refresh_the_token_once(tmp_path: Path, fake: FakeWeChat) -> None:
    code = f"""
import sys
from channels.wechat_api import AccessTokens, AppCredentials, make_http
from models.infra.kv import make_kv
from models.infra.locks import make_locks
from models.infra.migrate import upgrade
from models.settings import Settings
s = Settings(data_dir=sys.argv[1], wechat_api_base=sys.argv[2])
t = AccessTokens(make_http(5), make_kv(s), make_locks(s), mp_base=s.wechat_api_base, corp_base=s.wecom_api_base)
print(t.get(AppCredentials("mp", "{wp.APPID}", "{wp.SECRET}")))
"""
    fake.set_latency(0.2)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), fake.base_url], cwd=REPO,
                              stdout=subprocess.PIPE, text=True) for _ in range(8)]
    outputs = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(outputs) == 1
    assert fake.token_requests == [("stable_token", wp.APPID)]


def test_invalid_token_is_refreshed_and_retried_once_only(settings: Settings, fake: FakeWeChat) -> None:
    api, _ = client(settings)
    request_close(api)
    payload = {"touser": "o1", "msgtype": "text", "text": {"content": "hi"}}
    fake.fail_next("custom_send", 40001)
    assert api.post(APP, "/cgi-bin/message/custom/send", payload)["errcode"] == 0
    assert len(fake.token_requests) == 2  # the first token, then one refresh
    fake.fail_next("custom_send", 40001, times=2)
    with pytest.raises(PlatformRetryable) as exc:
        api.post(APP, "/cgi-bin/message/custom/send", payload)
    assert exc.value.errcode == 40001
    assert len([c for c in fake.calls if c["endpoint"] == "custom_send"]) == 4  # 2 + 2, never a third try


_open: list[PlatformAPI] = []


def request_close(api: PlatformAPI) -> None:
    _open.append(api)


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()


def outbound(settings: Settings) -> tuple[WeChatMPOutbound, SocketBus]:
    api, _ = client(settings)
    request_close(api)
    bus = SocketBus(settings.data_dir / "bus")
    kv = make_kv(settings)
    upgrade(settings)  # the sender reads the message's audit rows (was it cut?) and records its attempts
    sessions = make_session_factory(make_engine(settings))
    deps = OutboundDeps(settings, bus, sessions, kv, HandOffPort(settings, kv), api)
    return WeChatMPOutbound(deps), bus


def reply(text: str, hours_ago: float = 0) -> Reply:
    at = datetime.now(UTC) - timedelta(hours=hours_ago)
    return Reply(1, 1, 1, ConversationKey("wechat_mp", "shop", "o-long"), text, at)


def test_a_long_reply_goes_out_in_at_most_five_parts_and_resumes(settings: Settings, fake: FakeWeChat) -> None:
    out, bus = outbound(settings)
    recorded: list[int] = []
    text = "感谢您的耐心等待。" * 800  # 21,600 bytes
    out.send(reply(text), DeliveryProgress(0, recorded.append))
    contents = [str(m["content"]) for m in fake.sent]
    assert len(contents) == 5 and recorded == [1, 2, 3, 4, 5]
    assert all(len(c.encode()) <= 2048 for c in contents) and contents[-1].endswith("…")
    fake.sent.clear()
    out.send(reply(text), DeliveryProgress(3, recorded.append))  # a retry after part 3 was accepted
    assert [str(m["content"]) for m in fake.sent] == contents[3:]
    bus.close()


def test_nothing_is_sent_outside_the_48_hour_window(settings: Settings, fake: FakeWeChat) -> None:
    out, bus = outbound(settings)
    with pytest.raises(DeliveryPermanent, match="48-hour"):
        out.send(reply("迟到的回复", hours_ago=49), DeliveryProgress(0, lambda n: None))
    assert fake.sent == []
    bus.close()


def test_media_is_downloaded_raw_and_its_errors_are_classified(settings: Settings, fake: FakeWeChat) -> None:
    api, _ = client(settings)
    request_close(api)
    voice = b"#!AMR\n" + bytes(range(200))
    fake.add_media("VOICE-1", voice, app=wp.APPID)
    media = api.media(APP, "VOICE-1", max_bytes=1024)
    assert (media.content, media.content_type) == (voice, "audio/amr")
    with pytest.raises(PlatformPermanent) as expired:
        api.media(APP, "VOICE-GONE", max_bytes=1024)
    assert expired.value.errcode == 40007
    with pytest.raises(PlatformPermanent, match="larger than 100 bytes"):
        api.media(APP, "VOICE-1", max_bytes=100)
    fake.fail_next("media_get", -1)
    with pytest.raises(PlatformRetryable):
        api.media(APP, "VOICE-1", max_bytes=1024)
    fake.http_error_next(502, endpoint="media_get")
    with pytest.raises(PlatformRetryable, match="HTTP 502"):
        api.media(APP, "VOICE-1", max_bytes=1024)
    issued = len(fake.token_requests)
    fake.expire_tokens()  # 42001: refreshed once, then the file
    assert api.media(APP, "VOICE-1", max_bytes=1024).content == voice
    assert len(fake.token_requests) == issued + 1
