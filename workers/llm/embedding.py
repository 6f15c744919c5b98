"""Text embeddings from an embedding GGUF through llama-cpp-python: the worker's
:class:`~models.knowledge.dense.Encoder`.

:func:`load_encoder` returns None when ``KEFU_EMBEDDING_MODEL_PATH`` is unset (Kefu then retrieves lexically only,
exactly as without this module), else a :class:`LlamaEncoder`, whose model loads on first use in the process that
uses it (never in a prefork parent: CUDA contexts do not survive fork), with the same GPU offload as the chat
model (``KEFU_N_GPU_LAYERS``). Pooling: the GGUF's own ``<arch>.pooling_type`` when ``KEFU_EMBEDDING_POOLING`` is
``model`` (GGUFs converted from Qwen3-Embedding say "last", from bge-m3 "cls"), else the one named. Texts are cut
to ``MAX_TOKENS`` tokens; vectors are L2-normalised float32 rows. ``KEFU_EMBEDDING_QUERY_INSTRUCTION`` is put before
a customer's question only (:meth:`LlamaEncoder.encode_query`). One call at a time per encoder (a llama.cpp context
is not thread-safe): a knowledge-base load encodes in small batches (models.knowledge.dense.BATCH) and releases the
lock between them, so a question waits for one batch, not the whole load.

:func:`load_encoder` raises ``ConfigError`` when the file is missing (the worker does not start: it calls it in
``create_app``). Raises :class:`EmbeddingError`, naming the ``KEFU_*`` variable, when the file cannot be loaded as an
embedding model, names no pooling type while ``KEFU_EMBEDDING_POOLING=model``, or returns no pooled vector.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.knowledge.dense import Vectors, checked
from models.settings import ConfigError, Settings
from workers.llm.cpu_buffers import model_defaults, use_extra_buffers

log = logging.getLogger(__name__)

MAX_TOKENS = 512  # a passage is at most 400 characters with its title and heading; an FAQ entry's similar
# questions past this are cut (its question comes first)
RECENT = 64  # question vectors kept: a question is encoded once for the FAQ's second look and its grounding
POOLING = {"last": 3, "cls": 2, "mean": 1}  # llama.cpp's LLAMA_POOLING_TYPE_* values


class EmbeddingError(RuntimeError):
    """The embedding model could not be loaded or could not embed a text."""


class LlamaEncoder:
    def __init__(self, path: Path, settings: Settings) -> None:
        self.path, self._settings = path, settings
        stat = path.stat()
        self.fingerprint = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{settings.embedding_pooling}"
        self._lock = threading.Lock()
        self._question = functools.lru_cache(maxsize=RECENT)(self._encode_question)  # the last questions' vectors
        self._model: Any = None
        self.dimension = 0

    def _pooling(self, llama_cpp: Any) -> int:
        choice = self._settings.embedding_pooling
        if choice != "model":
            return POOLING[choice]
        probe = llama_cpp.Llama(model_path=str(self.path), vocab_only=True, verbose=False)  # the metadata only
        try:
            arch = probe.metadata.get("general.architecture", "")
            named = probe.metadata.get(f"{arch}.pooling_type")
        finally:
            probe.close()
        if named is None or int(named) not in POOLING.values():
            raise EmbeddingError(f"KEFU_EMBEDDING_MODEL_PATH={self.path} names no pooling type ({arch}.pooling_type "
                                 f"is {named!r}): set KEFU_EMBEDDING_POOLING to last (Qwen3-Embedding), cls (bge-m3) "
                                 "or mean, as the model's card says")
        return int(named)

    def _load(self) -> Any:
        import llama_cpp

        from workers.llm.engine import default_gpu_layers

        s = self._settings
        try:
            pooling = self._pooling(llama_cpp)
            with model_defaults(use_extra_buffers(s.llama_extra_buffers)):
                model = llama_cpp.Llama(
                    model_path=str(self.path), embedding=True, pooling_type=pooling, n_ctx=MAX_TOKENS,
                    n_batch=MAX_TOKENS, n_ubatch=MAX_TOKENS,
                    n_threads=s.n_threads or max(1, len(os.sched_getaffinity(0))),
                    n_gpu_layers=default_gpu_layers() if s.n_gpu_layers is None else s.n_gpu_layers, verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            if isinstance(exc, EmbeddingError):
                raise
            raise EmbeddingError(f"KEFU_EMBEDDING_MODEL_PATH={self.path}: cannot load it as an embedding model "
                                 f"({type(exc).__name__}: {exc})") from exc
        self.dimension = int(model.n_embd())
        if pooling == POOLING["last"] and model.metadata.get("tokenizer.ggml.add_eos_token") != "true":
            log.warning("KEFU_EMBEDDING_MODEL_PATH=%s pools the last token but adds no EOS token: a Qwen3-Embedding "
                        "GGUF converted so gives poor vectors (convert it again: docs/knowledge.md)", self.path)
        return model

    def load(self) -> None:
        """Load the model now (worker start) rather than on the first text."""
        with self._lock:
            if self._model is None:
                self._model = self._load()

    def encode(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock:
            if self._model is None:
                self._model = self._load()
            try:
                rows = self._model.embed(list(texts), normalize=True, truncate=True)  # packed MAX_TOKENS at a time
            except (ValueError, RuntimeError) as exc:
                raise EmbeddingError(f"KEFU_EMBEDDING_MODEL_PATH={self.path}: embedding failed "
                                     f"({type(exc).__name__}: {exc})") from exc
        vectors = np.asarray(rows, dtype=np.float32)
        if vectors.ndim != 2:
            raise EmbeddingError(f"KEFU_EMBEDDING_MODEL_PATH={self.path} returned one vector per token, not one per "
                                 "text: it needs a pooling type (KEFU_EMBEDDING_POOLING)")
        return checked(vectors, len(texts))

    def encode_query(self, text: str) -> Vectors:
        return self._question(text)  # the FAQ's second look and grounding ask for the same question

    def _encode_question(self, text: str) -> Vectors:
        return self.encode([f"{self._settings.embedding_query_instruction}{text}"])

    def close(self) -> None:
        with self._lock:
            if self._model is not None:
                self._model.close()
                self._model = None


def load_encoder(settings: Settings) -> LlamaEncoder | None:
    """The configured encoder (not loaded yet), or None when ``KEFU_EMBEDDING_MODEL_PATH`` is unset."""
    path = settings.embedding_model_path
    if path is None:
        return None
    if not path.is_file():
        raise ConfigError(f"KEFU_EMBEDDING_MODEL_PATH={path} is not a file (an embedding GGUF, e.g. "
                             "Qwen3-Embedding-0.6B-Q8_0.gguf; docs/knowledge.md)")
    return LlamaEncoder(path, settings)
