"""Fail fast after a failure: a dependency that did not answer is not asked again for a few seconds.

A hung database or broker costs each caller a full timeout; with many concurrent callers they queue behind
the same dead server. A :class:`Breaker` is tripped by the first failure and then makes :meth:`check` raise
at once for ``retry_after_s``; the first call after that tries the server again. No lock: one float,
written whole.
"""

from __future__ import annotations

import time


class Breaker:
    def __init__(self, retry_after_s: float, error: type[Exception], message: str) -> None:
        self._retry_after_s = retry_after_s
        self._error, self._message = error, message
        self._open_until = 0.0

    def trip(self) -> None:
        self._open_until = time.monotonic() + self._retry_after_s

    def check(self) -> None:
        """Raise ``error(message)`` while open."""
        if time.monotonic() < self._open_until:
            raise self._error(self._message)
