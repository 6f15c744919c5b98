"""A WeChat Customer Service account as configured, its credentials, and who a conversation's peer is."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from channels.base import Account, unique_names
from channels.wechat_api import AppCredentials
from channels.wechat_guard import CallbackKeys, valid_aes_key
from models.settings import Section, Settings

CHANNEL = "wecom_kf"


class WeComKfAccount(Account):
    """WeChat Customer Service (微信客服) of one corp: every 客服账号 (open_kfid) it has is served.
    ``name``: /v1/wecom-kf/{name}."""

    corpid: str
    secret: SecretStr  # the 微信客服 Secret
    token: SecretStr  # callback Token
    aes_key: SecretStr  # callback EncodingAESKey
    # Hand-off: to this servicer (state 3, 由人工接待) when set, otherwise into the queue pool (state 2).
    servicer_userid: str | None = None
    handoff_on_fallback: bool = True  # the model could not answer (its fallback reply) → hand off as well

    @field_validator("aes_key")
    @classmethod
    def _aes(cls, value: SecretStr) -> SecretStr:
        valid_aes_key(value.get_secret_value())
        return value


class WeComKfSettings(Section):
    wecom_kf_accounts: list[WeComKfAccount] = Field(default_factory=list)  # JSON list in KEFU_WECOM_KF_ACCOUNTS

    @field_validator("wecom_kf_accounts")
    @classmethod
    def _unique(cls, value: list[WeComKfAccount]) -> list[WeComKfAccount]:
        return unique_names(value)

    def account(self, name: str) -> WeComKfAccount | None:
        return next((a for a in self.wecom_kf_accounts if a.name == name), None)


def account(settings: Settings, name: str) -> WeComKfAccount | None:
    return settings.section(WeComKfSettings).account(name)


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
