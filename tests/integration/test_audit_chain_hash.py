"""PostgreSQL's kefu_audit_hash() and Python's models.audit_chain.row_hash agree on awkward values, whatever
the session's time zone and date style: `kefu audit verify` recomputes what the trigger computed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, text

from models.audit_chain import GENESIS, canonical, row_hash
from models.infra.db import make_engine
from models.infra.migrate import upgrade
from models.settings import Settings
from tests import services

SHANGHAI = timezone(timedelta(hours=8))
ROWS = [
    (GENESIS, 1, 0, 1, datetime(2026, 12, 2, 12, 0, tzinfo=UTC), "received", "web", 1, 2, 3, '{"a": 1}'),
    ("f" * 64, 2**62, 15, 2**40, datetime(2026, 1, 1, 8, 0, 0, 1, tzinfo=SHANGHAI), "x|3:y", "", None, None, None, "{}"),
    ("a" * 64, 7, 3, 9, datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "-", None, 0, -1, None,
     '{"城市": "上海", "emoji": "😀", "s": "a|b\\nc", "n": [1.50, 1e3, null]}'),
    ("b" * 64, 8, 1, 1, datetime(2026, 6, 1, tzinfo=timezone(timedelta(hours=-9, minutes=-30))), "kind\nwith newline",
     "wecom-kf", 2**31, 2**31 + 1, 2**33, '  {"spaces" :  true }  '),
]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    services.ensure_postgres()
    name, url = services.create_database()
    settings = Settings(data_dir=tmp_path_factory.mktemp("hash"), database_url=url)
    engine = make_engine(settings)
    try:
        upgrade(settings)
        yield engine
    finally:
        engine.dispose()
        services.drop_database(name)


@pytest.mark.parametrize("zone, style", [("UTC", "ISO, MDY"), ("Asia/Shanghai", "SQL, DMY"),
                                         ("America/St_Johns", "German")])
@pytest.mark.parametrize("values", ROWS, ids=range(len(ROWS)))
def test_the_database_and_python_hash_the_same_text(engine: Engine, zone: str, style: str, values: tuple[Any, ...]) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"SET LOCAL TimeZone = '{zone}'"))
        conn.execute(text(f"SET LOCAL DateStyle = '{style}'"))
        in_db = conn.execute(text(
            "SELECT kefu_audit_hash(:prev, :id, :chain, :seq, :at, :kind, :channel, :conv, :inbound, :reply, "
            "CAST(:detail AS json)::text)"),
            dict(zip(("prev", "id", "chain", "seq", "at", "kind", "channel", "conv", "inbound", "reply", "detail"),
                     values, strict=True))).scalar_one()
    assert in_db == row_hash(*values)


def test_the_v1_text_is_frozen() -> None:
    """Changing this text would make every stored hash fail to verify: a new format needs a new version."""
    assert canonical(*ROWS[1]) == (
        f"v1|64:{'f' * 64}|19:4611686018427387904|2:15|13:1099511627776|27:2026-01-01T00:00:00.000001Z|5:x|3:y|0:"
        "|-|-|-|2:{}")
    assert row_hash(*ROWS[0]) == "5a3224fc6fd7e853b0fba250052f5f786bc06399b2fc48024f8c5e9a9af9bd12"
