"""``kefu audit verify``: recompute every audit chain from the stored rows and say where it breaks.

Rows are streamed in (chain, seq) order inside one read-only snapshot (REPEATABLE READ on
PostgreSQL, one read transaction on SQLite), so memory stays bounded however large the log is, and
writers may keep appending meanwhile. Each row's hash is recomputed in Python
(``models.audit_chain``), never taken from the database. For each chain the problems are reported in
order, the first being where the chain first breaks (at most :data:`MAX_PER_CHAIN`; after each one the
walk goes on from the row as stored), with the row's id and position:

- a row whose content no longer matches its hash: edited, or forged with a made-up hash;
- a gap in ``seq``: rows deleted from the middle;
- a row whose ``prev_hash`` is not the hash of the row before it: rows moved, swapped or replaced;
- a chain that ends before or after its head row (``audit_chain``): rows deleted from or added at the end;
- a row without a chain position: inserted with the chain trigger switched off;
- a guard gone: an append-only or chain trigger missing or disabled, the chain function no longer
  SECURITY DEFINER (``models.audit_guards``);
- with anchors (heads recorded by an earlier verify and kept away from the database), a recorded
  position whose hash changed: the chain was rewritten and re-hashed consistently, which only an
  outside record can show.

:func:`verify` raises :class:`NotChained` when the database has no chain (migration 0005 not applied).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, Text, cast, inspect, select

from models.audit_chain import GENESIS, row_hash
from models.audit_guards import connected_as_owner, missing_guards
from models.tables import AuditChainHead, AuditEvent

MAX_PER_CHAIN = 10  # findings listed per chain; the first is where the chain first breaks


class NotChained(Exception):
    """The database has no audit chain yet (run ``kefu migrate``)."""


@dataclass(frozen=True)
class Finding:
    """Where a chain breaks: the row that shows it (id, chain, seq) and what is wrong, in words."""

    chain: int | None
    id: int | None
    seq: int | None
    problem: str

    def __str__(self) -> str:
        if self.chain is None and self.id is None:
            return self.problem
        where = f"chain {self.chain}" if self.chain is not None else "no chain"
        row = f" at row id {self.id}" if self.id is not None else ""
        row += f" (seq {self.seq})" if self.id is not None and self.seq is not None else ""
        return f"{where}{row}: {self.problem}"


@dataclass
class Report:
    rows: int = 0
    seconds: float = 0.0
    findings: list[Finding] = field(default_factory=list)
    as_owner: bool = False  # the connection owns the log (single-role mode) or is a superuser
    heads: dict[int, tuple[int, str]] = field(default_factory=dict)  # chain -> (seq, hash) of its last row

    @property
    def clean(self) -> bool:
        return not self.findings


@dataclass
class _Chain:
    """One chain being walked: the last position checked, and how many problems it showed so far."""

    number: int
    head: tuple[int, str] | None  # the audit_chain row
    anchor: tuple[int, str] | None
    seq: int = 0
    hash: str = GENESIS
    last_id: int | None = None
    problems: int = 0


_COLUMNS = (AuditEvent.id, AuditEvent.chain, AuditEvent.seq, AuditEvent.prev_hash, AuditEvent.hash, AuditEvent.at,
            AuditEvent.kind, AuditEvent.channel, AuditEvent.conversation_id, AuditEvent.inbound_id,
            AuditEvent.reply_id, cast(AuditEvent.detail, Text).label("detail"))


def verify(engine: Engine, *, anchors: Mapping[int, tuple[int, str]] | None = None, batch: int = 5000) -> Report:
    """Check the guards, then walk every chain once; findings in order (module docstring)."""
    started = time.monotonic()
    report = Report()
    options: dict[str, Any] = {"stream_results": True, "yield_per": batch}
    if engine.dialect.name == "postgresql":
        options.update(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    with engine.connect() as conn, conn.execution_options(**options).begin():
        if engine.dialect.name == "sqlite":  # pysqlite begins only before writes: one snapshot for heads and rows
            conn.exec_driver_sql("BEGIN")
        if not inspect(conn).has_table("audit_chain"):
            raise NotChained("the audit log has no hash chain yet: run `kefu migrate` (migration 0005)")
        report.findings += [Finding(None, None, None, f"guard: {problem}") for problem in missing_guards(conn)]
        report.as_owner = connected_as_owner(conn)
        heads = _read_heads(conn)
        rows = conn.execute(select(*_COLUMNS).order_by(AuditEvent.chain, AuditEvent.seq, AuditEvent.id))
        _walk(rows, heads, dict(anchors or {}), report)
    report.seconds = time.monotonic() - started
    return report


def _read_heads(conn: Connection) -> dict[int, tuple[int, str]]:
    rows = conn.execute(select(AuditChainHead.chain, AuditChainHead.seq, AuditChainHead.hash))
    return {int(chain): (int(seq), str(hash_)) for chain, seq, hash_ in rows}


def _walk(rows: Iterable[Any], heads: dict[int, tuple[int, str]], anchors: dict[int, tuple[int, str]],
          report: Report) -> None:
    current: _Chain | None = None
    unplaced = 0
    for row in rows:
        report.rows += 1
        if row.chain is None or row.seq is None or row.hash is None or row.prev_hash is None:
            if not unplaced:
                report.findings.append(Finding(None, row.id, row.seq, "the row has no chain position: inserted "
                                                                      "with the chain trigger switched off"))
            unplaced += 1
            continue
        if current is None or row.chain != current.number:
            if current is not None:
                _finish(current, report)
            current = _Chain(row.chain, heads.pop(row.chain, None), anchors.pop(row.chain, None))
        if current.problems < MAX_PER_CHAIN:
            _step(current, row, report)
    if current is not None:
        _finish(current, report)
    for number, head in sorted(heads.items()):  # chains without a single row left
        _finish(_Chain(number, head, anchors.pop(number, None)), report)
    for number, anchor in sorted(anchors.items()):
        report.findings.append(Finding(number, None, anchor[0], "an anchored chain is gone (no head, no rows)"))


def _step(chain: _Chain, row: Any, report: Report) -> None:
    problem = _problem(chain, row)
    if problem is not None:
        chain.problems = MAX_PER_CHAIN if chain.head is None else chain.problems + 1
        report.findings.append(Finding(chain.number, row.id, row.seq, problem))
    # after a problem, go on from the row as stored, so each later finding stands on its own
    chain.seq, chain.hash, chain.last_id = row.seq, row.hash, row.id


def _problem(chain: _Chain, row: Any) -> str | None:
    if chain.head is None:
        return "the chain has no head row in audit_chain (rows inserted behind Kefu's back, or the head deleted)"
    if row.seq > chain.seq + 1:
        after = f"after row id {chain.last_id}" if chain.last_id is not None else "at the start of the chain"
        gap = f"{chain.seq + 1}" if row.seq == chain.seq + 2 else f"{chain.seq + 1}..{row.seq - 1}"
        return f"seq {gap} missing {after}: {row.seq - chain.seq - 1} row(s) deleted before this one"
    if row.seq <= chain.seq:
        return f"seq {row.seq} repeats or goes back after seq {chain.seq}: rows reordered"
    if row.prev_hash != chain.hash:
        return ("does not follow the row before it (prev_hash differs): rows swapped, moved or replaced "
                "here or just before")
    computed = row_hash(row.prev_hash, row.id, row.chain, row.seq, row.at, row.kind, row.channel,
                        row.conversation_id, row.inbound_id, row.reply_id, row.detail)
    if computed != row.hash:
        return "the content does not match its hash: edited, or forged with a made-up hash"
    if row.seq > chain.head[0] >= chain.seq:  # the first row past the head
        return f"the row lies past the chain's head (seq {chain.head[0]}): appended behind Kefu's back"
    if chain.anchor is not None and row.seq == chain.anchor[0] and row.hash != chain.anchor[1]:
        return "differs from the anchor recorded earlier: the chain was rewritten and re-hashed up to here"
    return None


def _finish(chain: _Chain, report: Report) -> None:
    """End of a chain's rows: it must end exactly at its head, and reach its anchor."""
    if chain.problems >= MAX_PER_CHAIN:  # not walked to its end
        return
    where = f"after row id {chain.last_id}" if chain.last_id is not None else "with no rows"
    if chain.head is not None and (chain.seq, chain.hash) != chain.head and chain.seq <= chain.head[0]:
        report.findings.append(Finding(chain.number, chain.last_id, chain.seq, _off_head(chain, chain.head, where)))
        return
    if chain.anchor is not None and chain.anchor[0] > chain.seq:
        report.findings.append(Finding(chain.number, chain.last_id, chain.seq,
                                       f"the chain ends at seq {chain.seq} {where}, before the anchor recorded "
                                       f"earlier at seq {chain.anchor[0]}: rows deleted and the head rewritten"))
        return
    if chain.head is not None and not chain.problems:
        report.heads[chain.number] = (chain.seq, chain.hash)


def _off_head(chain: _Chain, head: tuple[int, str], where: str) -> str:
    head_seq = head[0]
    if head_seq > chain.seq:
        return (f"the chain ends at seq {chain.seq} {where} but its head says seq {head_seq}: "
                f"the last {head_seq - chain.seq} row(s) were deleted")
    return f"the last row {where.removeprefix('after ')} is not the one its head recorded: the end was replaced"
