"""``kefu audit verify``: run :func:`models.audit_verify.verify` and report it to an operator.

Exit status 0 when every chain verifies, 1 when any is broken (each problem is printed with the row
id where it shows, a chain's first problem first), 2 when the database has no chain yet or an anchors file cannot be read.
Prints row ids, chains and positions only, never a row's content.

``--anchors FILE`` keeps an outside record of the chains' ends: the positions and hashes recorded in
FILE by an earlier clean run must still be there, unchanged; after a clean run FILE is rewritten with
the current ends. Keep FILE away from the database's host (a superuser who can rewrite the database
can re-hash a whole chain consistently; only a record outside it shows that).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from models.audit_verify import NotChained, Report, verify
from models.infra.db import make_engine
from models.settings import Settings


def load_anchors(path: Path) -> dict[int, tuple[int, str]]:
    """Chain -> (seq, hash) from an anchors file; {} when it does not exist yet. Raises ValueError if unreadable."""
    if not path.exists():
        return {}
    try:
        chains = json.loads(path.read_text())["chains"]
        return {int(chain): (int(head["seq"]), str(head["hash"])) for chain, head in chains.items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not an anchors file written by `kefu audit verify --anchors` ({exc})") from None


def save_anchors(path: Path, report: Report) -> None:
    chains = {str(chain): {"seq": seq, "hash": hash_} for chain, (seq, hash_) in sorted(report.heads.items())}
    body = {"written_at": datetime.now(UTC).isoformat(timespec="seconds"), "rows": report.rows, "chains": chains}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(body, indent=1) + "\n")
    tmp.replace(path)


def print_report(report: Report) -> None:
    """Each finding on its own line, then one line with rows, chains, time and the verdict."""
    if report.as_owner:
        print("warning: connected as the audit log's owner or a superuser, which could switch its triggers off; "
              "run Kefu as a role that can only append (docs/audit.md, Roles)", file=sys.stderr)
    for finding in report.findings:
        print(f"TAMPERED {finding}")
    chains = len(set(report.heads) | {f.chain for f in report.findings if f.chain is not None})
    broken = len({f.chain for f in report.findings if f.id is not None or f.chain is not None})
    verdict = "clean" if report.clean else f"{len(report.findings)} problem(s)" + (
        f" in {broken} chain(s)" if broken else "")
    print(f"audit log: {report.rows:,} rows in {chains} chain(s) checked in {report.seconds:.2f} s "
          f"({report.rows / max(report.seconds, 1e-9):,.0f} rows/s): {verdict}")


def run_verify(settings: Settings, anchors_path: Path | None) -> int:
    try:
        anchors = load_anchors(anchors_path) if anchors_path else {}
    except ValueError as exc:
        print(f"kefu: {exc}", file=sys.stderr)
        return 2
    engine = make_engine(settings)
    try:
        report = verify(engine, anchors=anchors)
    except NotChained as exc:
        print(f"kefu: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print_report(report)
    if anchors_path and report.clean:
        save_anchors(anchors_path, report)
        print(f"anchors: {len(report.heads)} chain ends written to {anchors_path}"
              + (f" ({len(anchors)} earlier ones still in place)" if anchors else ""))
    return 0 if report.clean else 1
