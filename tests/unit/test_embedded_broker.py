"""The embedded broker: fast polling through its own URL scheme, and purging consumed messages."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

from models.infra.embedded_broker import Transport, purge_consumed
from models.infra.queues import make_celery
from models.settings import Settings


def test_the_embedded_url_selects_the_fast_polling_transport(tmp_path: Path) -> None:
    app = make_celery(Settings(data_dir=tmp_path))
    with app.connection_for_read() as conn:
        assert isinstance(conn.transport, Transport)
        assert conn.transport.polling_interval <= 0.05


def test_purge_removes_only_long_consumed_messages(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    app = make_celery(settings)
    for n in range(4):
        app.send_task("kefu.deliver", args=(n,), queue="io")
    db = settings.embedded_broker_file
    old = (datetime.now() - timedelta(hours=2)).isoformat(sep=" ")
    with sqlite3.connect(db) as conn:
        ids = [row[0] for row in conn.execute("SELECT id FROM kombu_message ORDER BY id")]
        conn.execute("UPDATE kombu_message SET visible = 0, timestamp = ? WHERE id IN (?, ?)", (old, ids[0], ids[1]))
        conn.execute("UPDATE kombu_message SET visible = 0 WHERE id = ?", (ids[2],))  # consumed just now
    assert purge_consumed(db, older_than_s=600) == 2
    with sqlite3.connect(db) as conn:
        left = conn.execute("SELECT id, visible FROM kombu_message ORDER BY id").fetchall()
    conn.close()
    assert left == [(ids[2], 0), (ids[3], 1)]  # in flight and waiting messages stay
    assert purge_consumed(tmp_path / "missing.sqlite", 600) == 0
