"""The dense path's plumbing on tiny random-weight qwen3 GGUFs (tests/synthetic_gguf.py) run by llama-cpp-python in
embedding mode: load, pooling from the GGUF or from KEFU_EMBEDDING_POOLING, one normalised vector per text, the
knowledge base encoded and fused in the worker's grounding and FAQ, and nothing at all when unset. The weights are
random, so the vectors mean nothing: only shapes, determinism and the wiring are checked (what the fusion does with
meaningful vectors is tests/unit/test_dense_retrieval.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine

from models.infra.db import make_session_factory, transaction
from models.knowledge import readers, store
from models.knowledge.dense import DenseIndex
from models.settings import ConfigError, FaqEntry, Settings
from tests.synthetic_gguf import write_qwen3_gguf
from workers.dense_faq import DenseFaqMatcher
from workers.grounding import Knowledge
from workers.llm.embedding import EmbeddingError, LlamaEncoder, load_encoder
from workers.runtime import Runtime

LAST = 3  # gguf.PoolingType.LAST


@pytest.fixture(scope="module")
def embedding_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight qwen3 GGUF that names its pooling, as a converted Qwen3-Embedding does."""
    return write_qwen3_gguf(tmp_path_factory.mktemp("embedding") / "tiny-embedding.gguf", pooling_type=LAST,
                            name="kefu-tiny-embedding")


@pytest.fixture(scope="module")
def encoder(embedding_gguf: Path) -> LlamaEncoder:
    found = load_encoder(Settings(embedding_model_path=embedding_gguf, n_threads=1, n_gpu_layers=0))
    assert found is not None
    return found


def test_one_normalised_vector_per_text_and_the_same_text_the_same_vector(encoder: LlamaEncoder) -> None:
    vectors = encoder.encode(["几点发货", "怎么开发票？", "几点发货", "x" * 5000])  # the last is cut, not refused
    assert vectors.shape == (4, 64) and vectors.dtype == np.float32 and encoder.dimension == 64
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert float(vectors[0] @ vectors[2]) == pytest.approx(1, abs=1e-4)
    assert float(vectors[0] @ vectors[1]) < 0.9999
    assert encoder.encode([]).shape == (0, 64)
    alone = np.concatenate([encoder.encode([text]) for text in ("几点发货", "怎么开发票？")])
    assert np.allclose(alone, vectors[:2], atol=1e-4)  # texts encoded together do not see each other


def test_the_query_instruction_goes_before_questions_only(embedding_gguf: Path) -> None:
    plain = load_encoder(Settings(embedding_model_path=embedding_gguf, n_threads=1, n_gpu_layers=0))
    instructed = load_encoder(Settings(embedding_model_path=embedding_gguf, n_threads=1, n_gpu_layers=0,
                                       embedding_query_instruction="Instruct: 找出回答顾客问题的资料\nQuery:"))
    assert plain is not None and instructed is not None
    assert np.allclose(plain.encode(["退货"]), instructed.encode(["退货"]), atol=1e-5)
    assert not np.allclose(plain.encode_query("退货"), instructed.encode_query("退货"), atol=1e-3)
    assert instructed.encode_query("退货") is instructed.encode_query("退货")  # encoded once, kept for grounding


def test_a_gguf_without_pooling_needs_the_setting(tiny_gguf: Path) -> None:
    unnamed = load_encoder(Settings(embedding_model_path=tiny_gguf, n_threads=1, n_gpu_layers=0))
    assert unnamed is not None
    with pytest.raises(EmbeddingError, match="KEFU_EMBEDDING_POOLING"):
        unnamed.encode(["退货"])
    for pooling in ("last", "mean"):
        named = load_encoder(Settings(embedding_model_path=tiny_gguf, n_threads=1, n_gpu_layers=0,
                                      embedding_pooling=pooling))
        assert named is not None and named.encode(["退货", "发货"]).shape == (2, 64)


def test_unset_is_off_and_a_missing_file_is_named(clean_env: Path) -> None:
    settings = Settings(data_dir=clean_env / "var")
    assert load_encoder(settings) is None
    runtime = Runtime(settings)
    assert runtime.encoder is None and runtime.dense_faq is None
    with pytest.raises(ConfigError, match="KEFU_EMBEDDING_MODEL_PATH"):
        load_encoder(Settings(embedding_model_path=clean_env / "none.gguf"))
    not_a_model = clean_env / "notes.gguf"
    not_a_model.write_text("not a model")
    broken = load_encoder(Settings(embedding_model_path=not_a_model, embedding_pooling="last"))
    assert broken is not None
    with pytest.raises(EmbeddingError, match="KEFU_EMBEDDING_MODEL_PATH"):
        broken.encode(["退货"])


def test_a_worker_with_a_missing_model_file_does_not_start(clean_env: Path) -> None:
    from workers.celery_app import create_app

    with pytest.raises(ConfigError, match="KEFU_EMBEDDING_MODEL_PATH"):
        create_app(Settings(data_dir=clean_env / "var", embedding_model_path=clean_env / "none.gguf"))


def test_the_worker_encodes_the_knowledge_base_and_fuses_it(db: Engine, clean_env: Path,
                                                            encoder: LlamaEncoder) -> None:
    (clean_env / "policy.md").write_text("# 售后政策\n\n## 退货\n\n签收后7天内可以无理由退货。\n\n"
                                         "## 发货\n\n下单后24小时内发货。\n")
    with transaction(make_session_factory(db)) as session:
        store.import_document(session, readers.read(clean_env / "policy.md"))
    knowledge = Knowledge(make_session_factory(db), encoder=encoder, min_similarity=-1.0)
    grounding = knowledge.lookup("包裹哪天寄出")
    assert grounding is not None and grounding.dense and len(grounding.sources) == 2  # random vectors: any order
    assert grounding.audit_detail()["dense"] is True
    settings = Settings(data_dir=clean_env / "var", faq=[
        FaqEntry(question=q, similar=[f"{q}呢", f"请问{q}"], answer=f"答{n}")
        for n, q in enumerate(["几点发货", "怎么开发票", "退款多久到账", "积分怎么用"])])
    found = DenseFaqMatcher(encoder, settings).match("包裹哪天寄出")
    assert found is None or found.dense > 0  # random weights: calibrated or not, it runs and never crashes


class SlowModel:
    """Stands in for the loaded llama.cpp model: each embed() call takes 50 ms (records what it was given)."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def embed(self, texts: list[str], normalize: bool, truncate: bool) -> list[list[float]]:
        time.sleep(0.05)
        self.calls.append(texts)
        return [[1.0, 0.0] for _ in texts]


def test_a_question_waits_for_one_batch_of_a_bulk_encoding_not_all_of_it(clean_env: Path) -> None:
    (clean_env / "m.gguf").write_bytes(b"")
    encoder = LlamaEncoder(clean_env / "m.gguf", Settings(embedding_query_instruction="Q:"))
    encoder._model = model = SlowModel()
    bulk = threading.Thread(target=DenseIndex.build, args=(encoder, [f"passage {n}" for n in range(40)]))
    bulk.start()  # 10 batches of 4: 0.5 s
    time.sleep(0.12)
    started = time.monotonic()
    assert encoder.encode_query("退货").shape == (1, 2)
    waited = time.monotonic() - started
    bulk.join()
    at = model.calls.index(["Q:退货"])
    assert 0 < at < len(model.calls) - 3 and waited < 0.3  # between two batches, not after all of them
