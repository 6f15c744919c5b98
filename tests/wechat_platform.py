"""The WeChat platform's side, for tests: Kefu's own fake under the short names the tests use (``wp.…``).

The sample accounts and their settings entries are ``channels/wechat_fake.py``'s; signing,
encrypting and reading passive replies are ``channels/wechat_fake_platform.py``'s; :func:`post` delivers a
callback to a gateway as the platform does.
"""

from __future__ import annotations

import httpx

from channels.wechat_fake import (
    AES_KEY,
    AGENTID,
    APP_SECRET,
    APPID,
    CORPID,
    KF_SECRET,
    OFFICIAL_ID,
    OPEN_KFID,
    SECRET,
    TOKEN,
)
from channels.wechat_fake import sample_account as account
from channels.wechat_fake import sample_kf_account as kf_account
from channels.wechat_fake import sample_wecom_app as wecom_app
from channels.wechat_fake_platform import (
    Callback,
    callback,
    corp_callback,
    corp_url_verification,
    event_xml,
    kf_event_xml,
    read_corp_passive_reply,
    read_passive_reply,
    sign,
    text_xml,
    wecom_text_xml,
)

__all__ = ["AES_KEY", "AGENTID", "APPID", "APP_SECRET", "CORPID", "KF_SECRET", "OFFICIAL_ID", "OPEN_KFID", "SECRET",
           "TOKEN", "Callback", "account", "callback", "corp_callback", "corp_url_verification", "event_xml",
           "kf_account", "kf_event_xml", "post", "read_corp_passive_reply", "read_passive_reply", "sign",
           "text_xml", "wecom_app", "wecom_text_xml"]


def post(base_url: str, path: str, cb: Callback) -> httpx.Response:
    """POST a callback (its signed query string and XML body) to ``path`` of the gateway at ``base_url``."""
    with httpx.Client(base_url=base_url, timeout=10) as http:
        return http.post(path, params=cb.params, content=cb.body, headers={"Content-Type": "text/xml"})
