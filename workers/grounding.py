"""The knowledge base held in a worker's memory, for grounded answers: the passages that answer a question.

:class:`Knowledge` loads every passage and FAQ entry (:func:`models.knowledge.store.snapshot`) into a
:class:`~models.knowledge.passage_index.PassageIndex` and keeps it while ``kb_state.revision`` stays the
same; it reads the revision at most every ``refresh_s`` seconds (one single-row SELECT), and loads again
when it moved. Checking and reloading run in a background thread while answers go on with the previous
index (a knowledge base of 10,000 passages takes seconds to index: bench/kb_retrieval.py); only the very
first load is waited for. A database error while checking or loading keeps the index it has (logged), so a
knowledge-base outage never fails an answer: the model answers without passages, as before there was one.

:meth:`Knowledge.lookup` returns None when the knowledge base is empty (nothing changes in the prompt), else a
:class:`Grounding`: the best ``top_k`` sources (possibly none: the knowledge base does not cover the question).

With an :class:`~models.knowledge.dense.Encoder` (``KEFU_EMBEDDING_MODEL_PATH``), every source is also encoded
(:class:`~models.knowledge.dense.DenseIndex`, after the lexical index is in use, reusing the vectors of unchanged
sources) and a question's ``top_k`` nearest sources with a cosine of at least ``min_similarity`` are fused with the
lexical ones by reciprocal rank fusion: the model also reads passages that say the same thing in other words. Rank
fusion because BM25 scores and cosines share no scale and the passages need no confidence, only an order. An
encoder that fails (loading or one question) leaves the lexical sources, logged; ``Grounding.dense`` says whether
the dense ranking took part, and the audit records it. A first load that nothing warmed (``warm()`` at worker
start) is waited for with its encoding.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from models.knowledge import store
from models.knowledge.dense import DenseIndex, Encoder, reciprocal_rank_fusion
from models.knowledge.passage_index import PassageIndex

log = logging.getLogger(__name__)

TOP_K = 3
REFRESH_S = 5.0


@dataclass(frozen=True, slots=True)
class Source:
    """A passage or FAQ entry given to the model, and what the audit records of it."""

    kind: str  # "passage" or "faq"
    id: int
    title: str  # the document's title, which a reply may cite
    heading: str
    text: str  # as the model reads it


@dataclass(frozen=True, slots=True)
class Grounding:
    revision: int
    sources: tuple[Source, ...]  # best first; empty when nothing in the knowledge base covers the question
    dense: bool = False  # the embedding model's ranking was fused in

    def audit_detail(self) -> dict[str, Any]:
        return {"kb_revision": self.revision,
                "passages": [s.id for s in self.sources if s.kind == "passage"],
                "faq": [s.id for s in self.sources if s.kind == "faq"], "dense": self.dense}


def sources_of(snapshot: store.Snapshot) -> list[Source]:
    passages = [Source("passage", p.id, p.title, p.heading, p.text) for p in snapshot.passages]
    faq = [Source("faq", f.id, f.title, "", f"问：{f.question}\n答：{f.answer}") for f in snapshot.faq]
    return passages + faq


def _indexed_text(source: Source, similar: tuple[str, ...] = ()) -> str:
    return "\n".join((source.title, source.heading, source.text, *similar))


@dataclass(frozen=True, slots=True)
class _Loaded:
    revision: int
    sources: tuple[Source, ...]
    index: PassageIndex
    dense: DenseIndex | None = None  # row i is sources[i]


class Knowledge:
    def __init__(self, sessions: sessionmaker[Session], *, refresh_s: float = REFRESH_S, top_k: int = TOP_K,
                 encoder: Encoder | None = None, min_similarity: float = 0.0) -> None:
        self._sessions, self._refresh_s, self._top_k = sessions, refresh_s, top_k
        self._encoder, self._min_similarity = encoder, min_similarity
        self._loaded: _Loaded | None = None
        self._checked_at = -float("inf")
        self._lock = threading.Lock()

    def lookup(self, question: str, previous: str = "") -> Grounding | None:
        """The sources for ``question``; when none fit it alone, for it together with ``previous`` (the customer's
        message before: a follow-up such as "那运费谁出？" names its topic there)."""
        loaded = self._current()
        if loaded is None or not loaded.sources:
            return None
        hits = loaded.index.search(question, self._top_k)
        if not hits and previous:
            hits = loaded.index.search(f"{previous}\n{question}", self._top_k)
        ranking = [position for position, _ in hits]
        nearest = self._nearest(loaded, question)
        if nearest is not None:
            ranking = reciprocal_rank_fusion([ranking, nearest])[:self._top_k]
        return Grounding(loaded.revision, tuple(loaded.sources[position] for position in ranking),
                         dense=nearest is not None)

    def _nearest(self, loaded: _Loaded, question: str) -> list[int] | None:
        """The dense ranking of the sources for ``question``; None without one (no encoder, not encoded yet, or
        the encoder failed)."""
        if loaded.dense is None or self._encoder is None:
            return None
        try:
            query = self._encoder.encode_query(question)
        except Exception as exc:  # a model failure never fails an answer: the lexical sources stand
            log.warning("dense retrieval skipped for one question (%s: %s)", type(exc).__name__, exc)
            return None
        return [position for position, _ in loaded.dense.search(query, self._top_k, self._min_similarity)]

    def warm(self) -> None:
        """Load the knowledge base now, in a daemon thread (worker start), so the first answer does not wait for it."""
        threading.Thread(target=self.refresh, name="kefu-kb-warm", daemon=True).start()

    def refresh(self) -> None:
        """Check the revision and load the knowledge base if it moved, in this thread."""
        with self._lock:
            try:
                self._refresh()
            except Exception:  # e.g. from warm()'s thread: the first answer tries again
                log.exception("knowledge base refresh failed")

    def _current(self) -> _Loaded | None:
        loaded = self._loaded
        if time.monotonic() - self._checked_at < self._refresh_s:
            return loaded
        if loaded is None:  # nothing yet: every caller waits for the first load
            with self._lock:
                if self._loaded is None and time.monotonic() - self._checked_at >= self._refresh_s:
                    self._refresh()
            return self._loaded
        # one background thread checks (and reloads); answers go on with what is loaded meanwhile
        if self._lock.acquire(blocking=False):
            threading.Thread(target=self._refresh_and_release, name="kefu-kb-refresh", daemon=True).start()
        return loaded

    def _refresh_and_release(self) -> None:
        try:
            if time.monotonic() - self._checked_at >= self._refresh_s:
                self._refresh()
        except Exception:  # a refresh must never take the worker down; the next one tries again
            log.exception("knowledge base refresh failed")
            self._checked_at = time.monotonic()
        finally:
            self._lock.release()

    def _refresh(self) -> None:
        try:
            with self._sessions() as session:
                if self._loaded is not None and store.revision(session) == self._loaded.revision:
                    self._checked_at = time.monotonic()
                    return
                snapshot = store.snapshot(session)
        except SQLAlchemyError as exc:
            log.warning("knowledge base not refreshed (%s); answering with what is loaded", type(exc).__name__)
            self._checked_at = time.monotonic()
            return
        similar = {f.id: f.similar for f in snapshot.faq}
        sources = sources_of(snapshot)
        texts = [_indexed_text(s, similar.get(s.id, ()) if s.kind == "faq" else ()) for s in sources]
        previous = self._loaded
        self._loaded = _Loaded(snapshot.revision, tuple(sources), PassageIndex(texts))
        self._checked_at = time.monotonic()
        log.info("knowledge base revision %d loaded: %d passages and FAQ entries", snapshot.revision, len(sources))
        if self._encoder is not None:  # answers use the lexical index meanwhile
            self._encode(self._loaded, texts, previous.dense if previous is not None else None)

    def _encode(self, loaded: _Loaded, texts: list[str], previous: DenseIndex | None) -> None:
        assert self._encoder is not None
        started = time.monotonic()
        try:
            dense = DenseIndex.build(self._encoder, texts, previous)
        except Exception as exc:  # the lexical index stays in use; the next revision tries again
            log.error("knowledge base revision %d not encoded (%s: %s): lexical retrieval only", loaded.revision,
                      type(exc).__name__, exc)
            return
        if self._loaded is loaded:
            self._loaded = _Loaded(loaded.revision, loaded.sources, loaded.index, dense)
        log.info("knowledge base revision %d encoded in %.1fs", loaded.revision, time.monotonic() - started)
