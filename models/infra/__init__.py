"""The infrastructure every process shares, each with a Redis/PostgreSQL backend and an embedded one.

``db`` (SQLAlchemy engine, sessions, idempotent inserts), ``migrate`` (Alembic), ``queues`` (Celery
app, task names, the publisher), ``embedded_broker`` (the SQLite kombu transport), ``bus`` (live
events to the gateway holding a socket), ``kv`` (small shared values with TTLs), ``locks``
(per-conversation and per-account locks), ``load`` (the LLM queue's wait estimate). The domain
modules of :mod:`models` (envelope, states, tables, audit, dialogue, replies, transcript) use them;
none of these imports a domain module but ``settings`` and ``tables``.
"""
