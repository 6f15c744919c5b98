"""The console's login rate limit: at most N failed logins per key (a username, a client address) within a window.

Counted in the shared KV store (models.infra.kv: Redis, or the host's SQLite file), so every gateway process
sees the same count. The store has no counter, but ``add`` is an atomic set-if-absent: failure number *n* takes
the slot ``…:n`` (the first free one, each living ``window_s``), so two concurrent failures never take the same
slot. A key is *locked* while its last slot (``…:N``) lives: N failures within the window lock it until the
window after the N-th failure has passed. The slot holds its expiry time, which is the ``Retry-After``.

Keys are SHA-256 digests of the username or address, never the value itself. KV errors propagate (the caller
refuses the login rather than letting a broken store switch the limit off).
"""

from __future__ import annotations

import hashlib
import math
import time

from models.infra.kv import KV

PREFIX = "console:login:"


def _key(kind: str, value: str) -> str:
    return f"{PREFIX}{kind}:{hashlib.sha256(value.encode()).hexdigest()[:32]}"


class LoginThrottle:
    def __init__(self, kv: KV, attempts: int, window_s: float) -> None:
        self._kv = kv
        self._attempts = attempts
        self._window_s = window_s

    def keys(self, username: str, address: str) -> tuple[str, str]:
        return _key("user", username.casefold()), _key("addr", address)

    def locked_for(self, *keys: str) -> int:
        """Seconds until the first of ``keys`` is unlocked when any is locked (the longest wait), else 0."""
        now = time.time()
        wait = 0.0
        for key in keys:
            until = self._kv.get(f"{key}:{self._attempts}")
            if until is not None:
                wait = max(wait, float(until) - now)
        return math.ceil(wait) if wait > 0 else 0

    def failed(self, *keys: str) -> None:
        """Count one failed login against each key (when every slot is taken, the key is locked already)."""
        until = time.time() + self._window_s
        for key in keys:
            for n in range(1, self._attempts + 1):
                if self._kv.add(f"{key}:{n}", repr(until), self._window_s):
                    break

    def clear(self, key: str) -> None:
        """Forget a key's failures (a username after its successful login)."""
        for n in range(1, self._attempts + 1):
            self._kv.delete(f"{key}:{n}")
