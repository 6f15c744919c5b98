"""The loopback WeChat / WeCom API fake speaks the real protocol over a real socket."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from channels.wechat_fake import ENDPOINTS, KF_USED_MSGID, FakeWeChat

APPID, SECRET = "wx-app", "mp-secret"
CORPID, CORPSECRET, AGENTID = "ww-corp", "corp-secret", 1000002
KFID, USER = "wk-kf-1", "wm-user-1"


@pytest.fixture
def fake() -> Iterator[FakeWeChat]:
    with FakeWeChat() as server:
        server.add_mp_app(APPID, SECRET)
        server.add_corp_app(CORPID, CORPSECRET, agentid=AGENTID)
        yield server


@pytest.fixture
def http(fake: FakeWeChat) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.api_base, timeout=2.0) as client:
        yield client


def mp_token(http: httpx.Client) -> str:
    r = http.get("token", params={"grant_type": "client_credential", "appid": APPID, "secret": SECRET})
    return str(r.json()["access_token"])


def stable(http: httpx.Client, force: bool = False) -> dict[str, Any]:
    body = {"grant_type": "client_credential", "appid": APPID, "secret": SECRET, "force_refresh": force}
    result: dict[str, Any] = http.post("stable_token", json=body).json()
    return result


def corp_token(http: httpx.Client) -> str:
    return str(http.get("gettoken", params={"corpid": CORPID, "corpsecret": CORPSECRET}).json()["access_token"])


def custom_send(http: httpx.Client, token: str, content: str = "hello") -> dict[str, Any]:
    body = {"touser": "openid-1", "msgtype": "text", "text": {"content": content}}
    result: dict[str, Any] = http.post("message/custom/send", params={"access_token": token}, json=body).json()
    return result


def kf(http: httpx.Client, token: str, path: str, /, **body: Any) -> dict[str, Any]:
    result: dict[str, Any] = http.post(f"kf/{path}", params={"access_token": token}, json=body).json()
    return result


def test_serves_on_loopback_and_stops_cleanly() -> None:
    server = FakeWeChat().start()
    assert server.base_url.startswith("http://127.0.0.1:") and server.api_base.endswith("/cgi-bin/")
    with httpx.Client(timeout=2.0) as client:  # an idle keep-alive connection must not block stop()
        assert client.get(f"{server.base_url}/cgi-bin/nowhere").status_code == 404
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 2
    server.stop()  # idempotent


def test_token_issues_a_new_token_each_call_and_revokes_the_previous(fake: FakeWeChat, http: httpx.Client) -> None:
    r = http.get("token", params={"grant_type": "client_credential", "appid": APPID, "secret": SECRET})
    assert r.status_code == 200
    first = r.json()
    assert first == {"access_token": f"MP_ACCESS_TOKEN-000001-{APPID}", "expires_in": 7200}
    second = mp_token(http)
    assert second != first["access_token"]
    stale = custom_send(http, first["access_token"])
    assert stale["errcode"] == 40001 and stale["errmsg"].startswith("invalid credential")
    assert custom_send(http, second) == {"errcode": 0, "errmsg": "ok"}
    assert fake.token_requests == [("token", APPID), ("token", APPID)]


def test_token_overlap_keeps_the_replaced_token_alive_for_a_while(http: httpx.Client, fake: FakeWeChat) -> None:
    fake.token_overlap = 300
    old = mp_token(http)
    mp_token(http)
    assert custom_send(http, old)["errcode"] == 0
    fake.advance_clock(301)
    assert custom_send(http, old)["errcode"] == 40001


def test_stable_token_is_stable_until_forced_and_isolated_from_token(fake: FakeWeChat, http: httpx.Client) -> None:
    a, b = stable(http), stable(http)
    assert a["access_token"] == b["access_token"] and a["expires_in"] == 7200
    plain = mp_token(http)  # isolated: does not revoke the stable token
    assert custom_send(http, a["access_token"])["errcode"] == 0
    forced = stable(http, force=True)
    assert forced["access_token"] != a["access_token"]
    assert custom_send(http, a["access_token"])["errcode"] == 40001
    assert custom_send(http, forced["access_token"])["errcode"] == 0
    assert custom_send(http, plain)["errcode"] == 0
    fake.advance_clock(100)
    assert stable(http)["expires_in"] == 7100
    assert [k for k, _ in fake.token_requests] == ["stable_token", "stable_token", "token", "stable_token", "stable_token"]


def test_token_credentials_are_checked(http: httpx.Client, fake: FakeWeChat) -> None:
    wrong_secret = http.get("token", params={"grant_type": "client_credential", "appid": APPID, "secret": "x"})
    assert wrong_secret.status_code == 200 and wrong_secret.json()["errcode"] == 40125
    wrong_app = http.post("stable_token", json={"grant_type": "client_credential", "appid": "nope", "secret": SECRET})
    assert wrong_app.json()["errcode"] == 40013
    assert http.get("token", params={"appid": APPID, "secret": SECRET}).json()["errcode"] == 40002
    assert http.get("gettoken", params={"corpid": "nope", "corpsecret": CORPSECRET}).json()["errcode"] == 40013
    assert http.get("gettoken", params={"corpid": CORPID, "corpsecret": "x"}).json()["errcode"] == 40001
    assert fake.token_requests == []


def test_expired_and_missing_tokens(fake: FakeWeChat, http: httpx.Client) -> None:
    token = mp_token(http)
    fake.expire_tokens()
    assert custom_send(http, token)["errcode"] == 42001
    fresh = stable(http)["access_token"]
    assert custom_send(http, fresh)["errcode"] == 0
    fake.advance_clock(7200)
    assert custom_send(http, fresh)["errcode"] == 42001
    assert stable(http)["access_token"] != fresh
    assert custom_send(http, "")["errcode"] == 41001
    assert custom_send(http, "forged")["errcode"] == 40001


def test_short_ttl_expires_by_the_clock() -> None:
    with FakeWeChat(token_ttl=0.05) as server, httpx.Client(base_url=server.api_base, timeout=2.0) as http:
        server.add_mp_app(APPID, SECRET)
        token = mp_token(http)
        time.sleep(0.06)
        assert custom_send(http, token)["errcode"] == 42001


def test_custom_send_records_and_enforces_the_2048_byte_limit(fake: FakeWeChat, http: httpx.Client) -> None:
    token = mp_token(http)
    assert custom_send(http, token, "你好")["errcode"] == 0
    assert custom_send(http, token, "字" * 682)["errcode"] == 0  # 2046 bytes
    too_long = custom_send(http, token, "字" * 683)  # 2049 bytes, only 683 characters
    assert too_long["errcode"] == 45002 and "content size out of limit" in too_long["errmsg"]
    assert [s["content"] for s in fake.sent] == ["你好", "字" * 682]
    assert fake.sent[0]["endpoint"] == "custom_send" and fake.sent[0]["touser"] == "openid-1"
    call = fake.calls[-1]
    assert call["method"] == "POST" and call["path"] == "/cgi-bin/message/custom/send"
    assert call["endpoint"] == "custom_send" and call["json"]["text"]["content"] == "字" * 683


def test_fail_next_counts_down(fake: FakeWeChat, http: httpx.Client) -> None:
    token = mp_token(http)
    fake.fail_next("custom_send", 45015, times=2)
    fake.fail_next("custom_send", -1)
    codes = [custom_send(http, token)["errcode"] for _ in range(4)]
    assert codes == [45015, 45015, -1, 0]
    assert len(fake.sent) == 1
    fake.fail_next("token", 45009)
    quota = http.get("token", params={"grant_type": "client_credential", "appid": APPID, "secret": SECRET}).json()
    assert quota["errcode"] == 45009 and quota["errmsg"].startswith("reach max api daily quota limit")
    assert fake.token_requests == [("token", APPID)]
    with pytest.raises(ValueError):
        fake.fail_next("nope", 40001)
    assert "kf_send_msg" in ENDPOINTS and "service_state_trans" in ENDPOINTS


def test_http_error_next(fake: FakeWeChat, http: httpx.Client) -> None:
    token = mp_token(http)
    fake.http_error_next(502, times=2)
    assert [http.post("message/custom/send", params={"access_token": token}, json={}).status_code for _ in range(2)] == [
        502,
        502,
    ]
    fake.http_error_next(503, endpoint="gettoken")
    assert custom_send(http, token)["errcode"] == 0  # another endpoint is not affected
    assert http.get("gettoken", params={"corpid": CORPID, "corpsecret": CORPSECRET}).status_code == 503
    assert len(fake.calls) == 5


def test_wecom_gettoken_and_message_send(fake: FakeWeChat, http: httpx.Client) -> None:
    r = http.get("gettoken", params={"corpid": CORPID, "corpsecret": CORPSECRET}).json()
    assert r["errcode"] == 0 and r["errmsg"] == "ok" and r["expires_in"] == 7200
    assert corp_token(http) == r["access_token"]  # same token while valid
    body = {"touser": "zhangsan", "msgtype": "text", "agentid": AGENTID, "text": {"content": "字" * 700}}
    sent = http.post("message/send", params={"access_token": r["access_token"]}, json=body).json()
    assert sent["errcode"] == 0 and sent["invaliduser"] == "" and sent["msgid"] == "msgid-000001"
    record = fake.sent[0]
    assert record["endpoint"] == "message_send" and record["agentid"] == AGENTID
    assert record["content"] == "字" * 682  # truncated to 2048 bytes, as WeCom documents
    wrong_agent = http.post("message/send", params={"access_token": r["access_token"]}, json={**body, "agentid": 1})
    assert wrong_agent.json()["errcode"] == 40056
    mp = mp_token(http)  # an MP token is not a WeCom token
    assert http.post("message/send", params={"access_token": mp}, json=body).json()["errcode"] == 40014
    assert fake.token_requests == [("gettoken", CORPID), ("gettoken", CORPID), ("token", APPID)]


def test_kf_sync_msg_pages_with_a_resumable_cursor(fake: FakeWeChat, http: httpx.Client) -> None:
    token = corp_token(http)
    queued = fake.queue_kf_messages(KFID, [{"external_userid": USER, "content": f"m{i}"} for i in range(25)])
    fake.queue_kf_messages("wk-other", [{"content": "elsewhere"}])
    first, last = queued[0]["msgid"], queued[24]["msgid"]
    assert first.startswith("kfmsg-") and first.endswith("-000001") and last == first[:-6] + "000025"
    assert queued[0]["origin"] == 3
    fake.kf_page_size = 20
    first = kf(http, token, "sync_msg", token="callback-token", open_kfid=KFID)
    assert first["errcode"] == 0 and first["has_more"] == 1 and len(first["msg_list"]) == 20
    msg = first["msg_list"][0]
    assert msg == {
        "msgid": queued[0]["msgid"],
        "open_kfid": KFID,
        "external_userid": USER,
        "send_time": queued[0]["send_time"],
        "origin": 3,
        "msgtype": "text",
        "text": {"content": "m0"},
    }
    second = kf(http, token, "sync_msg", cursor=first["next_cursor"], open_kfid=KFID)
    assert second["has_more"] == 0 and [m["text"]["content"] for m in second["msg_list"]] == [f"m{i}" for i in range(20, 25)]
    again = kf(http, token, "sync_msg", cursor=first["next_cursor"], open_kfid=KFID, limit=3)
    assert [m["text"]["content"] for m in again["msg_list"]] == ["m20", "m21", "m22"] and again["has_more"] == 1
    third = kf(http, token, "sync_msg", cursor=second["next_cursor"], open_kfid=KFID)
    assert third["msg_list"] == [] and third["has_more"] == 0
    fake.queue_kf_messages(KFID, [{"content": "late"}])
    late = kf(http, token, "sync_msg", cursor=third["next_cursor"], open_kfid=KFID)
    assert [m["text"]["content"] for m in late["msg_list"]] == ["late"]
    assert fake.kf_sync_tokens[:2] == ["callback-token", ""]
    assert kf(http, token, "sync_msg", cursor="garbage!", open_kfid=KFID)["errcode"] == 40058
    assert kf(http, token, "sync_msg", limit=1001)["errcode"] == 40058
    everything = kf(http, token, "sync_msg", limit=1000)  # no open_kfid: every account's log
    assert len(everything["msg_list"]) == 20 and everything["has_more"] == 1


def test_kf_send_msg_and_service_state(fake: FakeWeChat, http: httpx.Client) -> None:
    token = corp_token(http)
    body = {"touser": USER, "open_kfid": KFID, "msgtype": "text", "text": {"content": "您好"}}
    first = kf(http, token, "send_msg", **body)
    assert first == {"errcode": 0, "errmsg": "ok", "msgid": "kfsend-000001"}
    assert kf(http, token, "send_msg", **body, msgid="reply-42")["msgid"] == "reply-42"
    assert kf(http, token, "send_msg", **{**body, "text": {"content": "x" * 2049}})["errcode"] == 45002
    assert [(s["endpoint"], s["open_kfid"], s["touser"], s["content"]) for s in fake.sent] == [
        ("kf_send_msg", KFID, USER, "您好")
    ] * 2
    state = kf(http, token, "service_state/get", open_kfid=KFID, external_userid=USER)
    assert state == {"errcode": 0, "errmsg": "ok", "service_state": 0}
    moved = kf(
        http, token, "service_state/trans", open_kfid=KFID, external_userid=USER, service_state=3, servicer_userid="agent-li"
    )
    assert moved == {"errcode": 0, "errmsg": "ok", "msg_code": "msgcode-000001"}
    assert fake.kf_service_state[(KFID, USER)] == 3
    state = kf(http, token, "service_state/get", open_kfid=KFID, external_userid=USER)
    assert state["service_state"] == 3 and state["servicer_userid"] == "agent-li"
    assert kf(http, token, "send_msg", **body)["errcode"] == 95018  # a human has the conversation
    back = kf(http, token, "service_state/trans", open_kfid=KFID, external_userid=USER, service_state=1)
    assert back == {"errcode": 0, "errmsg": "ok"}
    assert kf(http, token, "send_msg", **body)["errcode"] == 0
    bad = kf(http, token, "service_state/trans", open_kfid=KFID, external_userid=USER, service_state=3)
    assert bad["errcode"] == 40058
    fake.fail_next("service_state_trans", 95018)
    assert kf(http, token, "service_state/trans", open_kfid=KFID, external_userid=USER, service_state=4)["errcode"] == 95018


def test_latency_and_wait_for_sent(fake: FakeWeChat, http: httpx.Client) -> None:
    token = mp_token(http)
    fake.set_latency(0.2)
    started = time.monotonic()
    assert custom_send(http, token)["errcode"] == 0
    assert time.monotonic() - started >= 0.2
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=fake.api_base, timeout=0.05) as impatient:
        custom_send(impatient, token)
    fake.set_latency(0)
    worker = threading.Thread(target=custom_send, args=(http, token, "later"))
    worker.start()
    sent = fake.wait_for_sent(3, timeout=2)
    worker.join()
    assert sent[-1]["content"] in {"later", "hello"}
    with pytest.raises(TimeoutError):
        fake.wait_for_sent(10, timeout=0.05)


def test_media_get_serves_the_raw_file_to_its_own_app_and_errcode_json_otherwise(
        fake: FakeWeChat, http: httpx.Client) -> None:
    fake.add_media("MEDIA-MP-1", b"#!AMR\n\x3c" + bytes(31), app=APPID)
    fake.add_media("MEDIA-WW-1", b"#!AMR\n\x3c" + bytes(31), app=CORPID)
    mp, corp = mp_token(http), corp_token(http)
    ok = http.get("media/get", params={"access_token": mp, "media_id": "MEDIA-MP-1"})
    assert (ok.status_code, ok.headers["content-type"], ok.content[:6]) == (200, "audio/amr", b"#!AMR\n")
    assert ok.headers["content-disposition"] == 'attachment; filename="MEDIA-MP-1.amr"'
    assert http.get("media/get", params={"access_token": corp, "media_id": "MEDIA-WW-1"}).content.startswith(b"#!AMR")
    for token, media_id, errcode in [(mp, "MEDIA-WW-1", 40007), (corp, "nope", 40007), ("forged", "MEDIA-MP-1", 40001),
                                     ("", "MEDIA-MP-1", 41001)]:
        answer = http.get("media/get", params={"access_token": token, "media_id": media_id})
        assert answer.headers["content-type"].startswith("application/json") and answer.json()["errcode"] == errcode
    fake.expire_tokens()
    assert http.get("media/get", params={"access_token": corp, "media_id": "MEDIA-WW-1"}).json()["errcode"] == 42001
    fake.fail_next("media_get", -1)
    assert http.get("media/get", params={"access_token": "x", "media_id": "y"}).json()["errcode"] == -1
    assert [c["endpoint"] for c in fake.calls].count("media_get") == 8


def test_kf_send_msg_msgid_is_unique_per_kf_account_and_well_formed(fake: FakeWeChat, http: httpx.Client) -> None:
    token = corp_token(http)
    body = {"touser": USER, "open_kfid": KFID, "msgtype": "text", "text": {"content": "您好"}, "msgid": "kefu-1-0"}
    assert kf(http, token, "send_msg", **body)["errcode"] == 0
    again = kf(http, token, "send_msg", **body)  # a resend after a crash: the platform already has it
    assert again["errcode"] == KF_USED_MSGID and "msgid" in again["errmsg"]
    assert kf(http, token, "send_msg", **{**body, "open_kfid": "wkOtherKf001"})["errcode"] == 0  # unique per account
    for bad in ["x" * 33, "中文", "kefu 1", "kefu.1"]:
        assert kf(http, token, "send_msg", **{**body, "msgid": bad})["errcode"] == 40058
    assert [s["open_kfid"] for s in fake.sent] == [KFID, "wkOtherKf001"]  # nothing else went out
