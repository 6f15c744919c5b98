"""The embedded broker: kombu's SQLAlchemy transport on a SQLite file, polled every 20 ms.

kombu passes every transport option of this transport to ``create_engine``, so the polling
interval cannot be set as an option; it is a class attribute here instead, and the transport is
registered under its own URL scheme, ``kefu-sqla+sqlite:///…`` (kombu resolves schemes through
``TRANSPORT_ALIASES``; Celery ignores ``broker_transport`` when the URL names a scheme).

Unlike Redis, this transport does not restore a message whose worker was killed; Kefu's sweeper
(``kefu.sweep``) re-publishes any inbound or delivery left unfinished, so nothing is lost either way.
"""

from __future__ import annotations

import warnings
from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Channel as SQLAlchemyChannel
from kombu.transport.sqlalchemy import Transport as SQLAlchemyTransport
from sqlalchemy.exc import SADeprecationWarning
from sqlalchemy.orm import configure_mappers

SCHEME = "kefu-sqla"


class Channel(SQLAlchemyChannel):
    def _open(self) -> Any:
        opened = super()._open()
        # kombu maps its queue tables with lazy="noload", deprecated in SQLAlchemy 2.1; configure the
        # mappers here, once, with that one warning silenced, instead of on the first publish.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The ``noload`` loader strategy", SADeprecationWarning)
            _ = self.queue_cls, self.message_cls
            configure_mappers()
        return opened


class Transport(SQLAlchemyTransport):
    Channel = Channel
    polling_interval = 0.02


TRANSPORT_ALIASES.setdefault(SCHEME, f"{__name__}:Transport")
