"""A web message answered through KEFU_LLM_BACKEND=openai: gateway → queue → a real `kefu worker` process whose engine
is an OpenAI-compatible upstream (llama-cpp-python's own server on the tiny GGUF, tests/openai_server.py) → reply
row → audit, which names the upstream model; the worker's heartbeat names the model and where it is served."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import select

from models.infra import heartbeat
from models.infra.kv import make_kv
from models.tables import AuditEvent, ReplyRecord
from tests.integration.conftest import Stack, start_stack, wait_for
from tests.openai_server import OpenAIServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def upstream_stack(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, OpenAIServer]]:
    data_dir = tmp_path_factory.mktemp("upstream-stack")
    with OpenAIServer(tiny_gguf, data_dir / "server.log") as server:
        # model_path stays the tiny GGUF's: with the openai backend the worker must not load it (nor need it)
        with closing(start_stack("embedded", data_dir, tiny_gguf, None, None, llm_backend="openai",
                                 upstream_urls=[server.url], upstream_model=server.alias,
                                 upstream_api_key=server.api_key)) as stack:
            yield stack, server


def test_a_web_message_is_answered_by_the_upstream_and_audited(upstream_stack: tuple[Stack, OpenAIServer]) -> None:
    stack, server = upstream_stack
    visitor_id, token = stack.visitor()
    with stack.http() as http:
        posted = http.post("/v1/web/messages", json={"visitor_id": visitor_id, "text": "你好，请问可以开发票吗？"},
                           headers={"Authorization": f"Bearer {token}"})
    assert posted.status_code == 202
    message_id = posted.json()["message_id"]

    def reply() -> ReplyRecord | None:
        with stack.sessions() as session:
            return session.scalars(select(ReplyRecord).where(ReplyRecord.inbound_id == message_id)).one_or_none()

    stored = wait_for(reply)
    assert stored.source == "model" and stored.text.strip()
    assert stored.model == server.alias and stored.completion_tokens > 0 and stored.prompt_tokens > 0
    with stack.sessions() as session:
        kinds = list(session.scalars(select(AuditEvent.kind).where(AuditEvent.inbound_id == message_id)
                                     .order_by(AuditEvent.id)))
        finished = session.scalars(select(AuditEvent).where(
            AuditEvent.inbound_id == message_id, AuditEvent.kind == "generation_finished")).one()
    assert "generation_failed" not in kinds and kinds.index("generation_started") < kinds.index("generation_finished")
    assert finished.detail["model"] == server.alias
    assert finished.detail["completion_tokens"] == stored.completion_tokens
    assert finished.detail["finish_reason"] in ("stop", "length")

    kv = make_kv(stack.settings)
    try:
        beats = heartbeat.alive(kv)
    finally:
        getattr(kv, "close", lambda: None)()
    assert beats and all(beat.loaded for beat in beats)
    assert beats[0].model == f"{server.alias} (openai upstream http://127.0.0.1:{server.port})"
    assert server.api_key not in stack.worker.log_path.read_text()
