"""Dense text embeddings from an embedding GGUF through llama-cpp-python: the worker's
:class:`~models.knowledge.dense.DenseEncoder`.

:func:`load_encoder` returns None unless ``KEFU_EMBEDDING_MODEL_PATH`` names a file, else a :class:`LlamaEncoder`
whose model loads on the first :meth:`~LlamaEncoder.encode`, in the process that uses it (never in a prefork parent).
The model's own pooling is used (Qwen3-Embedding GGUFs say "last", bge-m3 "cls"); a GGUF that names none (a plain
decoder such as the tests' random-weight qwen3) is pooled on its last token, as Qwen3-Embedding is. Vectors are
L2-normalised float32 rows. One call at a time per encoder (llama.cpp contexts are not thread-safe).

For a real model: download e.g. Qwen3-Embedding-0.6B's GGUF, set ``KEFU_EMBEDDING_MODEL_PATH`` to it; the FAQ
index built with the encoder fuses BM25's and the encoder's rankings (reciprocal rank fusion) and its answers stay
gated by the lexical confidence (see models/knowledge/dense.py for what is still to calibrate).

Raises :class:`EmbeddingError` when the file cannot be loaded or a text cannot be embedded.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.settings import Settings


class EmbeddingError(RuntimeError):
    """The embedding model could not be loaded or could not embed a text."""


class LlamaEncoder:
    def __init__(self, path: Path, n_threads: int | None = None, n_ctx: int = 512) -> None:
        self.path, self.n_threads, self.n_ctx = path, n_threads, n_ctx
        self._lock = threading.Lock()
        self._model: Any = None

    def _load(self) -> Any:
        import llama_cpp

        threads = self.n_threads or max(1, len(os.sched_getaffinity(0)))
        common: dict[str, Any] = {"model_path": str(self.path), "verbose": False}
        try:
            probe = llama_cpp.Llama(vocab_only=True, **common)  # reads the metadata only
            named = any(key.endswith(".pooling_type") for key in probe.metadata)
            probe.close()
            pooling = llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED if named else llama_cpp.LLAMA_POOLING_TYPE_LAST
            return llama_cpp.Llama(embedding=True, pooling_type=pooling, n_ctx=self.n_ctx, n_batch=self.n_ctx,
                                   n_ubatch=self.n_ctx, n_threads=threads, **common)
        except (ValueError, RuntimeError, OSError) as exc:
            raise EmbeddingError(f"KEFU_EMBEDDING_MODEL_PATH={self.path}: cannot load it as an embedding model "
                                 f"({type(exc).__name__}: {exc})") from exc

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        with self._lock:
            if self._model is None:
                self._model = self._load()
            try:
                vectors = np.asarray(self._model.embed([t[: self.n_ctx] for t in texts], normalize=True),
                                     dtype=np.float32)
            except (ValueError, RuntimeError) as exc:
                raise EmbeddingError(f"embedding failed ({type(exc).__name__}: {exc})") from exc
        if vectors.ndim != 2 or len(vectors) != len(texts):
            raise EmbeddingError(f"the model returned {vectors.shape} for {len(texts)} texts: not one pooled vector "
                                 "per text (is it an embedding model?)")
        return vectors


def load_encoder(settings: Settings) -> LlamaEncoder | None:
    path = settings.embedding_model_path
    if path is None:
        return None
    if not path.is_file():
        raise EmbeddingError(f"KEFU_EMBEDDING_MODEL_PATH={path} is not a file")
    return LlamaEncoder(path, settings.n_threads)
