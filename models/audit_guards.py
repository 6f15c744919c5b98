"""Whether the guards around the audit log are in place: what ``kefu audit verify`` checks besides the rows.

:func:`missing_guards` lists, in words, each guard that is gone: on PostgreSQL the append-only and chain
triggers on ``audit_event`` (present and enabled) and the chain function running as its owner
(SECURITY DEFINER); on SQLite the append-only triggers. :func:`connected_as_owner` says whether the
connection could remove those guards itself (it owns ``audit_event`` or is a superuser): true in a
single-role setup, which is allowed but is not the protection docs/audit.md describes. Neither raises
for a missing table (the verifier checks that first); database errors propagate.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

PG_TRIGGERS = {"audit_event_append_only": "kefu_audit_append_only", "audit_event_chain": "kefu_audit_chain"}
SQLITE_TRIGGERS = ("audit_event_no_update", "audit_event_no_delete")
_ENABLED = ("O", "A")  # pg_trigger.tgenabled: fires on origin / always; "D" disabled, "R" replica only


def missing_guards(conn: Connection) -> list[str]:
    if conn.dialect.name != "postgresql":
        present = set(conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger' "
                                         "AND tbl_name = 'audit_event'")).scalars())
        return [f"the trigger {name} is missing: UPDATE or DELETE on the log is no longer refused"
                for name in SQLITE_TRIGGERS if name not in present]
    triggers = {name: (enabled, function) for name, enabled, function in conn.execute(text(
        "SELECT tgname, tgenabled, tgfoid::regproc::text FROM pg_trigger "
        "WHERE tgrelid = 'audit_event'::regclass AND NOT tgisinternal"))}
    problems = []
    for name, function in PG_TRIGGERS.items():
        enabled, calls = triggers.get(name, (None, None))
        if enabled is None:
            problems.append(f"the trigger {name} is missing")
        elif enabled not in _ENABLED:
            problems.append(f"the trigger {name} is disabled")
        elif calls != function:
            problems.append(f"the trigger {name} calls {calls}, not {function}")
    definer = conn.execute(text("SELECT prosecdef FROM pg_proc WHERE proname = 'kefu_audit_chain'")).scalar()
    if definer is False:
        problems.append("kefu_audit_chain() no longer runs as its owner (SECURITY DEFINER): the app role could not "
                        "append")
    return problems


def connected_as_owner(conn: Connection) -> bool:
    if conn.dialect.name != "postgresql":
        return False  # SQLite has no roles: whoever has the file has everything (docs/audit.md)
    return bool(conn.execute(text(
        "SELECT pg_get_userbyid(c.relowner) = current_user OR r.rolsuper FROM pg_class c, pg_roles r "
        "WHERE c.oid = 'audit_event'::regclass AND r.rolname = current_user")).scalar())
