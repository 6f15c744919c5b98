"""The model's reply never carries a full ID, card or mobile number: not in the streamed pieces
(workers.answering._run_model), not in the answer it makes and stores (workers.answering._generated, store, on
a real SQLite database), nor where the phone shortens it to what the caller heard; outbound moderation masks
or replaces it (workers.answering._moderated), audited.
Audit details are masked too (models.audit.record)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select

from channels.telephony.call import Call
from channels.telephony.outbound import HEARD_KEY, INTERRUPTED_MARK
from models import audit
from models.dialogue import HandOff
from models.envelope import ConversationKey, Turn
from models.infra.db import make_engine, make_session_factory, transaction
from models.infra.kv import make_kv
from models.infra.migrate import upgrade
from models.replies import Answer, store_reply
from models.settings import Settings
from models.states import ReplySource
from models.tables import AuditEvent, ConversationRecord, InboundRecord, ReplyRecord
from workers import answering
from workers.llm.engine import Generation

ID_CARD, CARD, MOBILE = "11010519491231002X", "4111111111111111", "13812345678"
REPLY = f"好的，已记录您的身份证{ID_CARD}、卡号{CARD}和手机{MOBILE}，我们会尽快处理。"
MASKED = "好的，已记录您的身份证110105********002X、卡号4111********1111和手机138****5678，我们会尽快处理。"


class ScriptedEngine:
    """Streams a fixed reply a few characters at a time, as the model's tokens would arrive."""

    def __init__(self, text: str, step: int = 3) -> None:
        self.text, self.step = text, step

    def generate(self, turns: list[Turn], *, on_text: Any = None, deadline: float | None = None) -> Generation:
        for i in range(0, len(self.text), self.step):
            if on_text is not None:
                on_text(self.text[i:i + self.step])
        return Generation(self.text, "scripted", 10, 20, "stop", 0.01, 0.02)


class Recorder:
    def __init__(self) -> None:
        self.pieces: list[str] = []

    def stream(self, key: ConversationKey, inbound_id: int, piece: str) -> None:
        self.pieces.append(piece)


def runtime(settings: Settings, engine: ScriptedEngine, outbound: Recorder) -> Any:
    return SimpleNamespace(settings=settings, llm=engine, gray=None, outbound=lambda channel: outbound,
                           channel=lambda channel: SimpleNamespace(streams=True))


def test_streamed_pieces_never_reveal_a_full_number(clean_env: Path) -> None:
    for step in (1, 2, 3, 4, 7):
        outbound = Recorder()
        rt = runtime(Settings(), ScriptedEngine(REPLY, step), outbound)
        row = SimpleNamespace(id=1)
        run = answering._run_model(rt, row, ConversationKey("web", "default", "v1"), [], None)  # type: ignore[arg-type]
        assert run.generation is not None and run.failure is None
        streamed = "".join(outbound.pieces)
        assert streamed == MASKED
        for secret in (ID_CARD, CARD, MOBILE):
            assert all(secret not in "".join(outbound.pieces[:n]) for n in range(len(outbound.pieces) + 1))


def test_outbound_moderation_masks_or_replaces(clean_env: Path) -> None:
    words = clean_env / "moderation.txt"
    words.write_text("内部价 refuse\n垃圾 mask\n", encoding="utf-8")
    rt = SimpleNamespace(settings=Settings(moderation_file=words))
    assert answering._moderated(rt, "这个垃圾袋很好用", ReplySource.MODEL, HandOff.NOBODY) == (  # type: ignore[arg-type]
        "这个**袋很好用", ReplySource.MODEL, "moderated_out:mask:keyword:2")
    text, source, why = answering._moderated(rt, "内部价是50元", ReplySource.MODEL, HandOff.NOBODY)  # type: ignore[arg-type]
    assert (text, source, why) == (rt.settings.fallback_reply, ReplySource.FALLBACK, "moderated_out:refuse:keyword:1")
    assert answering._moderated(rt, "内部价", ReplySource.FAQ, HandOff.NOBODY) == (  # type: ignore[arg-type]
        "内部价", ReplySource.FAQ, None)  # operators' own texts are not moderated


def two_messages(settings: Settings) -> tuple[Any, list[tuple[int, int]]]:
    """A migrated SQLite database with two customer messages: the session factory, [(inbound id, conversation id)]."""
    upgrade(settings)
    sessions = make_session_factory(make_engine(settings))
    with transaction(sessions) as session:
        conversation = ConversationRecord(channel="web", account="default", peer="v1")
        session.add(conversation)
        session.flush()
        rows = [InboundRecord(conversation_id=conversation.id, channel="web", account="default", external_id=str(n),
                              kind="text", text="hi", status="queued") for n in range(2)]
        session.add_all(rows)
        session.flush()
        return sessions, [(row.id, conversation.id) for row in rows]


def test_the_model_reply_is_masked_where_it_is_made_stored_so_and_moderation_audited(clean_env: Path) -> None:
    words = clean_env / "moderation.txt"
    words.write_text("尽快 mask\n", encoding="utf-8")
    settings = Settings(data_dir=clean_env / "var", moderation_file=words)
    sessions, ids = two_messages(settings)
    rt = runtime(settings, ScriptedEngine(REPLY), Recorder())
    rt.sessions = sessions
    with sessions() as session:
        row, key = session.get(InboundRecord, ids[0][0]), ConversationKey("web", "default", "v1")  # the worker's row
    assert row is not None
    answer, run = answering._generated(rt, row, key, [], HandOff.NOBODY, None)
    assert answer.text == MASKED.replace("尽快", "**")  # what is stored, and what the history keeps
    answering.store(rt, row, key, answer, run=run)
    with transaction(sessions) as session:
        store_reply(session, inbound_id=ids[1][0], conversation_id=ids[1][1], channel="web",
                    answer=Answer(f"客服邮箱 help@example.com，电话{MOBILE}", ReplySource.FAQ))
        audit.record(session, audit.GENERATION_FAILED, channel="web", reason=f"ValueError: card {CARD} for {ID_CARD}")
    with sessions() as session:
        model_reply, faq_reply = session.scalars(select(ReplyRecord.text).order_by(ReplyRecord.id)).all()
        moderated = [e.detail for e in session.scalars(select(AuditEvent).where(AuditEvent.kind == "moderated"))]
        failed = session.scalars(select(AuditEvent.detail).where(AuditEvent.kind == "generation_failed")).one()
    assert model_reply == answer.text
    assert faq_reply == f"客服邮箱 help@example.com，电话{MOBILE}"  # the operator's own text is stored as written
    assert moderated == [{"direction": "out", "action": "mask", "rule": "keyword:1"}]
    assert failed == {"reason": "ValueError: card 4111********1111 for 110105********002X"}  # audit details: always masked


def test_a_phone_reply_cut_short_by_the_caller_is_stored_masked(clean_env: Path) -> None:
    """Streamed speech masks numbers but not addresses; what the caller heard replaces the stored reply."""
    settings = Settings(data_dir=clean_env / "var")
    sessions, ids = two_messages(settings)
    with transaction(sessions) as session:
        store_reply(session, inbound_id=ids[0][0], conversation_id=ids[0][1], channel="web",
                    answer=Answer("好的，寄到北京市朝阳区****，三天内送达。", ReplySource.MODEL))
    kv = make_kv(settings)
    call = SimpleNamespace(ctx=SimpleNamespace(kv=kv, sessions=sessions), _accepted={})
    Call._record_interruption(call, ids[0][0], "好的，寄到北京市朝阳区建国路88号", 1, "barge_in")  # type: ignore[arg-type]
    with sessions() as session:
        assert session.scalars(select(ReplyRecord.text)).one() == "好的，寄到北京市朝阳区****" + INTERRUPTED_MARK
    assert kv.get(HEARD_KEY.format(ids[0][0])) == "好的，寄到北京市朝阳区****"  # what the worker stores if it is later
