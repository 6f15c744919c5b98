"""What the console's routes get from the gateway (built once per app in channels/app.py)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from channels.console.auth import ConsoleAuth
from channels.ingress import Ingress
from models.infra.bus import Bus, Listener
from models.infra.kv import KV
from models.settings import Settings


@dataclass(frozen=True)
class ConsoleContext:
    """The gateway's services a console module may use: the database (``sessions``; blocking, so from the thread
    pool), the KV store, the bus (publish ``models.desk.TOPIC`` events) and its listener (subscribe), ingress
    (``ingress.deliver(reply_id)`` after a commit) and the sign-in gate (``auth.agent(request)``)."""

    settings: Settings
    sessions: sessionmaker[Session]
    kv: KV
    bus: Bus
    listener: Listener
    ingress: Ingress
    auth: ConsoleAuth
