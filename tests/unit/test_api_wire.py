"""The API channel's request checks and wire shapes (pure), and `kefu apikey` (keys hashed at rest)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from sqlalchemy import select

from channels.api import ollama_wire, openai_wire
from channels.api.request import ChatRequest, conversation
from channels.errors import RequestRejected
from models.infra.db import make_engine, make_session_factory
from models.infra.migrate import upgrade
from models.settings import Settings
from models.tables import ApiKeyRecord, AuditEvent
from workers import apikey_command


def rejected(call: object, *args: object) -> RequestRejected:
    with pytest.raises(RequestRejected) as exc:
        call(*args)  # type: ignore[operator]
    return exc.value


def test_conversation_splits_history_and_question() -> None:
    history, question = conversation([{"role": "developer", "content": "简短"}, {"role": "user", "content": "a"},
                                      {"role": "assistant", "content": [{"type": "text", "text": "b"}]},
                                      {"role": "user", "content": "  退货\x00多久 "}], 100)
    assert history == (("system", "简短"), ("user", "a"), ("assistant", "b")) and question == "退货多久"


@pytest.mark.parametrize(("messages", "status", "code"), [
    (None, 400, "missing_messages"),
    ([], 400, "missing_messages"),
    (["hi"], 400, "invalid_message"),
    ([{"role": "tool", "content": "x"}], 400, "unsupported_role"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], 400, "unsupported_content"),
    ([{"role": "user", "content": 3}], 400, "invalid_content"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], 400, "last_message_not_user"),
    ([{"role": "user", "content": "   "}], 422, "empty_question"),
    ([{"role": "user", "content": "x" * 101}], 413, "text_too_long"),
    ([{"role": "user", "content": "\ud800"}], 422, "invalid_messages[0]"),
])
def test_conversation_refusals_say_what_to_fix(messages: object, status: int, code: str) -> None:
    exc = rejected(conversation, messages, 100)
    assert (exc.status, exc.code) == (status, code) and exc.message


def test_peer_is_the_user_or_the_conversation_opening() -> None:
    a = ChatRequest("kefu", (("user", "我买了外套"), ("assistant", "好的")), "退货多久", False)
    later = ChatRequest("kefu", (("user", "我买了外套"), ("assistant", "好的"), ("user", "x"), ("assistant", "y")),
                        "还有呢", True)
    assert a.peer() == later.peer() != ChatRequest("kefu", (), "退货多久", False).peer()
    assert ChatRequest("kefu", (), "q", False, user="alice").peer() == "u:alice"
    assert len(a.peer()) <= 128


def test_openai_parse_and_shapes() -> None:
    chat, usage = openai_wire.parse({"model": "kefu", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                                     "stream_options": {"include_usage": True}, "temperature": 0.3}, 100)
    assert chat.stream and usage and chat.question == "hi"
    assert rejected(openai_wire.parse, {"messages": [{"role": "user", "content": "hi"}]}, 100).code == "missing_model"
    assert rejected(openai_wire.parse, {"model": "k", "n": 2, "messages": []}, 100).code == "unsupported_n"
    assert rejected(openai_wire.parse, {"model": "k", "stream": "yes", "messages": [
        {"role": "user", "content": "hi"}]}, 100).code == "invalid_stream"
    assert openai_wire.error(429, "rate_limited", "slow down")["error"]["type"] == "rate_limit_exceeded"
    assert openai_wire.event("[DONE]") == b"data: [DONE]\n\n"
    assert openai_wire.completion("c", 1, "m", "答", "stop", 3, 2)["usage"]["total_tokens"] == 5


def test_ollama_parse_defaults_to_streaming_and_empty_prompt_loads() -> None:
    assert ollama_wire.parse_chat({"model": "kefu", "messages": [{"role": "user", "content": "hi"}]}, 100).stream
    assert ollama_wire.parse_generate({"model": "kefu", "prompt": ""}, 100) is None
    req = ollama_wire.parse_generate({"model": "kefu", "prompt": "hi", "system": "be brief", "stream": False}, 100)
    assert req is not None and req.history == (("system", "be brief"),) and not req.stream
    final = ollama_wire.final("kefu", "", chat=True, done_reason="stop", total_ns=5, prompt_tokens=1,
                              completion_tokens=2)
    assert final["done"] and final["eval_count"] == 2 and final["message"] == {"role": "assistant", "content": ""}


def test_apikey_add_list_revoke_keeps_only_the_hash(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    upgrade(settings)
    out, err = io.StringIO(), io.StringIO()
    assert apikey_command.run(settings, "add", "dify", out, err) == 0
    key = out.getvalue().strip().splitlines()[-1]
    assert key.startswith("kefu-") and len(key) > 40
    assert apikey_command.run(settings, "add", "dify", io.StringIO(), err) == 1 and "exists already" in err.getvalue()
    assert apikey_command.run(settings, "add", "bad name", io.StringIO(), err) == 1
    assert apikey_command.run(settings, "revoke", "nobody", io.StringIO(), err) == 1
    assert apikey_command.run(settings, "revoke", "dify", io.StringIO(), io.StringIO()) == 0
    listed = io.StringIO()
    assert apikey_command.run(settings, "list", None, listed) == 0
    assert "dify" in listed.getvalue() and "revoked" in listed.getvalue() and key not in listed.getvalue()
    engine = make_engine(settings)
    try:
        with make_session_factory(engine)() as session:
            row = session.scalars(select(ApiKeyRecord)).one()
            kinds = list(session.scalars(select(AuditEvent.kind).where(AuditEvent.channel == "api")))
            details = " ".join(str(d) for d in session.scalars(select(AuditEvent.detail)))
        assert row.key_hash != key and key[12:] not in row.prefix and row.revoked_at is not None
        assert kinds == ["api_key_added", "api_key_revoked"] and key not in details
    finally:
        engine.dispose()
