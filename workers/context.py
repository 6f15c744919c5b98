"""Conversation context: what the model is asked (:func:`compose`), and the last N turns of a conversation,
cached with a TTL.

The database is the source of truth (:func:`models.transcript.context_turns`); this cache saves the
query on the hot path. Redis when configured (shared by every worker), else an in-process cache.
A cache miss, an expired entry or a Redis error falls back to the database. So does an entry saved in an earlier
*round* of the conversation (its ``handoffs`` count: a person took it since): the agent's messages and what the
customer told them are only in the database (models.transcript.context_turns).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from typing import Protocol

import redis

from models.envelope import Turn
from models.settings import Settings

log = logging.getLogger(__name__)


def compose(system_prompt: str, history: list[Turn], text: str, max_turns: int, *, hint: str | None = None,
            knowledge: str | None = None) -> list[Turn]:
    """System prompt, the channel's hint (a second system block, so the first is the same for every channel and
    its KV is shared), the knowledge-base block of a grounded answer (a leading system block, so trimming the
    prompt to fit never drops it), the last ``max_turns`` exchanges, then the customer's message."""
    pinned = [t for t in history if t.role == "system"]  # an API client's own system messages stay
    dialogue = [t for t in history if t.role != "system"]
    recent = [*pinned, *(dialogue[-2 * max_turns :] if max_turns > 0 else [])]
    head = [Turn("system", system_prompt), *([Turn("system", hint)] if hint else []),
            *([Turn("system", knowledge)] if knowledge else [])]
    return [*head, *recent, Turn("user", text)]


def extend_history(history: list[Turn], text: str, reply: str, max_turns: int) -> list[Turn]:
    turns = [*history, Turn("user", text), Turn("assistant", reply)]
    return turns[-2 * max_turns :] if max_turns > 0 else []


class ContextStore(Protocol):
    def load(self, conversation_id: int, upto_inbound_id: int, round_: int = 0) -> list[Turn] | None: ...
    def save(self, conversation_id: int, last_inbound_id: int, turns: list[Turn], round_: int = 0) -> None: ...


def _dump(last_inbound_id: int, turns: list[Turn], round_: int = 0) -> str:
    return json.dumps({"upto": last_inbound_id, "round": round_, "turns": [[t.role, t.text] for t in turns]},
                      ensure_ascii=False)


def _load(raw: str | bytes, upto_inbound_id: int, round_: int = 0) -> list[Turn] | None:
    try:
        data = json.loads(raw)
        # A cached window is valid only for messages after the one it was saved for, in the same round.
        if int(data["upto"]) >= upto_inbound_id or int(data.get("round", 0)) != round_:
            return None
        return [Turn(role, text) for role, text in data["turns"]]
    except (ValueError, KeyError, TypeError):
        log.warning("context cache entry unreadable; reading the database")
        return None


class RedisContextStore:
    def __init__(self, url: str, timeout_s: float, ttl_s: int) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._ttl = ttl_s

    def load(self, conversation_id: int, upto_inbound_id: int, round_: int = 0) -> list[Turn] | None:
        try:
            raw = self._client.get(f"kefu:ctx:{conversation_id}")
        except redis.RedisError as exc:
            log.warning("context cache unavailable (%s); reading the database", type(exc).__name__)
            return None
        return None if raw is None else _load(raw, upto_inbound_id, round_)

    def save(self, conversation_id: int, last_inbound_id: int, turns: list[Turn], round_: int = 0) -> None:
        try:
            self._client.set(f"kefu:ctx:{conversation_id}", _dump(last_inbound_id, turns, round_), ex=self._ttl)
        except redis.RedisError as exc:
            log.warning("context cache not updated (%s)", type(exc).__name__)


class MemoryContextStore:
    def __init__(self, ttl_s: int, capacity: int = 10_000) -> None:
        self._ttl, self._capacity = ttl_s, capacity
        self._items: OrderedDict[int, tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()

    def load(self, conversation_id: int, upto_inbound_id: int, round_: int = 0) -> list[Turn] | None:
        with self._lock:
            item = self._items.get(conversation_id)
            if item is None or item[0] < time.monotonic():
                return None
            return _load(item[1], upto_inbound_id, round_)

    def save(self, conversation_id: int, last_inbound_id: int, turns: list[Turn], round_: int = 0) -> None:
        with self._lock:
            self._items[conversation_id] = (time.monotonic() + self._ttl, _dump(last_inbound_id, turns, round_))
            self._items.move_to_end(conversation_id)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)


def make_context_store(settings: Settings) -> ContextStore:
    url = settings.effective_redis_url
    if url:
        return RedisContextStore(url, settings.redis_timeout_s, settings.context_ttl_s)
    return MemoryContextStore(settings.context_ttl_s)
