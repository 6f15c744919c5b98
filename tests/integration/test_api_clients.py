"""The OpenAI- and Ollama-compatible API through the whole pipeline, driven by the official client libraries.

``openai`` and ``ollama`` (the Python clients platforms use) talk to a running gateway; the messages go through
the queue, a real `kefu worker` and llama.cpp (a random-weight Qwen3), and the answer they get is the stored reply,
with its audit trail. Both backends (embedded SQLite, Redis + PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import ollama
import openai
import pytest
from sqlalchemy import select

from models import api_keys
from models.infra.db import transaction
from models.tables import ApiKeyRecord, ApiRequestRecord, AuditEvent, InboundRecord, ReplyRecord
from tests.integration.conftest import Stack, wait_for

TRAIL = ["received", "queued", "generation_started", "generation_finished", "reply_stored", "dispatched", "delivered"]


@pytest.fixture(scope="module")
def key(stack: Stack) -> str:
    with transaction(stack.sessions) as session:
        return api_keys.add(session, f"platform-{stack.backend}")


@pytest.fixture
def oa(stack: Stack, key: str) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=f"{stack.gateway.http_url}/v1", api_key=key, timeout=60, max_retries=0)
    yield client
    client.close()


@pytest.fixture
def ol(stack: Stack, key: str) -> Iterator[ollama.Client]:
    client = ollama.Client(host=stack.gateway.http_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    yield client
    client._client.close()  # the library leaves its httpx client open


def latest_reply(stack: Stack) -> tuple[InboundRecord, ReplyRecord]:
    with stack.sessions() as session:
        inbound = session.scalars(select(InboundRecord).where(InboundRecord.channel == "api")
                                  .order_by(InboundRecord.id.desc()).limit(1)).one()
        reply = session.scalars(select(ReplyRecord).where(ReplyRecord.inbound_id == inbound.id)).one()
        session.expunge_all()
        return inbound, reply


def trail(stack: Stack, inbound_id: int) -> list[str]:
    with stack.sessions() as session:
        return list(session.scalars(select(AuditEvent.kind).where(AuditEvent.inbound_id == inbound_id)
                                    .order_by(AuditEvent.id)))


def settled_trail(stack: Stack, inbound_id: int) -> list[str]:
    wait_for(lambda: trail(stack, inbound_id)[-1:] == ["delivered"], timeout=15)
    return trail(stack, inbound_id)


def test_openai_plain_answer_is_the_stored_model_reply_and_audited(stack: Stack, oa: openai.OpenAI) -> None:
    done = oa.chat.completions.create(model="kefu", messages=[{"role": "user", "content": "你好，订单什么时候发货？"}])
    inbound, reply = latest_reply(stack)
    assert inbound.text == "你好，订单什么时候发货？" and inbound.account == f"platform-{stack.backend}"
    assert done.id == f"chatcmpl-{inbound.external_id}" and done.object == "chat.completion"
    assert done.choices[0].message.role == "assistant" and done.choices[0].message.content == reply.text
    assert reply.source == "model" and done.model == reply.model == "tiny-qwen3"
    assert done.choices[0].finish_reason in ("stop", "length")
    assert done.usage is not None and done.usage.prompt_tokens == reply.prompt_tokens > 0
    assert done.usage.completion_tokens == reply.completion_tokens
    assert settled_trail(stack, inbound.id) in (TRAIL, [k for k in TRAIL if k != "dispatched"])


def test_openai_stream_delivers_the_tokens_then_done(stack: Stack, oa: openai.OpenAI) -> None:
    chunks = list(oa.chat.completions.create(model="kefu", messages=[{"role": "user", "content": "能开发票吗？"}],
                                             stream=True, stream_options={"include_usage": True}))
    inbound, reply = latest_reply(stack)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) >= 2, "the answer was not streamed"
    assert "".join(pieces) == reply.text
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish in (["stop"], ["length"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == reply.completion_tokens
    assert all(c.id == f"chatcmpl-{inbound.external_id}" for c in chunks)
    assert "delivered" in settled_trail(stack, inbound.id)


def test_openai_conversation_from_the_client_is_the_history(stack: Stack, oa: openai.OpenAI) -> None:
    question = [{"role": "user", "content": "退货要多久？"}]
    oa.chat.completions.create(model="kefu", messages=question, user="alone")
    _, alone = latest_reply(stack)
    earlier = [{"role": "system", "content": "回答要简短。"}, {"role": "user", "content": "我买了一件外套"},
               {"role": "assistant", "content": "好的，请问有什么可以帮您？"}]
    oa.chat.completions.create(model="kefu", messages=[*earlier, *question], user="with-history")
    inbound, with_history = latest_reply(stack)
    assert inbound.text == "退货要多久？"
    with stack.sessions() as session:
        stored = session.scalars(select(ApiRequestRecord).where(
            ApiRequestRecord.external_id == inbound.external_id)).one()
    assert stored.messages == [[m["role"], m["content"]] for m in earlier]
    # the model read the client's three earlier messages: its prompt is longer by them
    assert with_history.prompt_tokens > alone.prompt_tokens + 10


def test_openai_models_and_error_shapes(stack: Stack, oa: openai.OpenAI) -> None:
    names = {m.id for m in oa.models.list()}
    assert {"kefu", "tiny-qwen3"} <= names
    bad = openai.OpenAI(base_url=f"{stack.gateway.http_url}/v1", api_key="kefu-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        bad.chat.completions.create(model="kefu", messages=[{"role": "user", "content": "hi"}])
    bad.close()
    assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"
    with pytest.raises(openai.BadRequestError) as last:
        oa.chat.completions.create(model="kefu", messages=[{"role": "assistant", "content": "hi"}])
    assert last.value.code == "last_message_not_user" and "last message" in last.value.message
    with pytest.raises(openai.BadRequestError) as tools:
        oa.chat.completions.create(model="kefu", messages=[{"role": "user", "content": "hi"}],
                                   tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    assert tools.value.code == "unsupported_tools"


def test_revoked_key_is_refused(stack: Stack) -> None:
    with transaction(stack.sessions) as session:
        key = api_keys.add(session, f"short-lived-{stack.backend}")
    with transaction(stack.sessions) as session:
        api_keys.revoke(session, f"short-lived-{stack.backend}")
        row = session.scalars(select(ApiKeyRecord).where(ApiKeyRecord.name == f"short-lived-{stack.backend}")).one()
        assert row.key_hash == api_keys.digest(key) and key not in (row.key_hash, row.prefix)
    r = httpx.post(f"{stack.gateway.http_url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                   json={"model": "kefu", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_ollama_chat_plain_and_streaming(stack: Stack, ol: ollama.Client) -> None:
    done = ol.chat(model="kefu", messages=[{"role": "user", "content": "你们几点上班？"}], stream=False)
    inbound, reply = latest_reply(stack)
    assert inbound.text == "你们几点上班？"
    assert done.done and done.message.role == "assistant" and done.message.content == reply.text
    assert done.eval_count == reply.completion_tokens and done.prompt_eval_count == reply.prompt_tokens
    assert "delivered" in settled_trail(stack, inbound.id)

    parts = list(ol.chat(model="kefu", messages=[{"role": "user", "content": "这件衣服有别的颜色吗？"}], stream=True))
    inbound, reply = latest_reply(stack)
    assert parts[-1].done and parts[-1].done_reason in ("stop", "length")
    assert sum(1 for p in parts[:-1] if p.message.content) >= 2
    assert "".join(p.message.content or "" for p in parts) == reply.text
    assert "delivered" in settled_trail(stack, inbound.id)


def test_ollama_generate_tags_and_errors(stack: Stack, ol: ollama.Client) -> None:
    done = ol.generate(model="kefu", prompt="会员有什么权益？", system="你是客服。", stream=False)
    inbound, reply = latest_reply(stack)
    assert inbound.text == "会员有什么权益？" and done.response == reply.text and done.done
    streamed = list(ol.generate(model="kefu", prompt="运费多少钱？", stream=True))
    _, reply = latest_reply(stack)
    assert "".join(p.response for p in streamed) == reply.text and streamed[-1].done
    assert {"kefu", "tiny-qwen3"} <= {m.model for m in ol.list().models}
    keyless = ollama.Client(host=stack.gateway.http_url)
    with pytest.raises(ollama.ResponseError) as refused:
        keyless.chat(model="kefu", messages=[{"role": "user", "content": "hi"}], stream=False)
    keyless._client.close()
    assert refused.value.status_code == 401 and "API key" in refused.value.error
    with pytest.raises(ollama.ResponseError) as bad:
        ol.chat(model="kefu", messages=[{"role": "assistant", "content": "hi"}], stream=False)
    assert bad.value.status_code == 400
    assert httpx.get(f"{stack.gateway.http_url}/api/version").json()["version"]
