"""``kefu answers approve|list|revoke``: approved answers (models.knowledge.approved) from the command line.

``approve REPLY_ID [--question TEXT]`` approves a model answer for reuse (matched on the customer's stored message,
or on TEXT; refused, with the reason, when that question is already answered by ``KEFU_FAQ``, the knowledge base
or another approved answer); ``list`` prints every approved answer; ``revoke REPLY_ID`` withdraws one. Every
change is audited with ``by: cli``; running processes pick it up through their FAQ sync within seconds.

Exit status: 0 when done (approving an approved reply again is done: it changes nothing); 1 when the reply cannot
be approved (the reason on stderr) or has no approved answer to revoke; 2 when the database cannot be used (not
migrated: run ``kefu migrate``; unreachable).
"""

from __future__ import annotations

import sys
from typing import TextIO

from sqlalchemy.orm import Session, sessionmaker

from models.infra.db import transaction
from models.knowledge import approved
from models.settings import Settings
from workers.kb_command import on_knowledge_base

BY = "cli"


def approve(sessions: sessionmaker[Session], settings: Settings, reply_id: int, question: str | None,
            out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        with transaction(sessions) as session:
            done = approved.approve(session, reply_id, question, by=BY, settings=settings)
    except approved.NotApprovable as exc:
        print(f"kefu: cannot approve: {exc}", file=err)
        return 1
    print(f"approved reply #{reply_id} ({done.status}): 问: {done.answer.question}", file=out)
    return 0


def list_answers(sessions: sessionmaker[Session], out: TextIO | None = None) -> int:
    out = out or sys.stdout
    with sessions() as session:
        found = approved.approved(session)
    for a in found:
        print(f"#{a.reply_id:<6} {a.approved_at:%Y-%m-%d %H:%M}  问: {a.question}\n        答: {a.answer}", file=out)
    print(f"{len(found)} approved answer" + ("" if len(found) == 1 else "s"), file=out)
    return 0


def revoke(sessions: sessionmaker[Session], reply_id: int, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    with transaction(sessions) as session:
        removed = approved.revoke(session, reply_id, by=BY)
    if removed is None:
        print(f"kefu: reply #{reply_id} has no approved answer", file=err)
        return 1
    print(f"revoked the approved answer of reply #{reply_id}", file=out)
    return 0


def run(settings: Settings, action: str, reply_id: int | None = None, question: str | None = None) -> int:
    """One ``kefu answers`` action against the configured database; the exit status."""
    def act(sessions: sessionmaker[Session]) -> int:
        if action == "list":
            return list_answers(sessions)
        assert reply_id is not None
        return approve(sessions, settings, reply_id, question) if action == "approve" else revoke(sessions, reply_id)

    return on_knowledge_base(settings, act)
