"""Pure parts of the WeChat protocol: signatures, XML guard, AES envelope, UTF-8 splitting."""

from __future__ import annotations

import base64

import pytest

from channels import wechat_protocol as wx
from channels.base import RequestRejected

KEY = base64.b64encode(bytes(range(32))).decode()[:-1]


def test_signature_matches_the_platform_documentation_example() -> None:
    # developers.weixin.qq.com message-push guide: Token AAAAA, timestamp 1714036504, nonce 1514711492
    assert wx.signature("AAAAA", "1714036504", "1514711492") == "f464b24fc39322e44b38aa78f5edd27bd1441696"


def test_require_signature_and_freshness() -> None:
    wx.require_signature("abc", "abc")
    for given in (None, "", "abd"):
        with pytest.raises(RequestRejected) as exc:
            wx.require_signature("abc", given)
        assert exc.value.status == 403
    assert wx.require_fresh("1000", now=1200, window_s=300) == 1000
    for ts in ("699", "1301", "", "12a", "١٢٣"):
        with pytest.raises(RequestRejected) as exc:
            wx.require_fresh(ts, now=1000, window_s=300)
        assert exc.value.status == 403


def test_xml_with_a_dtd_is_refused_before_parsing() -> None:
    with pytest.raises(RequestRejected, match="DOCTYPE"):
        wx.parse_xml(b'<!DOCTYPE x [<!ENTITY a "b">]><xml><A>&a;</A></xml>')
    with pytest.raises(RequestRejected, match="DOCTYPE"):
        wx.parse_xml(b'<xml><!ENTITY a "b"></xml>')
    with pytest.raises(RequestRejected) as exc:
        wx.parse_xml(b"<notxml>1</notxml>")
    assert exc.value.code == "malformed_xml"
    assert wx.parse_xml("<xml><A><![CDATA[你好]]></A></xml>".encode()) == {"A": "你好"}


def test_envelope_round_trip_and_every_failure_looks_the_same() -> None:
    key = wx.aes_key(KEY)
    envelope = wx.encrypt_envelope("tok", key, "wxapp", "<xml><A>1</A></xml>", "n1", "100")
    encrypted = wx.parse_xml(envelope.encode())["Encrypt"]
    assert wx.decrypt(key, "wxapp", encrypted) == b"<xml><A>1</A></xml>"
    other = wx.aes_key("B" * 43)
    failures = []
    for k, appid, blob in ((other, "wxapp", encrypted), (key, "wxother", encrypted),
                           (key, "wxapp", encrypted[:-4] + "AAA="), (key, "wxapp", "not base64!")):
        with pytest.raises(RequestRejected) as exc:
            wx.decrypt(k, appid, blob)
        failures.append((exc.value.status, exc.value.message))
    assert set(failures) == {(400, "the message could not be decrypted")}
    with pytest.raises(ValueError, match="43-character"):
        wx.aes_key("short")


def test_split_never_cuts_a_character_and_respects_the_byte_limit() -> None:
    text = ("你好😀" * 400) + "end"
    parts = wx.split_utf8(text, limit=2048, max_parts=None)
    assert all(len(p.encode()) <= 2048 for p in parts)
    assert "".join(parts) == text
    assert wx.split_utf8("短消息") == ["短消息"]


def test_split_prefers_sentence_ends() -> None:
    sentence = "这是一个完整的句子。"  # 30 bytes
    parts = wx.split_utf8(sentence * 100, limit=200, max_parts=None)
    assert all(p.endswith("。") for p in parts)
    assert all(len(p.encode()) <= 200 for p in parts)


def test_split_caps_the_number_of_messages() -> None:
    parts = wx.split_utf8("字" * 5000, limit=2048, max_parts=5)  # 15,000 bytes would need 8 messages
    assert len(parts) == 5
    assert all(len(p.encode()) <= 2048 for p in parts)
    assert parts[-1].endswith("…")


def test_passive_reply_escapes_cdata() -> None:
    xml = wx.text_reply_xml("o1", "gh1", "a]]>b", 1)
    assert wx.parse_xml(xml.encode())["Content"] == "a]]>b"
