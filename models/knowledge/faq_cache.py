"""The process's FAQ index, kept in memory: no database read and no rebuild on a customer's message.

:func:`index_for` returns the index of ``KEFU_FAQ`` (``settings.faq``) plus the entries :func:`install`\\ ed from
the knowledge-base store, building it only when one of them changed: a new ``settings.faq`` list whose content
differs (by :func:`~models.knowledge.faq.fingerprint`), or a new :func:`install`. ``install(entries, settings)``
builds the new index in the caller's thread (the one polling the store's revision) while messages keep the
previous index, so a message never waits for a rebuild after a knowledge-base change. Only the first message of
a process (or after a ``KEFU_FAQ`` change) may build, once, holding up the messages that arrive meanwhile (about a
second with jieba's dictionary): call :func:`index_for` at start-up to take even that off the first message.

``KEFU_FAQ`` entries become :class:`~models.knowledge.faq.FaqEntry` values with ids ``settings:<n>``: their
``keywords`` stay a keyword rule (all occur: answer, as before), their ``question`` and ``similar`` are matched
with a confidence. Thread-safe: readers get a complete index or the previous one, never a half-built one.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from models.knowledge.faq import FaqEntry, fingerprint
from models.knowledge.faq_index import FaqIndex, Match
from models.settings import FaqEntry as SettingsFaqEntry
from models.settings import Settings


def from_settings(entries: Sequence[SettingsFaqEntry]) -> tuple[FaqEntry, ...]:
    return tuple(FaqEntry(f"settings:{n}", e.question.strip(), e.answer, tuple(e.similar),
                          tuple(k for k in e.keywords if k.strip())) for n, e in enumerate(entries))


@dataclass(frozen=True, slots=True)
class _Built:
    configured: list[SettingsFaqEntry]  # the settings.faq list it was built from (compared by identity first)
    configured_print: str
    generation: int  # of the installed entries
    index: FaqIndex


class FaqCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # the state below, and a build on a reader's path (a KEFU_FAQ change)
        self._installing = threading.Lock()  # one install() at a time
        self._installed: tuple[FaqEntry, ...] = ()
        self._generation = 0
        self._built: _Built | None = None

    def install(self, entries: Sequence[FaqEntry], settings: Settings | None = None) -> None:
        """Replace the store's entries (e.g. from the knowledge base's snapshot). With ``settings``, the new index
        is built first, in this thread, while readers keep the previous one, then swapped in; without, the next
        reader builds it. Raises ValueError (from the index) for an entry with neither question nor keywords,
        and then changes nothing."""
        entries = tuple(entries)
        with self._installing:
            fresh = None
            if settings is not None:
                configured = from_settings(settings.faq)
                fresh = (settings.faq, fingerprint(configured), FaqIndex((*configured, *entries)))
            with self._lock:
                self._installed, self._generation = entries, self._generation + 1
                if fresh is not None:
                    self._built = _Built(fresh[0], fresh[1], self._generation, fresh[2])

    def index_for(self, settings: Settings) -> FaqIndex:
        built = self._built
        if built is not None and built.configured is settings.faq and built.generation == self._generation:
            return built.index
        with self._lock:
            built = self._built
            configured = from_settings(settings.faq)
            configured_print = fingerprint(configured)
            if built is None or built.configured_print != configured_print or built.generation != self._generation:
                index = FaqIndex((*configured, *self._installed))
            else:
                index = built.index  # the same content in a new Settings: keep the index
            self._built = _Built(settings.faq, configured_print, self._generation, index)
            return index


_cache = FaqCache()
install = _cache.install
index_for = _cache.index_for


def lookup(settings: Settings, text: str) -> Match | None:
    """The FAQ's answer to ``text`` at ``settings.faq_threshold``, or None (it abstains)."""
    return index_for(settings).lookup(text, settings.faq_threshold)
