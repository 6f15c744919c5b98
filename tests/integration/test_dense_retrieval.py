"""Dense retrieval in a real worker process (embedded stack): with ``KEFU_EMBEDDING_MODEL_PATH`` naming a tiny
random-weight embedding GGUF, the worker loads it, encodes a knowledge base imported while it runs, and the
sources of a model answer come from the fused ranking (``kb_used`` says ``dense``). The vectors are random, so only
the plumbing is checked: the floor is -1, so the embedding ranking always contributes, and even a question the
lexical index finds nothing for gets the passages. The passages are hand-written for this test (a fictional shop).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from models.infra.db import transaction
from models.knowledge import store
from models.tables import KbPassageRecord
from tests.integration.conftest import Stack, start_stack, wait_for
from tests.integration.test_kb_grounding import POLICY, ask
from tests.synthetic_gguf import write_qwen3_gguf
from workers import kb_command


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("dense")
    embedding = write_qwen3_gguf(root / "tiny-embedding.gguf", pooling_type=3, name="kefu-tiny-embedding")
    s = start_stack("embedded", root / "stack", tiny_gguf, None, None, embedding_model_path=str(embedding),
                    embedding_min_similarity=-1.0)
    try:
        yield s
    finally:
        s.close()


def test_the_worker_gives_the_model_the_fused_sources(stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "policy.md").write_text(POLICY)
    assert kb_command.import_paths(stack.sessions, [str(tmp_path / "policy.md")], io.StringIO(), io.StringIO()) == 0
    try:
        with stack.sessions() as session:
            passages = set(session.scalars(select(KbPassageRecord.id)).all())
        question = "你们的店铺在哪个城市？"  # the lexical index finds nothing for it (test_kb_grounding.py)
        after = wait_for(lambda: (rows := ask(stack, question)) and "kb_used" in rows
                         and rows["kb_used"].detail["dense"] and rows, timeout=90, interval=0.5)
        used = after["kb_used"].detail
        assert used["dense"] is True and set(used["passages"]) == passages  # both passages, from the dense side
        assert after["reply_stored"].detail["source"] in ("model", "fallback")  # no FAQ: the model answered
    finally:
        with transaction(stack.sessions) as session:
            for document in store.documents(session):
                store.delete_document(session, document.id)
