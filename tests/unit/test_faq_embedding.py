"""The dense path's plumbing on a tiny random-weight qwen3 GGUF (tests/synthetic_gguf.py): llama-cpp-python in
embedding mode, pooled to one normalised vector per text, fused with BM25 in the FAQ index. The vectors mean
nothing (random weights): only shapes, determinism and the wiring are checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.knowledge.faq import FaqEntry
from models.knowledge.faq_index import FaqIndex
from models.settings import Settings
from workers.llm.embedding import EmbeddingError, LlamaEncoder, load_encoder


@pytest.fixture(scope="module")
def encoder(tiny_gguf: Path) -> LlamaEncoder:
    found = load_encoder(Settings(embedding_model_path=tiny_gguf, n_threads=1))
    assert found is not None
    return found


def test_one_normalised_vector_per_text(encoder: LlamaEncoder) -> None:
    vectors = encoder.encode(["几点发货", "怎么开发票？", "几点发货"])
    assert vectors.shape[0] == 3 and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert float(vectors[0] @ vectors[2]) == pytest.approx(1, abs=1e-4)


def test_the_faq_index_fuses_the_encoder(encoder: LlamaEncoder) -> None:
    entries = (FaqEntry("ship", "几点发货？", "A", ("什么时候发货",)), FaqEntry("invoice", "怎么开发票？", "B"))
    index = FaqIndex(entries, encoder)
    assert {m.entry.id for m in index.search("包裹哪天寄出")} == {"ship", "invoice"}  # dense finds what BM25 cannot
    found = index.lookup("什么时候发货")
    assert found is not None and found.entry.id == "ship"


def test_no_path_no_encoder_and_a_missing_file_is_named(tmp_path: Path) -> None:
    assert load_encoder(Settings()) is None
    with pytest.raises(EmbeddingError, match="KEFU_EMBEDDING_MODEL_PATH"):
        load_encoder(Settings(embedding_model_path=tmp_path / "none.gguf"))
