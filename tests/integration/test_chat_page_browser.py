"""The chat page at / as a visitor uses it, in Debian's headless Chromium (tests/browser/chat_rules.mjs).

A real stack (embedded backend, an FAQ configured) serves the page; playwright-core types into the
page's own text box and sends. The visitor sees the FAQ answer for an FAQ question, the honest
"no person here" answer for 转人工 and nowhere a promise of a person, and a model answer for anything
else. The database confirms that the first two were answered by the rules, without generation.

Around that (issue 13): the welcome bubble (KEFU_WEB_WELCOME_MESSAGE) is shown first and never stored; an Enter
confirming an IME composition sends nothing; a message over KEFU_MAX_TEXT_CHARS comes back into the text box with
a Chinese error; the model's answer, cut at KEFU_MAX_TOKENS, carries the 已截断 marker exactly when its
``generation_finished`` audit row says it stopped early; every text is at least 4.5:1 against its background;
and a page on another origin opens the chat through /v1/web/widget.js, where a message round-trips.
Needs `make system` (chromium, a CJK font) and `make tests/browser/node_modules` (both part of `make test`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from models.tables import AuditEvent, InboundRecord, ReplyRecord
from models.transcript import CUT_FINISH_REASONS
from tests.integration.conftest import Stack, start_stack, wait_for

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "browser" / "chat_rules.mjs"
CHROMIUM = Path("/usr/bin/chromium")
FAQ: list[dict[str, Any]] = [{"keywords": ["发票"], "answer": "电子发票会在发货后24小时内发送到您的邮箱。"}]
FAQ_QUESTION = "请问可以开发票吗？"
QUESTION = "你好，请问我的快递什么时候能到？"
WELCOME = "您好，我是智能客服，请问有什么可以帮您？"
MAX_TEXT_CHARS = 300  # the refused message: one more than this
MAX_TOKENS = 24  # the tiny model's answer runs into it: a cut reply (no stop token comes this early)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[Stack]:
    # One backend is enough here: test_web_rules.py runs the same rules on both.
    s = start_stack("embedded", tmp_path_factory.mktemp("chat-page-browser"), tiny_gguf, None, None, faq=FAQ,
                    web_welcome_message=WELCOME, max_text_chars=MAX_TEXT_CHARS, max_tokens=MAX_TOKENS)
    try:
        yield s
    finally:
        s.close()


def run_page(stack: Stack, screenshot: Path) -> dict[str, Any]:
    node = shutil.which("node")
    assert node, "node is not on PATH"
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run `make system`"
    assert (SCRIPT.parent / "node_modules" / "playwright-core").is_dir(), \
        "playwright-core is not installed: run `make tests/browser/node_modules`"
    settings = stack.settings
    command = [node, str(SCRIPT), "--url", f"{stack.gateway.http_url}/", "--screenshot", str(screenshot),
               "--faq-question", FAQ_QUESTION, "--faq-answer", FAQ[0]["answer"],
               "--handoff-answer", settings.handoff_unavailable_reply, "--promise", settings.handoff_reply,
               "--fallback", settings.fallback_reply, "--question", QUESTION, "--timeout-ms", "60000",
               "--welcome", WELCOME, "--too-long", str(MAX_TEXT_CHARS + 1)]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert run.returncode == 0, f"the chat page failed in Chromium (exit {run.returncode}):\n{run.stderr}\n{run.stdout}"
    return dict(json.loads(run.stdout))


def trail(stack: Stack, inbound_id: int) -> list[str]:
    with stack.sessions() as session:
        return list(session.scalars(select(AuditEvent.kind).where(AuditEvent.inbound_id == inbound_id)
                                    .order_by(AuditEvent.id)))


@pytest.mark.timeout(420)
def test_a_visitor_on_the_chat_page_gets_the_rules_and_the_model(stack: Stack, tmp_path: Path) -> None:
    screenshot = tmp_path / "chat-page.png"
    result = run_page(stack, screenshot)

    assert result["ok"] is True and all(c["ok"] for c in result["checks"]), result["checks"]
    assert screenshot.is_file() and screenshot.stat().st_size > 0
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    settings = stack.settings
    assert result["conversation"][0] == {"who": "welcome", "text": WELCOME, "marker": None}
    said = [b for b in result["conversation"] if b["who"] in ("visitor", "kefu")]
    assert [(b["who"], b["text"]) for b in said[:4]] == [
        ("visitor", FAQ_QUESTION), ("kefu", FAQ[0]["answer"]),
        ("visitor", "转人工"), ("kefu", settings.handoff_unavailable_reply),
    ]
    assert said[4] == {"who": "visitor", "text": QUESTION, "marker": None}
    assert result["refusal"]["code"] == "text_too_long"
    assert min(c["ratio"] for c in result["contrast"]) >= 4.5
    assert result["widget"]["answer"] == FAQ[0]["answer"]
    turns = {t["rule"]: t for t in result["turns"]}
    assert set(turns) == {"faq", "asks_for_person_none_available", "model"}
    assert turns["model"]["tokens"] > 0 and turns["model"]["shown"] == said[5]["text"]

    # What the page typed reached the database as the visitor's messages, and the rules answered
    # the first two without generation; the third went to the model.
    expected = {"faq": (FAQ_QUESTION, "faq"), "asks_for_person_none_available": ("转人工", "rule"),
                "model": (QUESTION, "model")}
    with stack.sessions() as session:  # the welcome is shown, never stored as anyone's message
        assert session.scalars(select(InboundRecord.id).where(InboundRecord.text == WELCOME)).first() is None
        assert session.scalars(select(InboundRecord.id).where(InboundRecord.text.like("很很很%"))).first() is None
    for rule, (text, source) in expected.items():
        inbound_id = int(turns[rule]["message_id"])
        wait_for(lambda i=inbound_id: "reply_stored" in trail(stack, i), timeout=30)
        with stack.sessions() as session:
            inbound = session.get(InboundRecord, inbound_id)
            assert inbound is not None and inbound.text == text
            stored = session.scalars(select(ReplyRecord).where(ReplyRecord.inbound_id == inbound_id)).one()
            assert stored.source == source and stored.text == turns[rule]["shown"]
            detail = session.scalars(select(AuditEvent.detail).where(
                AuditEvent.inbound_id == inbound_id, AuditEvent.kind == "reply_stored")).one()
        kinds = trail(stack, inbound_id)
        if rule == "model":
            assert "generation_started" in kinds, kinds
            with stack.sessions() as session:
                finished = session.scalars(select(AuditEvent.detail).where(
                    AuditEvent.inbound_id == inbound_id, AuditEvent.kind == "generation_finished")).one()
            # the page marks the reply exactly when the model stopped early, and here it did (at MAX_TOKENS, or at
            # the deadline on a machine slow enough)
            assert finished["finish_reason"] in CUT_FINISH_REASONS, finished
            assert turns[rule]["truncated"] is True and turns[rule]["marker"] == "（回复过长，已截断）"
        else:
            assert turns[rule]["truncated"] is False and turns[rule]["marker"] is None
            assert "generation_started" not in kinds, kinds
            assert (detail["source"], detail["rule"]) == (source, rule)
