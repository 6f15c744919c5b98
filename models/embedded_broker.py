"""The embedded broker: kombu's SQLAlchemy transport on a SQLite file, polled every 20 ms.

kombu passes every transport option of this transport to ``create_engine``, so the polling
interval cannot be set as an option; it is a class attribute here instead, and the transport is
registered under its own URL scheme, ``kefu-sqla+sqlite:///…`` (kombu resolves schemes through
``TRANSPORT_ALIASES``; Celery ignores ``broker_transport`` when the URL names a scheme). Unlike Redis, this
transport does not restore a message whose worker was killed; Kefu's sweeper (``kefu.sweep``)
re-publishes any inbound or delivery left unfinished, so nothing is lost either way.
"""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Transport as SQLAlchemyTransport

SCHEME = "kefu-sqla"


class Transport(SQLAlchemyTransport):
    polling_interval = 0.02


TRANSPORT_ALIASES.setdefault(SCHEME, f"{__name__}:Transport")
