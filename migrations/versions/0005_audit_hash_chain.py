"""audit_event hash chain: chain, seq, prev_hash, hash on every row, and the audit_chain head table.

PostgreSQL: a BEFORE INSERT trigger (``kefu_audit_chain()``, SECURITY DEFINER, owned by the role that
runs this migration) puts each row at the end of chain ``txid % 16`` and computes its hash with
``kefu_audit_hash()``; whatever the INSERT said about those four columns is overwritten, so a runtime
role cannot choose a hash. SQLite: ``models.audit.record`` computes them in the same transaction.

Existing rows are sealed as the start of chain 0: in id order, in this migration's transaction (which
holds the table's exclusive lock), with the append-only trigger switched off for exactly that UPDATE
and on again before commit. The format of the hashed text is ``models.audit_chain``'s ``v1``, frozen.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from models.audit_chain import CHAIN_SQLITE, CHAINS_POSTGRESQL, GENESIS, row_hash

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# the backslashes keep SQLAlchemy's text() from reading :MI and :SS as bind parameters
_AT = """to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24\\:MI\\:SS.US"Z"')"""

_FUNCTIONS = f"""
CREATE FUNCTION kefu_audit_field(v text) RETURNS text LANGUAGE sql IMMUTABLE
AS $$ SELECT CASE WHEN v IS NULL THEN '-' ELSE char_length(v)::text || ':' || v END $$;

CREATE FUNCTION kefu_audit_hash(prev text, id bigint, chain integer, seq bigint, at timestamptz, kind text,
                                channel text, conversation_id bigint, inbound_id bigint, reply_id bigint,
                                detail text) RETURNS text LANGUAGE sql STABLE
AS $$ SELECT encode(sha256(convert_to('v1|' || concat_ws('|',
    kefu_audit_field(prev), kefu_audit_field(id::text), kefu_audit_field(chain::text), kefu_audit_field(seq::text),
    kefu_audit_field({_AT}), kefu_audit_field(kind), kefu_audit_field(channel),
    kefu_audit_field(conversation_id::text), kefu_audit_field(inbound_id::text), kefu_audit_field(reply_id::text),
    kefu_audit_field(detail)), 'UTF8')), 'hex') $$;
"""

_SEAL = f"""
DO $$
DECLARE
    r record;
    n bigint := 0;
    prev text := '{GENESIS}';
    h text;
BEGIN
    FOR r IN SELECT * FROM audit_event ORDER BY id LOOP
        n := n + 1;
        h := kefu_audit_hash(prev, r.id, 0, n, r.at, r.kind, r.channel, r.conversation_id, r.inbound_id,
                             r.reply_id, r.detail::text);
        UPDATE audit_event SET chain = 0, seq = n, prev_hash = prev, hash = h WHERE id = r.id;
        prev := h;
    END LOOP;
    INSERT INTO audit_chain (chain, seq, hash) VALUES (0, n, prev);
END $$;
"""


def _trigger(schema: str) -> str:
    # SECURITY DEFINER: runs as this migration's (the owner's) role, which alone may write audit_chain.
    # A fixed search_path, pg_temp last, so a caller's temporary objects cannot stand in for ours.
    return f"""
CREATE FUNCTION kefu_audit_chain() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, {schema}, pg_temp AS $$
DECLARE
    head_seq bigint;
    head_hash text;
BEGIN
    NEW.chain := (txid_current() % {CHAINS_POSTGRESQL})::integer;
    SELECT seq, hash INTO head_seq, head_hash FROM audit_chain WHERE chain = NEW.chain FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'audit chain % has no head row in audit_chain', NEW.chain;
    END IF;
    NEW.seq := head_seq + 1;
    NEW.prev_hash := head_hash;
    NEW.hash := kefu_audit_hash(NEW.prev_hash, NEW.id, NEW.chain, NEW.seq, NEW.at, NEW.kind, NEW.channel,
                                NEW.conversation_id, NEW.inbound_id, NEW.reply_id, NEW.detail::text);
    UPDATE audit_chain SET seq = NEW.seq, hash = NEW.hash WHERE chain = NEW.chain;
    RETURN NEW;
END $$;
REVOKE ALL ON FUNCTION kefu_audit_chain() FROM PUBLIC;
CREATE TRIGGER audit_event_chain BEFORE INSERT ON audit_event FOR EACH ROW EXECUTE FUNCTION kefu_audit_chain();
"""


def upgrade() -> None:
    op.add_column("audit_event", sa.Column("chain", sa.Integer(), nullable=True))
    op.add_column("audit_event", sa.Column("seq", sa.BigInteger(), nullable=True))
    op.add_column("audit_event", sa.Column("prev_hash", sa.String(64), nullable=True))
    op.add_column("audit_event", sa.Column("hash", sa.String(64), nullable=True))
    op.create_table(
        "audit_chain",
        sa.Column("chain", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("chain", name="pk_audit_chain"),
        postgresql_with={"fillfactor": 50},  # updated on every append: room for HOT updates
    )
    if op.get_bind().dialect.name == "postgresql":
        _upgrade_postgresql()
    else:
        _upgrade_sqlite()
    op.create_index("ix_audit_chain_seq", "audit_event", ["chain", "seq"], unique=True)


def _upgrade_postgresql() -> None:
    bind = op.get_bind()
    schema = bind.execute(sa.text("SELECT quote_ident(current_schema())")).scalar_one()
    encoding = bind.execute(sa.text("SHOW server_encoding")).scalar_one()
    if encoding != "UTF8":  # the hashed text counts characters; Python counts them in Unicode
        raise RuntimeError(f"the audit hash chain needs a UTF8 database, this one is {encoding}: "
                           "create it with ENCODING 'UTF8' (the postgres image's default)")
    op.execute("LOCK TABLE audit_event IN ACCESS EXCLUSIVE MODE")
    op.execute("SET LOCAL statement_timeout = 0")  # sealing a large log is one long statement (docs/audit.md)
    op.execute(_FUNCTIONS)
    op.execute("ALTER TABLE audit_event DISABLE TRIGGER audit_event_append_only")
    op.execute(_SEAL)
    op.execute("ALTER TABLE audit_event ENABLE TRIGGER audit_event_append_only")
    bind.execute(sa.text("INSERT INTO audit_chain (chain, seq, hash) VALUES (:chain, 0, :genesis)"),
                 [{"chain": chain, "genesis": GENESIS} for chain in range(1, CHAINS_POSTGRESQL)])
    op.execute(_trigger(schema))


_ROWS = sa.text("SELECT id, at, kind, channel, conversation_id, inbound_id, reply_id, CAST(detail AS TEXT) "
                "FROM audit_event WHERE id > :after ORDER BY id LIMIT 1000")


def _upgrade_sqlite() -> None:
    bind = op.get_bind()
    op.execute("DROP TRIGGER audit_event_no_update")
    seq, prev, after = 0, GENESIS, 0
    while rows := bind.execute(_ROWS, {"after": after}).all():
        for id_, at, kind, channel, conversation_id, inbound_id, reply_id, detail in rows:
            seq += 1
            hash_ = row_hash(prev, id_, CHAIN_SQLITE, seq, _utc(at), kind, channel, conversation_id, inbound_id,
                             reply_id, detail)
            bind.execute(sa.text("UPDATE audit_event SET chain = :chain, seq = :seq, prev_hash = :prev, hash = :hash "
                                 "WHERE id = :id"),
                         {"chain": CHAIN_SQLITE, "seq": seq, "prev": prev, "hash": hash_, "id": id_})
            prev, after = hash_, id_
    op.execute("CREATE TRIGGER audit_event_no_update BEFORE UPDATE ON audit_event "
               "BEGIN SELECT RAISE(ABORT, 'audit_event is append-only: UPDATE is not allowed'); END")
    bind.execute(sa.text("INSERT INTO audit_chain (chain, seq, hash) VALUES (:chain, :seq, :hash)"),
                 {"chain": CHAIN_SQLITE, "seq": seq, "hash": prev})


def _utc(value: object) -> datetime:
    """SQLite keeps SQLAlchemy's DateTime as text without a zone (always UTC in Kefu)."""
    at = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_event_chain ON audit_event")
        op.execute("DROP FUNCTION IF EXISTS kefu_audit_chain()")
        op.execute("DROP FUNCTION IF EXISTS kefu_audit_hash(text, bigint, integer, bigint, timestamptz, text, text, "
                   "bigint, bigint, bigint, text)")
        op.execute("DROP FUNCTION IF EXISTS kefu_audit_field(text)")
    op.drop_index("ix_audit_chain_seq", table_name="audit_event")
    op.drop_table("audit_chain")
    for column in ("hash", "prev_hash", "seq", "chain"):
        # plain ALTER TABLE … DROP COLUMN (SQLite ≥ 3.35 too): a batch copy would drop the append-only triggers
        op.execute(f"ALTER TABLE audit_event DROP COLUMN {column}")
