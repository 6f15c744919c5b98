"""At most one kf pull queued per (account, open_kfid): the "a pull is on its way" mark.

A pull task reads everything recorded before it *starts* (it takes the sync lease, then reads
``kf_cursor.requested``), so while one pull is queued or waiting for the lease another one adds
nothing. The mark says that one is: the callback and the sweeper publish a pull only when they can
set it (:func:`claim`, set-if-absent in the shared KV store); the pull keeps it while it waits for
the lease (:func:`keep`) and clears it once it holds the lease (:func:`clear`), *before* reading
what was requested, so news recorded after that publishes a new pull.

The mark expires after :data:`QUEUED_TTL_S`: a pull task lost by the broker (or a publish whose
failure could not clear it) blocks new pulls for at most that long, then the sweeper publishes one.
KV errors propagate (the callback answers 503 and the platform retries; the task retries).
"""

from __future__ import annotations

from models.infra.kv import KV

QUEUED_TTL_S = 60.0


def queued_key(account: str, open_kfid: str) -> str:
    return f"kfpull:queued:{account}:{open_kfid}"


def claim(kv: KV, account: str, open_kfid: str) -> bool:
    """True when no pull was on its way: the caller publishes one (and clears the mark if it cannot)."""
    return kv.add(queued_key(account, open_kfid), "1", QUEUED_TTL_S)


def keep(kv: KV, account: str, open_kfid: str) -> None:
    """The queued pull is still waiting for the lease: it is still on its way."""
    kv.set(queued_key(account, open_kfid), "1", QUEUED_TTL_S)


def clear(kv: KV, account: str, open_kfid: str) -> None:
    kv.delete(queued_key(account, open_kfid))
