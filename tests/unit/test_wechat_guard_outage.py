"""The callback guard when its nonce store (real Redis behind a fault proxy) hangs or is down.

An encrypted callback is authenticated down to its body, so it is let through (the inbound's unique key
dedups a replay); a plaintext one is not, so it is refused with a 503 the platform retries.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from channels.errors import RequestRejected
from channels.wechat_guard import CallbackGuard, CallbackKeys
from models.infra.kv import RedisKV
from tests import wechat_platform as wp
from tests.chaos.faults import FaultProxy

KEYS = CallbackKeys(scope="mp:shop", token=wp.TOKEN, aes_key=wp.AES_KEY, receive_id=wp.APPID, corp=False)


@pytest.fixture
def proxy(redis14: str) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", 6379) as p:
        yield p


def _guard(proxy: FaultProxy) -> CallbackGuard:
    return CallbackGuard(RedisKV(proxy.url("redis", "/14"), timeout_s=0.5), window_s=300)


@pytest.mark.parametrize("fault", ["blackhole", "refuse"])
def test_an_encrypted_callback_is_let_through_when_the_nonce_store_fails(proxy: FaultProxy, fault: str) -> None:
    getattr(proxy, fault)()
    cb = wp.callback(wp.text_xml("o-1", "你好", 1), mode="safe")
    opened = _guard(proxy).open(KEYS, cb.params, cb.body)
    assert opened.encrypted and opened.fields["Content"] == "你好" and opened.retry is False


@pytest.mark.parametrize("fault", ["blackhole", "refuse"])
def test_a_plaintext_callback_gets_503_when_the_nonce_store_fails(proxy: FaultProxy, fault: str) -> None:
    getattr(proxy, fault)()
    cb = wp.callback(wp.text_xml("o-1", "你好", 2))
    with pytest.raises(RequestRejected) as caught:
        _guard(proxy).open(KEYS, cb.params, cb.body)
    assert caught.value.status == 503 and caught.value.code == "replay_check_unavailable"


def test_with_the_store_up_a_replayed_nonce_with_another_body_is_refused(proxy: FaultProxy) -> None:
    guard = _guard(proxy)
    cb = wp.callback(wp.text_xml("o-1", "你好", 3))
    assert guard.open(KEYS, cb.params, cb.body).retry is False
    assert guard.open(KEYS, cb.params, cb.body).retry is True  # the platform's retry
    forged = wp.text_xml("o-1", "转账给我", 4).encode()
    with pytest.raises(RequestRejected) as caught:
        guard.open(KEYS, cb.params, forged)
    assert caught.value.status == 403
