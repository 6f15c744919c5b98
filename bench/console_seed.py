"""Fill a PostgreSQL database with a support team's history for the console benchmark (bench/console_pages.py).

``seed(url, conversations)`` writes, in a handful of set-based statements (generate_series), ``conversations``
conversations spread over the five channels and the last 30 days, each with three customer messages, three
replies with their deliveries and two audit rows per exchange; 2 % of them waiting in the desk's queue, 1 % held
by an agent, every fifth one unanswered. Intents cycle through the built-in labels. Then ANALYZE, so the planner
sees the real sizes.

The audit rows are written with the log's triggers off (``session_replication_role = replica``, as the superuser
the benchmark connects as): the hash-chain trigger costs minutes for 600,000 rows, and the console only reads
them. Their hash columns are NULL, which changes their size by 2 × 64 bytes a row, not the plans.
"""

from __future__ import annotations

import time

from sqlalchemy import create_engine, text

CHANNELS = ("web", "wechat_mp", "wecom", "wecom_kf", "phone")
INTENTS = ("order_status", "shipping", "return_refund", "payment", "account", "complaint", "product_info")

STATEMENTS = (
    # one agent holds 1 % of the conversations
    """INSERT INTO agent (username, display_name, role, password_hash, disabled, status, created_at)
       VALUES ('bench-holder', '值班客服', 'agent', 'x', false, 'away', now())""",
    """INSERT INTO conversation (channel, account, peer, created_at, handler, agent_id, handler_since, handoffs,
                                 last_inbound_at, last_reply_at, last_intent)
       SELECT (ARRAY['web','wechat_mp','wecom','wecom_kf','phone'])[1 + g % 5], 'default', 'bench-peer-' || g,
              now() - make_interval(secs => g * 25.92 + 600),
              CASE WHEN g % 50 = 0 THEN 'waiting' WHEN g % 100 = 1 THEN 'agent' ELSE 'bot' END,
              CASE WHEN g % 100 = 1 THEN (SELECT id FROM agent WHERE username = 'bench-holder') END,
              CASE WHEN g % 50 = 0 OR g % 100 = 1 THEN now() - make_interval(secs => g * 25.92) END,
              CASE WHEN g % 50 = 0 OR g % 100 = 1 THEN 1 ELSE 0 END,
              now() - make_interval(secs => g * 25.92),
              CASE WHEN g % 5 = 0 THEN now() - make_interval(secs => g * 25.92 + 60)
                   ELSE now() - make_interval(secs => g * 25.92 - 2) END,
              (ARRAY['order_status','shipping','return_refund','payment','account','complaint','product_info'])
                [1 + g % 7]
       FROM generate_series(1, :n) AS g""",
    """INSERT INTO inbound (conversation_id, channel, account, external_id, kind, text, status, received_at,
                            queued_at, intent)
       SELECT c.id, c.channel, c.account, 'bench-' || c.id || '-' || k, 'text',
              (ARRAY['我的订单什么时候发货？','怎么申请退款','快递到哪里了','可以开发票吗'])[1 + (c.id + k) % 4],
              CASE WHEN k = 3 AND c.id % 5 = 0 THEN 'queued' ELSE 'answered' END,
              c.last_inbound_at - make_interval(mins => 3 - k), c.last_inbound_at - make_interval(mins => 3 - k),
              c.last_intent
       FROM conversation c, generate_series(1, 3) AS k""",
    """INSERT INTO reply (inbound_id, conversation_id, text, source, model, prompt_tokens, completion_tokens,
                          latency_ms, created_at)
       SELECT i.id, i.conversation_id, '您好，您的订单已发货，预计两天内送达。', 'model', 'qwen3', 120, 30, 800,
              i.received_at + interval '2 seconds'
       FROM inbound i WHERE i.status = 'answered'""",
    """INSERT INTO delivery (reply_id, channel, status, attempts, parts_sent, created_at, updated_at)
       SELECT r.id, c.channel, 'sent', 1, 1, r.created_at, r.created_at
       FROM reply r JOIN conversation c ON c.id = r.conversation_id""",
    "SET LOCAL session_replication_role = replica; "
    """INSERT INTO audit_event (at, kind, channel, conversation_id, inbound_id, reply_id, detail)
       SELECT i.received_at, 'received', i.channel, i.conversation_id, i.id, NULL,
              json_build_object('message_kind', 'text', 'chars', 10, 'intent', i.intent)
       FROM inbound i ORDER BY i.id""",
    "SET LOCAL session_replication_role = replica; "
    """INSERT INTO audit_event (at, kind, channel, conversation_id, inbound_id, reply_id, detail)
       SELECT r.created_at, 'reply_stored', c.channel, r.conversation_id, r.inbound_id, r.id,
              json_build_object('chars', 20, 'source', 'model')
       FROM reply r JOIN conversation c ON c.id = r.conversation_id ORDER BY r.id""",
    "ANALYZE",
)


def seed(url: str, conversations: int) -> dict[str, float]:
    """Seconds per step; the database must be migrated and empty."""
    engine = create_engine(url)
    took: dict[str, float] = {}
    try:
        for number, statement in enumerate(STATEMENTS, 1):
            started = time.perf_counter()
            with engine.begin() as conn:
                conn.execute(text(statement), {"n": conversations} if ":n" in statement else {})
            words = statement.replace("SET LOCAL session_replication_role = replica; ", "").split()
            took[f"{number}. {' '.join(words[:3])}"] = time.perf_counter() - started
    finally:
        engine.dispose()
    return took


def counts(url: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {table: int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
                    for table in ("conversation", "inbound", "reply", "delivery", "audit_event")}
    finally:
        engine.dispose()
