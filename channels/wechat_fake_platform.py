"""The fake platform's other half: the callbacks WeChat and WeCom push to Kefu, and how they read its answer.

Pure functions that build what the platform POSTs (signed, and encrypted in safe mode or always for
WeCom) to an account's callback URL, and read Kefu's passive reply back. With the API server in
``channels/wechat_fake.py`` they let the tests and an operator (``kefu fake wechat --push URL``) play
the platform. Built on wechatpy's own crypto (the platform's envelope), independent of Kefu's channel
code, so a mistake there cannot cancel itself out here. The defaults are the sample accounts of
``channels/wechat_fake.py``. Raises wechatpy's ``InvalidSignatureException`` when an encrypted
answer does not verify.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass

import xmltodict
from wechatpy.crypto import WeChatCrypto
from wechatpy.enterprise.crypto import PrpCrypto as WeComPrpCrypto
from wechatpy.enterprise.crypto import WeChatCrypto as WeComCrypto

from channels.wechat_fake import AES_KEY, AGENTID, APPID, CORPID, OFFICIAL_ID, OPEN_KFID, TOKEN


def sign(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()  # noqa: S324 - the platform signs with SHA-1


def text_xml(openid: str, content: str, msgid: int, kind: str = "text", extra: str = "") -> str:
    """A customer's message to the official account (``kind`` other than text: ``extra`` holds its fields)."""
    body = f"<Content><![CDATA[{content}]]></Content>" if kind == "text" else extra
    return (f"<xml><ToUserName><![CDATA[{OFFICIAL_ID}]]></ToUserName><FromUserName><![CDATA[{openid}]]></FromUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[{kind}]]></MsgType>{body}"
            f"<MsgId>{msgid}</MsgId></xml>")


def event_xml(openid: str, event: str) -> str:
    return (f"<xml><ToUserName><![CDATA[{OFFICIAL_ID}]]></ToUserName><FromUserName><![CDATA[{openid}]]></FromUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
            f"<Event><![CDATA[{event}]]></Event></xml>")


@dataclass
class Callback:
    params: dict[str, str]
    body: bytes


def callback(xml: str, *, mode: str = "raw", timestamp: int | None = None, nonce: str | None = None,
             aes_key: str = AES_KEY, appid: str = APPID, token: str = TOKEN) -> Callback:
    ts = str(timestamp if timestamp is not None else int(time.time()))
    nonce = nonce or secrets.token_hex(5)
    params = {"signature": sign(token, ts, nonce), "timestamp": ts, "nonce": nonce, "openid": "o-any"}
    if mode == "raw":
        return Callback(params, xml.encode())
    envelope = xmltodict.parse(WeChatCrypto(token, aes_key, appid).encrypt_message(xml, nonce, ts))["xml"]
    params.update(encrypt_type="aes", msg_signature=envelope["MsgSignature"])
    if mode == "compat":  # compatible mode: plaintext fields next to the ciphertext
        body = xml.replace("</xml>", f"<Encrypt><![CDATA[{envelope['Encrypt']}]]></Encrypt></xml>")
    else:
        body = (f"<xml><ToUserName><![CDATA[{OFFICIAL_ID}]]></ToUserName>"
                f"<Encrypt><![CDATA[{envelope['Encrypt']}]]></Encrypt></xml>")
    return Callback(params, body.encode())


def read_passive_reply(response_text: str, cb: Callback, *, aes_key: str = AES_KEY, appid: str = APPID,
                       token: str = TOKEN) -> str:
    """The Content of Kefu's passive reply, decrypting it as WeChat would in safe mode."""
    xml = response_text
    if cb.params.get("encrypt_type") == "aes":
        envelope = xmltodict.parse(response_text)["xml"]
        xml = WeChatCrypto(token, aes_key, appid).decrypt_message(
            response_text, envelope["MsgSignature"], envelope["TimeStamp"], envelope["Nonce"])
    return str(xmltodict.parse(xml)["xml"]["Content"])


# ---- WeCom (企业微信): self-built app and WeChat Customer Service -------------------------------

def wecom_text_xml(userid: str, content: str, msgid: int, agentid: int = AGENTID, kind: str = "text",
                   extra: str = "") -> str:
    body = f"<Content><![CDATA[{content}]]></Content>" if kind == "text" else extra
    return (f"<xml><ToUserName><![CDATA[{CORPID}]]></ToUserName><FromUserName><![CDATA[{userid}]]></FromUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[{kind}]]></MsgType>{body}"
            f"<MsgId>{msgid}</MsgId><AgentID>{agentid}</AgentID></xml>")


def kf_event_xml(open_kfid: str = OPEN_KFID, sync_token: str = "ENCsynctoken") -> str:  # noqa: S107 - a sample
    """WeChat Customer Service's nudge: new messages wait in ``open_kfid``'s log (``kf/sync_msg`` reads them)."""
    return (f"<xml><ToUserName><![CDATA[{CORPID}]]></ToUserName><CreateTime>{int(time.time())}</CreateTime>"
            f"<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[kf_msg_or_event]]></Event>"
            f"<Token><![CDATA[{sync_token}]]></Token><OpenKfId><![CDATA[{open_kfid}]]></OpenKfId></xml>")


def corp_callback(xml: str, *, timestamp: int | None = None, nonce: str | None = None, aes_key: str = AES_KEY,
                  corpid: str = CORPID, token: str = TOKEN) -> Callback:
    """What WeCom POSTs: the message encrypted for ``corpid``, signed with ``msg_signature`` only."""
    ts = str(timestamp if timestamp is not None else int(time.time()))
    nonce = nonce or secrets.token_hex(5)
    envelope = xmltodict.parse(WeComCrypto(token, aes_key, corpid).encrypt_message(xml, nonce, ts))["xml"]
    params = {"msg_signature": envelope["MsgSignature"], "timestamp": ts, "nonce": nonce}
    body = (f"<xml><ToUserName><![CDATA[{corpid}]]></ToUserName><AgentID><![CDATA[{AGENTID}]]></AgentID>"
            f"<Encrypt><![CDATA[{envelope['Encrypt']}]]></Encrypt></xml>")
    return Callback(params, body.encode())


def corp_url_verification(echo: str, *, aes_key: str = AES_KEY, corpid: str = CORPID, token: str = TOKEN
                          ) -> dict[str, str]:
    """The query of WeCom's URL verification GET: ``echostr`` is encrypted, ``msg_signature`` covers it."""
    ts, nonce = str(int(time.time())), secrets.token_hex(5)
    key = base64.b64decode(aes_key + "=")
    echostr = WeComPrpCrypto(key).encrypt(echo, corpid)
    echostr = echostr.decode() if isinstance(echostr, bytes) else str(echostr)
    return {"msg_signature": sign(token, ts, nonce, echostr), "timestamp": ts, "nonce": nonce, "echostr": echostr}


def read_corp_passive_reply(response_text: str, token: str = TOKEN, aes_key: str = AES_KEY,
                            corpid: str = CORPID) -> str:
    envelope = xmltodict.parse(response_text)["xml"]
    xml = WeComCrypto(token, aes_key, corpid).decrypt_message(
        response_text, envelope["MsgSignature"], envelope["TimeStamp"], envelope["Nonce"])
    return str(xmltodict.parse(xml)["xml"]["Content"])
