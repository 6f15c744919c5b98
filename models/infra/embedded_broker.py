"""The embedded broker: kombu's SQLAlchemy transport on a SQLite file, polled every 20 ms.

kombu passes every transport option of this transport to ``create_engine``, so the polling
interval cannot be set as an option; it is a class attribute here instead, and the transport is
registered under its own URL scheme, ``kefu-sqla+sqlite:///…`` (kombu resolves schemes through
``TRANSPORT_ALIASES``; Celery ignores ``broker_transport`` when the URL names a scheme).

Unlike Redis, this transport does not restore a message whose worker was killed; Kefu's sweeper
(``kefu.sweep``) re-publishes any inbound or delivery left unfinished, so nothing is lost either way.
"""

from __future__ import annotations

import sqlite3
import warnings
from datetime import datetime, timedelta
from pathlib import Path
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


def purge_consumed(database: Path, older_than_s: float) -> int:
    """Delete messages consumed longer ago than ``older_than_s``; returns how many.

    kombu's SQLAlchemy transport marks a delivered message invisible and never deletes it, so the
    queue file grows forever. An invisible message older than the sweeper's requeue window is
    either acknowledged or lost, and a lost one has already been published again by the sweeper.
    """
    if not database.exists():
        return 0
    cutoff = datetime.now() - timedelta(seconds=older_than_s)  # kombu stamps rows with naive local time
    conn = sqlite3.connect(database, timeout=30)
    try:
        with conn:
            cursor = conn.execute(
                "DELETE FROM kombu_message WHERE visible = 0 AND timestamp < ?", (cutoff.isoformat(sep=" "),)
            )
            return cursor.rowcount
    except sqlite3.OperationalError:  # no table yet: nothing was ever published
        return 0
    finally:
        conn.close()


TRANSPORT_ALIASES.setdefault(SCHEME, f"{__name__}:Transport")
