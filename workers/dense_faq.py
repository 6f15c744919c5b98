"""The worker's second look at the FAQ, with the embedding model: a question the gateway's lexical FAQ abstained on
may still be a paraphrase of an entry.

:meth:`DenseFaqMatcher.match` takes the process's FAQ index (:func:`models.knowledge.faq_cache.index_for`:
``KEFU_FAQ`` and the knowledge base's FAQ sheets), its lexical best entry, and the embedding model's nearest
entry (:class:`~models.knowledge.fused_faq.DenseFaq`, calibrated on the FAQ's own similar questions), fuses them
(:func:`~models.knowledge.fused_faq.second_look`) and returns the entry when the fused confidence reaches
``KEFU_FAQ_FUSED_THRESHOLD``, else None: the model answers, as without an embedding model.

The vectors follow the FAQ index: when :func:`~models.knowledge.faq_cache.index_for` returns another index (a
knowledge-base or ``KEFU_FAQ`` change), they are rebuilt on the next question, encoding only phrasings not seen
before; :meth:`DenseFaqMatcher.warm` builds them at worker start. An encoder failure is logged and the question
goes to the model (None): a broken embedding model never costs an answer. Thread-safe.
"""

from __future__ import annotations

import logging
import threading

from models.knowledge import faq_cache
from models.knowledge.dense import Encoder
from models.knowledge.faq_index import FaqIndex
from models.knowledge.fused_faq import DenseFaq, FusedMatch, second_look
from models.settings import Settings

log = logging.getLogger(__name__)


class DenseFaqMatcher:
    def __init__(self, encoder: Encoder, settings: Settings) -> None:
        self._encoder, self._settings = encoder, settings
        self._lock = threading.Lock()
        self._built: tuple[FaqIndex, DenseFaq] | None = None

    def _dense_for(self, index: FaqIndex) -> DenseFaq:
        built = self._built
        if built is not None and built[0] is index:
            return built[1]
        with self._lock:
            if self._built is None or self._built[0] is not index:
                previous = self._built[1] if self._built is not None else None
                dense = DenseFaq.build(self._encoder, index.entries, previous)
                if dense.calibration is None and len(dense.index):
                    log.info("FAQ of %d entries: no dense calibration (too few similar questions, or a model that "
                             "does not tell them apart): lexical FAQ only", len(index.entries))
                self._built = (index, dense)
            return self._built[1]

    def warm(self) -> None:
        """Encode the FAQ now (worker start); failures are logged."""
        try:
            self._dense_for(faq_cache.index_for(self._settings))
        except Exception:
            log.exception("encoding the FAQ failed")

    def match(self, text: str) -> FusedMatch | None:
        """The FAQ entry that answers ``text`` by the fused confidence, or None (the model answers)."""
        index = faq_cache.index_for(self._settings)
        if not index.entries:
            return None
        try:
            dense, query = self._dense_for(index), self._encoder.encode_query(text)
        except Exception as exc:
            log.warning("dense FAQ match skipped (%s: %s)", type(exc).__name__, exc)
            return None
        return second_look(index, dense, text, query, self._settings.faq_fused_threshold)
