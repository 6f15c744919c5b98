"""The console extras in Debian's headless Chromium (tests/browser/console_extras.mjs) against a real gateway (embedded
backend): an admin logs in, saves a canned reply on /console/kb, uploads and deletes a document there, adds a note
and a tag to a conversation, takes it over and inserts the canned reply by typing its shortcut, sends it, makes that
reply an FAQ with an edited answer, edits an FAQ sheet's entry on /console/kb and opens /console/reports. The
database confirms each step, and the dialogue decision then answers the customer's question with the approved answer
and the sheet's question with the edited one (the FAQ data loop). Every text on the three pages is at least 4.5:1
against its background. With KEFU_UPDATE_SCREENSHOTS=1 the run saves docs/console-kb.png.

Needs `make system` (chromium, a CJK font) and `make tests/browser/node_modules`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from channels.ingress import Ingress
from models.dialogue import HandOff, Message, decide
from models.envelope import ConversationKey, Inbound
from models.infra.db import make_engine, make_session_factory, transaction
from models.infra.migrate import upgrade
from models.knowledge import approved, faq_cache, store
from models.knowledge.documents import FaqRow, ParsedDocument
from models.knowledge.faq_sync import FaqSync
from models.settings import Settings
from models.states import ReplySource
from models.tables import AuditEvent, ConversationNoteRecord, ConversationTagRecord, InboundRecord, ReplyRecord
from workers import user_command
from workers.demo.processes import GatewayThread

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "browser" / "console_extras.mjs"
CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "console-extras-pass"
QUESTION = "积分可以抵扣运费吗"
CANNED = "可以的，100 积分抵 1 元运费，结算时勾选“使用积分”即可。"
FAQ_ANSWER = "可以：100 积分抵 1 元运费，结算页勾选“使用积分”。"
KB_ANSWER = "付款后 24 小时内发货（节假日顺延）。"
NOTE = "客户是老会员，语气友好"
SHEET = ParsedDocument("faq/shipping.csv", "配送问答", "faq_csv", "c" * 64, faq=(
    FaqRow("多久发货", ("什么时候发货",), "付款后 48 小时内发货。"), FaqRow("支持哪些快递", (), "默认顺丰。")))


class Published:
    def handle_inbound(self, inbound_id: int) -> None:
        pass

    def deliver(self, reply_id: int) -> None:
        pass


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, sessionmaker[Session], GatewayThread]]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("console-extras-browser"), intent_model="off",
                        secret_key="test-secret")
    upgrade(settings)
    engine = make_engine(settings)
    gateway = GatewayThread(settings).start()
    faq_cache.install([])
    try:
        yield settings, make_session_factory(engine), gateway
    finally:
        gateway.stop()
        engine.dispose()
        faq_cache.install([])


def run_console(url: str, conversation_id: int, shot: Path) -> dict[str, Any]:
    node = shutil.which("node")
    assert node, "node is not on PATH"
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run `make system`"
    assert (SCRIPT.parent / "node_modules" / "playwright-core").is_dir(), \
        "playwright-core is not installed: run `make tests/browser/node_modules`"
    command = [node, str(SCRIPT), "--url", url, "--username", "boss", "--password", PASSWORD,
               "--conversation", str(conversation_id), "--note", NOTE, "--tag", "VIP", "--shortcut", "refund",
               "--canned-text", CANNED, "--faq-answer", FAQ_ANSWER, "--kb-answer", KB_ANSWER, "--kb-shot", str(shot),
               "--timeout-ms", "60000", "--conversation-shot", str(shot.with_name("console-extras-conversation.png"))]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert run.returncode == 0, f"the console failed in Chromium (exit {run.returncode}):\n{run.stderr}\n{run.stdout}"
    return dict(json.loads(run.stdout))


@pytest.mark.timeout(300)
def test_an_admin_uses_notes_tags_canned_replies_and_the_knowledge_base(
        gateway: tuple[Settings, sessionmaker[Session], GatewayThread], tmp_path: Path) -> None:
    settings, sessions, gw = gateway
    assert user_command.add(sessions, "boss", "admin", "主管", lambda: PASSWORD, io.StringIO()) == 0
    accepted = Ingress(sessions, Published()).accept(  # type: ignore[arg-type]
        Inbound(ConversationKey("web", "default", "visitor-browser"), "m1", QUESTION))
    with transaction(sessions) as session:
        inbound = session.get(InboundRecord, accepted.inbound_id)
        assert inbound is not None
        conversation_id = inbound.conversation_id
        session.add(ReplyRecord(inbound_id=inbound.id, conversation_id=conversation_id, source=ReplySource.MODEL,
                                text="您好，积分的用法请见会员中心。"))
        store.import_document(session, SHEET, by="cli")
    shot = tmp_path / "console-kb.png"

    result = run_console(gw.http_url, conversation_id, shot)

    assert result["ok"] is True and all(c["ok"] for c in result["checks"]), result["checks"]
    assert (result["inserted"], result["faq_question"]) == (CANNED, QUESTION)
    with sessions() as session:
        assert list(session.scalars(select(ConversationNoteRecord.text)
                                    .where(ConversationNoteRecord.conversation_id == conversation_id))) == [NOTE]
        assert list(session.scalars(select(ConversationTagRecord.tag)
                                    .where(ConversationTagRecord.conversation_id == conversation_id))) == ["VIP"]
        agent_reply = session.scalars(select(ReplyRecord).where(ReplyRecord.conversation_id == conversation_id,
                                                                ReplyRecord.source == ReplySource.AGENT)).one()
        assert (agent_reply.text, agent_reply.inbound_id) == (CANNED, None)
        [answer] = approved.approved(session)
        assert (answer.reply_id, answer.question, answer.answer) == (agent_reply.id, QUESTION, FAQ_ANSWER)
        by = {kind: detail["by"] for kind, detail in session.execute(
            select(AuditEvent.kind, AuditEvent.detail).where(AuditEvent.kind.in_(
                ["answer_approved", "kb_faq_edited", "console_note_added", "console_tagged", "console_canned_saved"])))}
    assert by == {"answer_approved": "boss", "kb_faq_edited": "boss", "console_note_added": "boss",
                  "console_tagged": "boss", "console_canned_saved": "boss"}
    with sessions() as session:  # the uploaded file, imported and deleted by the admin; gone from the store
        kb = [(kind, detail["by"]) for kind, detail in session.execute(
            select(AuditEvent.kind, AuditEvent.detail).where(AuditEvent.kind.in_(["kb_imported", "kb_deleted"]))
            .order_by(AuditEvent.id))]
        assert [d.source for d in store.documents(session)] == [SHEET.source, store.approved_source(agent_reply.id)]
    # the sheet (cli), the approved answer, the upload, its deletion
    assert kb == [("kb_imported", "cli"), ("kb_imported", "boss"), ("kb_imported", "boss"), ("kb_deleted", "boss")]

    # the FAQ data loop: a later customer's question gets the approved answer and the edited entry, without the model
    assert FaqSync(sessions, settings).poll()
    later = decide(settings, Message(QUESTION), HandOff.PERSON)
    assert (later.source, later.text, later.why) == (ReplySource.APPROVED, FAQ_ANSWER,
                                                     f"approved_answer:{agent_reply.id}")
    shipping = decide(settings, Message("多久发货"), HandOff.PERSON)
    assert (shipping.why, shipping.text) == ("faq", KB_ANSWER)

    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("KEFU_UPDATE_SCREENSHOTS"):  # the docs' picture, on request (a test run changes no file)
        shutil.copyfile(shot, REPO / "docs" / "console-kb.png")
