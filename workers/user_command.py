"""``kefu user add|list|disable|passwd``: console accounts (models.agents) from the command line.

    kefu user add USERNAME --role admin|agent [--display-name NAME] [--password-stdin]
    kefu user list
    kefu user disable USERNAME
    kefu user passwd USERNAME [--password-stdin]

A password is read from a prompt twice (no echo; the two must match) or, with ``--password-stdin``, as the first
line of standard input (for scripts; never from an argument, which other users of the host could read). One
shorter than ``models.agents.MIN_PASSWORD_CHARS`` is refused. Every change is audited with ``by: cli``.

Exit status: 0 when done (disabling a disabled account is done: it changes nothing); 1 when refused (the reason
on stderr: a bad or taken username, a short password, the two entries differ, no such account); 2 when the
database cannot be used (not migrated: run ``kefu migrate``; unreachable).
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable
from typing import TextIO

from sqlalchemy.orm import Session, sessionmaker

from models import agents
from models.infra.db import transaction
from models.settings import Settings
from models.states import Role
from workers.kb_command import on_knowledge_base

BY = "cli"
PasswordSource = Callable[[], str]


def prompt_password() -> str:
    """A new password from the terminal, typed twice; AccountError when the two differ."""
    first = getpass.getpass(f"Password (at least {agents.MIN_PASSWORD_CHARS} characters): ")
    if getpass.getpass("Repeat the password: ") != first:
        raise agents.AccountError("the two passwords differ")
    return first


def stdin_password(stream: TextIO | None = None) -> str:
    """The first line of standard input, without its line break."""
    return (stream or sys.stdin).readline().rstrip("\r\n")


def add(sessions: sessionmaker[Session], username: str, role: str, display_name: str | None,
        password: PasswordSource, out: TextIO | None = None) -> int:
    """Create an account; the code path of ``kefu user add`` (tests call it with their own password source)."""
    out = out or sys.stdout
    agents.check_username(username)
    secret = password()
    agents.check_password(secret)
    with transaction(sessions) as session:
        agent_id = agents.add(session, username, secret, Role(role), display_name, by=BY)
    print(f"added {role} {username!r} (#{agent_id})", file=out)
    return 0


def list_users(sessions: sessionmaker[Session], out: TextIO | None = None) -> int:
    out = out or sys.stdout
    with sessions() as session:
        found = agents.accounts(session)
    for a in found:
        seen = f"{a.seen_at:%Y-%m-%d %H:%M}" if a.seen_at else "never"
        state = "disabled" if a.disabled else a.status
        print(f"#{a.id:<4} {a.username:<20} {a.role:<6} {state:<8} seen {seen:<16} {a.display_name}", file=out)
    print(f"{len(found)} account" + ("" if len(found) == 1 else "s"), file=out)
    return 0


def disable(sessions: sessionmaker[Session], username: str, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    with transaction(sessions) as session:
        changed = agents.disable(session, username, by=BY)
    print(f"disabled {username!r}" if changed else f"{username!r} was disabled already", file=out)
    return 0


def passwd(sessions: sessionmaker[Session], username: str, password: PasswordSource,
           out: TextIO | None = None) -> int:
    out = out or sys.stdout
    with sessions() as session:  # no prompt for an account that does not exist
        if username not in {a.username for a in agents.accounts(session)}:
            raise agents.AccountError(f"no account {username!r}")
    secret = password()
    with transaction(sessions) as session:
        agents.set_password(session, username, secret, by=BY)
    print(f"changed the password of {username!r}; its console sessions ended", file=out)
    return 0


def run(settings: Settings, action: str, username: str | None = None, role: str | None = None,
        display_name: str | None = None, password_stdin: bool = False) -> int:
    """One ``kefu user`` action against the configured database; the exit status."""
    source: PasswordSource = stdin_password if password_stdin else prompt_password

    def act(sessions: sessionmaker[Session]) -> int:
        try:
            if action == "list":
                return list_users(sessions)
            assert username is not None
            if action == "add":
                assert role is not None
                return add(sessions, username, role, display_name, source)
            if action == "disable":
                return disable(sessions, username)
            return passwd(sessions, username, source)
        except agents.AccountError as exc:
            print(f"kefu: {exc}", file=sys.stderr)
            return 1

    return on_knowledge_base(settings, act)
