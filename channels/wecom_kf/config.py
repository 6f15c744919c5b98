"""A WeChat Customer Service account as configured, its credentials, and who a conversation's peer is."""

from __future__ import annotations

from pydantic import Field, SecretStr

from channels.base import Account, Accounts, find
from channels.wechat_api import AppCredentials
from channels.wechat_guard import AesKey, CallbackKeys
from models.settings import Section, Settings

CHANNEL = "wecom_kf"


class WeComKfAccount(Account):
    """WeChat Customer Service (微信客服) of one corp: every 客服账号 (open_kfid) it has is served.
    ``name``: /v1/wecom-kf/{name}."""

    corpid: str
    secret: SecretStr  # the 微信客服 Secret
    token: SecretStr  # callback Token
    aes_key: AesKey  # callback EncodingAESKey
    # Hand-off: to this servicer (state 3, 由人工接待) when set, otherwise into the queue pool (state 2).
    servicer_userid: str | None = None
    handoff_on_fallback: bool = True  # the model could not answer (its fallback reply) → hand off as well


class WeComKfSettings(Section):
    wecom_kf_accounts: Accounts[WeComKfAccount] = Field(default_factory=list)  # JSON list in KEFU_WECOM_KF_ACCOUNTS


def account(settings: Settings, name: str) -> WeComKfAccount | None:
    return find(settings.section(WeComKfSettings).wecom_kf_accounts, name)


def credentials(account: WeComKfAccount) -> AppCredentials:
    return AppCredentials("corp", account.corpid, account.secret.get_secret_value())


def media_app(settings: Settings, name: str) -> AppCredentials | None:
    found = account(settings, name)
    return credentials(found) if found is not None else None


def callback_keys(account: WeComKfAccount) -> CallbackKeys:
    return CallbackKeys(f"kf:{account.name}", account.token.get_secret_value(), account.aes_key.get_secret_value(),
                        account.corpid, corp=True)


def peer(open_kfid: str, external_userid: str) -> str:
    """A conversation's peer: the customer *of one* 客服账号 (the same person may write to several)."""
    return f"{open_kfid}/{external_userid}"


def split_peer(value: str) -> tuple[str, str]:
    open_kfid, _, external_userid = value.partition("/")
    return open_kfid, external_userid
