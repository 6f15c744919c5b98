"""``kefu apikey add|list|revoke``: keys for the OpenAI/Ollama-compatible API (channels/api, models/api_keys).

``add NAME`` prints the new key on standard output's last line — the only time it is shown (only its SHA-256 is
stored); ``list`` prints every key's name, prefix, dates and state; ``revoke NAME`` refuses the key from then on
(running gateways within ``models.api_keys.CHECK_TTL_S``). Additions and revocations are audited.

Exit status: 0 when done (revoking a revoked key is done); 1 for a bad or taken name or an unknown key (the reason
on stderr); 2 when the database cannot be used (not migrated: run ``kefu migrate``; unreachable).
"""

from __future__ import annotations

import sys
from typing import TextIO

from sqlalchemy.orm import Session, sessionmaker

from models import api_keys
from models.infra.db import transaction
from models.settings import Settings
from workers.kb_command import on_knowledge_base


def add(sessions: sessionmaker[Session], name: str, out: TextIO, err: TextIO) -> int:
    try:
        with transaction(sessions) as session:
            key = api_keys.add(session, name)
    except api_keys.ApiKeyError as exc:
        print(f"kefu: {exc}", file=err)
        return 1
    print(f"API key {name!r} made; it is shown only now (send it as 'Authorization: Bearer <key>'):", file=err)
    print(key, file=out)
    return 0


def list_keys(sessions: sessionmaker[Session], out: TextIO) -> int:
    with sessions() as session:
        found = api_keys.listing(session)
    for k in found:
        used = f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "never"
        state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
        print(f"{k.name:<24} {k.prefix}…  made {k.created_at:%Y-%m-%d %H:%M}  last used {used}  {state}", file=out)
    print(f"{len(found)} key" + ("" if len(found) == 1 else "s"), file=out)
    return 0


def revoke(sessions: sessionmaker[Session], name: str, out: TextIO, err: TextIO) -> int:
    try:
        with transaction(sessions) as session:
            api_keys.revoke(session, name)
    except api_keys.ApiKeyError as exc:
        print(f"kefu: {exc}", file=err)
        return 1
    print(f"revoked the API key {name!r}", file=out)
    return 0


def run(settings: Settings, command: str, name: str | None, out: TextIO | None = None, err: TextIO | None = None
        ) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    if command == "list":
        return on_knowledge_base(settings, lambda sessions: list_keys(sessions, out))
    assert name is not None
    act = add if command == "add" else revoke
    return on_knowledge_base(settings, lambda sessions: act(sessions, name, out, err))
