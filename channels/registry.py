"""Every channel Kefu has, by name, imported only when first asked for (kombu's transport registry style).

A new channel is its module (with ``descriptor = Channel(...)``), its fake, and one line here.
The gateway mounts every channel's routes; a worker imports only the channels it answers or sends for.
"""

from __future__ import annotations

import importlib
from functools import cache

from channels.base import Channel
from channels.errors import DeliveryPermanent
from models.settings import Settings

CHANNELS: dict[str, str] = {
    "web": "channels.web:descriptor",
    "wechat_mp": "channels.wechat_mp:descriptor",
    "wecom": "channels.wecom:descriptor",
    "wecom_kf": "channels.wecom_kf:descriptor",
    "phone": "channels.telephony:descriptor",
    "webhook": "channels.webhook:descriptor",
    "api": "channels.api:descriptor",
}


class UnknownChannel(DeliveryPermanent, LookupError):
    """No channel is registered under this name (a row written by a newer or differently configured Kefu)."""


@cache
def channel(name: str) -> Channel:
    try:
        target = CHANNELS[name]
    except KeyError:
        raise UnknownChannel(f"no channel is registered as {name!r} (known: {', '.join(CHANNELS)})") from None
    module_name, _, attribute = target.partition(":")
    found = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(found, Channel) or found.name != name:
        raise TypeError(f"{target} is not the Channel descriptor of {name!r}")
    return found


def channels() -> list[Channel]:
    return [channel(name) for name in CHANNELS]


def check(settings: Settings) -> None:
    """Read every channel's settings section now, so a bad one stops the process at start-up (ConfigError)."""
    for found in channels():
        if found.section is not None:
            found.settings(settings)
