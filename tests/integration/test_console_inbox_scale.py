"""The console's inbox with 100,000 conversations on PostgreSQL: every filter's page is read by walking one of the
``ix_conversation_*`` indexes (no sequential scan of the conversation table, no sort of all of it), on the first
page and behind a cursor, and the keyset pages agree with the full order. What the plan does is checked, not how
long it took (bench figures are in the report)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session, sessionmaker

from channels.console import inbox
from models.infra.db import make_engine, make_session_factory, transaction
from models.infra.migrate import upgrade
from models.settings import Settings
from models.states import Handler
from tests import services

CONVERSATIONS = 100_000

SEED = (
    """INSERT INTO agent (username, display_name, role, password_hash, disabled, status, created_at)
       VALUES ('holder', '值班', 'agent', 'x', false, 'away', now())""",
    # every 50th waiting, every 100th (+1) held by the agent, every 5th answered; times 1 s apart, some equal
    """INSERT INTO conversation (channel, account, peer, created_at, handler, agent_id, handler_since, handoffs,
                                 last_inbound_at, last_reply_at, last_intent)
       SELECT (ARRAY['web','wechat_mp','wecom','wecom_kf','phone'])[1 + g % 5], 'default', 'peer-' || g, now(),
              CASE WHEN g % 50 = 0 THEN 'waiting' WHEN g % 100 = 1 THEN 'agent' ELSE 'bot' END,
              CASE WHEN g % 100 = 1 THEN (SELECT id FROM agent) END,
              CASE WHEN g % 50 = 0 THEN now() END, 0,
              now() - make_interval(secs => g / 2),
              CASE WHEN g % 5 = 0 THEN now() END,
              (ARRAY['shipping','payment','complaint'])[1 + g % 3]
       FROM generate_series(1, :n) AS g""",
    """INSERT INTO inbound (conversation_id, channel, account, external_id, kind, text, status, received_at)
       SELECT id, channel, account, 'm-' || id, 'text', '你好 ' || id, 'answered', last_inbound_at FROM conversation""",
    "ANALYZE",
)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[sessionmaker[Session], int]]:
    services.ensure_postgres()
    name, url = services.create_database()
    try:
        settings = Settings(data_dir=tmp_path_factory.mktemp("inbox-scale"), database_url=url)
        upgrade(settings)
        engine = make_engine(settings)
        sessions = make_session_factory(engine)
        with transaction(sessions) as session:
            for statement in SEED:
                session.execute(text(statement), {"n": CONVERSATIONS} if ":n" in statement else {})
            holder = int(session.execute(text("SELECT id FROM agent")).scalar_one())
        yield sessions, holder
        engine.dispose()
    finally:
        services.drop_database(name)


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from plan_nodes(child)


def explain(session: Session, filters: inbox.Filters, before: str | None) -> list[dict[str, Any]]:
    query = inbox.page_query(filters, before, 51)
    sql = str(query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
    raw = session.execute(text("EXPLAIN (FORMAT JSON) " + sql)).scalar_one()
    document = raw if isinstance(raw, list) else json.loads(raw)
    return list(plan_nodes(document[0]["Plan"]))


@pytest.mark.timeout(300)
def test_every_inbox_filter_walks_an_index(big: tuple[sessionmaker[Session], int]) -> None:
    sessions, holder = big
    cases = {"all": inbox.Filters(), "waiting": inbox.Filters(handler=Handler.WAITING),
             "channel": inbox.Filters(channel="wecom"), "mine": inbox.Filters(mine=holder),
             "unanswered": inbox.Filters(unanswered=True), "intent": inbox.Filters(intent="payment")}
    with sessions() as session:
        for label, filters in cases.items():
            first, cursor = inbox.page(session, filters)
            assert len(first) == 50 and cursor is not None, label
            for before in (None, cursor):
                nodes = explain(session, filters, before)
                on_conversation = [n for n in nodes if n.get("Relation Name") == "conversation"]
                assert on_conversation and all(n["Node Type"] != "Seq Scan" for n in on_conversation), (label, nodes)
                assert any(str(n.get("Index Name", "")).startswith("ix_conversation_") for n in on_conversation), label
                # a full sort would read every matching row first; an incremental sort over the index order does not
                assert all(n["Node Type"] != "Sort" for n in nodes), (label, [n["Node Type"] for n in nodes])


def test_keyset_pages_follow_the_full_order(big: tuple[sessionmaker[Session], int]) -> None:
    sessions, _ = big
    with sessions() as session:
        expected = [r.id for r in session.execute(
            text("SELECT id FROM conversation WHERE handler = 'waiting' ORDER BY last_inbound_at DESC, id DESC"))]
        seen: list[int] = []
        cursor = None
        while True:
            rows, cursor = inbox.page(session, inbox.Filters(handler=Handler.WAITING), cursor, limit=100)
            seen += [r.id for r in rows]
            if cursor is None:
                break
        assert seen == expected and len(seen) == CONVERSATIONS // 50
        assert inbox.waiting(session) == CONVERSATIONS // 50
