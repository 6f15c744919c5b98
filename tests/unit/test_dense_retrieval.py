"""Dense retrieval fused with lexical retrieval: rank fusion, the vector matrix, the FAQ's calibration and fused
confidence, and the worker using them — a paraphrase the lexical FAQ abstains on is answered, a far-off question
still abstains, a passage the lexical index misses reaches the model.

:class:`TopicEncoder` is a test double standing in for an embedding model (not a remote platform): it places texts
that name a topic word near that topic, plus a small per-text jitter, so that similarities are known. The FAQ and
passages are hand-written for these tests (a fictional shop), not evaluation data.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
from sqlalchemy import Engine, select

from channels.ingress import Ingress
from models import audit
from models.dialogue import HandOff
from models.envelope import ConversationKey, Inbound
from models.infra.db import make_session_factory, transaction
from models.infra.kv import make_kv
from models.infra.queues import Publisher
from models.knowledge import faq_cache, readers, store
from models.knowledge.dense import DenseIndex, Vectors, reciprocal_rank_fusion
from models.knowledge.faq import FaqEntry
from models.knowledge.faq_index import Match
from models.knowledge.fused_faq import WHY_FUSED, Calibration, DenseFaq, DenseMatch, calibrate, fuse
from models.settings import FaqEntry as SettingsFaqEntry
from models.settings import Settings
from models.states import ReplySource
from models.tables import AuditEvent, InboundRecord, ReplyRecord
from workers import answering
from workers.dense_faq import DenseFaqMatcher
from workers.grounding import Knowledge

TOPICS = {"ship": ("发货", "寄出", "包裹", "到货"), "invoice": ("发票", "开票", "报销凭证"),
          "refund": ("退款", "退钱", "钱退"), "points": ("积分", "会员分")}
JITTER = 0.3


class TopicEncoder:
    """Deterministic vectors: one axis per topic whose words the text holds, plus a jitter from the text's CRC."""

    fingerprint = "topic-encoder"

    def __init__(self) -> None:
        self.encoded: list[str] = []

    def encode(self, texts: Sequence[str]) -> Vectors:
        self.encoded += texts
        rows = []
        for text in texts:
            topic = np.array([float(any(w in text for w in words)) for words in TOPICS.values()])
            jitter = np.random.default_rng(zlib.crc32(text.encode())).standard_normal(16)
            row = np.concatenate([topic, JITTER * jitter / np.linalg.norm(jitter)])
            rows.append(row / np.linalg.norm(row))
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), len(TOPICS) + 16)

    def encode_query(self, text: str) -> Vectors:
        return self.encode([text])


FAQ = [SettingsFaqEntry(question="几点发货？", similar=["什么时候发货", "多久能发货"], answer="下单后24小时内发货。"),
       SettingsFaqEntry(question="怎么开发票？", similar=["能开发票吗", "发票在哪里申请"],
                        answer="在订单详情页申请电子发票。"),
       SettingsFaqEntry(question="退款多久到账？", similar=["退款什么时候到", "退款几天到账"],
                        answer="退款1-3个工作日原路退回。"),
       SettingsFaqEntry(question="积分怎么用？", similar=["积分能抵钱吗"], answer="100积分抵1元。")]
PARAPHRASE = "我的包裹哪天寄出"  # shares no word and no character with any phrasing of the shipping entry
FAR_OFF = "你们老板叫什么名字"


def test_reciprocal_rank_fusion_prefers_agreement() -> None:
    assert reciprocal_rank_fusion([[1, 2, 3], [3, 2, 1], [2]]) == [2, 1, 3]
    assert reciprocal_rank_fusion([[], [4]]) == [4]


def test_the_dense_index_reuses_the_vectors_of_unchanged_texts() -> None:
    encoder = TopicEncoder()
    first = DenseIndex.build(encoder, ["几点发货", "怎么开发票"])
    second = DenseIndex.build(encoder, ["怎么开发票", "退款多久到账", "几点发货"], first)
    assert encoder.encoded == ["几点发货", "怎么开发票", "退款多久到账"]  # only the new text was encoded again
    assert np.array_equal(second.vectors[0], first.vectors[1]) and second.vectors.shape == (3, len(TOPICS) + 16)
    assert second.search(encoder.encode_query("包裹寄出了吗"), 2)[0][0] == 2
    assert [at for at, _ in second.search(encoder.encode_query("包裹寄出了吗"), 2, floor=0.5)] == [2]
    assert DenseIndex.build(encoder, []).search(encoder.encode_query("x"), 3) == []


def test_the_calibration_is_the_faqs_own_scale_or_none() -> None:
    entries = faq_cache.from_settings(FAQ)
    dense = DenseFaq.build(TopicEncoder(), entries)
    assert dense.calibration is not None
    assert dense.calibration.related > 0.8 and dense.calibration.unrelated < 0.4  # paraphrases close, others far
    assert dense.calibration.self_top1 == 1.0  # every left-out similar question finds its own entry
    assert DenseFaq.build(TopicEncoder(), entries[:2]).calibration is None  # too few entries with similar questions
    noise = np.random.default_rng(0).standard_normal((12, 64)).astype(np.float32)  # a model that knows nothing
    assert calibrate(noise / np.linalg.norm(noise, axis=1, keepdims=True), [n // 3 for n in range(12)]) is None
    scaled = Calibration(0.9, 0.4).scale(np.array([0.3, 0.65, 0.95], dtype=np.float32))
    assert scaled.tolist() == pytest.approx([0.0, 0.5, 1.0])


def _entry(name: str) -> FaqEntry:
    return FaqEntry(name, f"{name}?", f"answer {name}")


def test_fusion_adds_agreeing_evidence_and_subtracts_contradicting() -> None:
    a, b = _entry("a"), _entry("b")
    assert fuse(None, None) is None
    agreed = fuse(Match(a, 0.2, ""), DenseMatch(a, 0.5, ""))
    assert agreed is not None and agreed.confidence == pytest.approx(0.6)  # 1 - 0.8 * 0.5
    contradicted = fuse(Match(a, 0.2, ""), DenseMatch(b, 0.7, ""))
    assert contradicted is not None and contradicted.entry == b and contradicted.confidence == pytest.approx(0.5)
    assert (contradicted.lexical, contradicted.dense) == (0.0, 0.7)
    alone = fuse(None, DenseMatch(b, 0.7, ""))
    assert alone is not None and alone.confidence == 0.7


def test_a_paraphrase_the_lexical_faq_abstains_on_is_answered_and_a_far_off_question_is_not(clean_env: Path) -> None:
    settings = Settings(data_dir=clean_env / "var", faq=FAQ)
    assert faq_cache.lookup(settings, PARAPHRASE) is None  # the gateway's lexical FAQ abstains: it goes to the model
    matcher = DenseFaqMatcher(TopicEncoder(), settings)
    found = matcher.match(PARAPHRASE)
    assert found is not None and found.entry.answer == "下单后24小时内发货。"
    assert found.confidence >= settings.faq_fused_threshold and found.lexical == 0.0 and found.dense > 0.5
    assert matcher.match(FAR_OFF) is None
    assert matcher.match("包裹退款") is None  # two entries equally near: a guess, not an answer
    strict = DenseFaqMatcher(TopicEncoder(), settings.model_copy(update={"faq_fused_threshold": 1.0}))
    assert strict.match(PARAPHRASE) is None


def test_the_faq_vectors_follow_the_faq_index(clean_env: Path) -> None:
    settings = Settings(data_dir=clean_env / "var", faq=FAQ[:3])
    encoder = TopicEncoder()
    matcher = DenseFaqMatcher(encoder, settings)
    assert matcher.match("会员分能当钱花吗") is None  # no points entry yet
    encoder.encoded.clear()
    try:
        faq_cache.install([FaqEntry("kb:1", "积分怎么用？", "100积分抵1元。", ("积分能抵钱吗",))], settings)
        found = matcher.match("会员分能当钱花吗")
        assert found is not None and found.entry.id == "kb:1"
        assert encoder.encoded == ["积分怎么用？", "积分能抵钱吗", "会员分能当钱花吗"]  # the new phrasings only
    finally:
        faq_cache.install([], settings)


def _import(engine: Engine, path: Path) -> None:
    with transaction(make_session_factory(engine)) as session:
        store.import_document(session, readers.read(path))


def test_grounding_fuses_the_passages_the_lexical_index_misses(db: Engine, clean_env: Path) -> None:
    (clean_env / "policy.md").write_text("# 售后政策\n\n## 发货\n\n下单后24小时内发货，默认中通快递。\n\n"
                                         "## 退款\n\n退款1-3个工作日原路退回。\n")
    _import(db, clean_env / "policy.md")
    lexical = Knowledge(make_session_factory(db)).lookup(PARAPHRASE)
    assert lexical is not None and lexical.sources == () and not lexical.dense
    fused = Knowledge(make_session_factory(db), encoder=TopicEncoder(), min_similarity=0.5).lookup(PARAPHRASE)
    assert fused is not None and [s.heading for s in fused.sources] == ["发货"] and fused.dense
    assert fused.audit_detail()["dense"] is True
    both = Knowledge(make_session_factory(db), encoder=TopicEncoder()).lookup("退款多久到账，发货呢")
    assert both is not None and {s.heading for s in both.sources} == {"发货", "退款"}


class BrokenEncoder(TopicEncoder):
    def encode_query(self, text: str) -> Vectors:
        raise RuntimeError("the model fell over")


def test_a_failing_encoder_leaves_the_lexical_answers(db: Engine, clean_env: Path) -> None:
    (clean_env / "p.md").write_text("# 退货\n\n七天无理由退货。\n")
    _import(db, clean_env / "p.md")
    grounding = Knowledge(make_session_factory(db), encoder=BrokenEncoder()).lookup("退货")
    assert grounding is not None and grounding.sources[0].text == "七天无理由退货。" and not grounding.dense
    settings = Settings(data_dir=clean_env / "var", faq=FAQ)
    assert DenseFaqMatcher(BrokenEncoder(), settings).match(PARAPHRASE) is None


class Queued:
    """The broker's side of ingress, publishing nowhere: the test calls the worker itself."""

    def handle_inbound(self, inbound_id: int) -> None:
        pass


def test_the_worker_answers_the_paraphrase_with_the_faq_entry_audited_as_fused(db: Engine, clean_env: Path) -> None:
    settings = Settings(data_dir=clean_env / "var", faq=FAQ)
    sessions = make_session_factory(db)
    key = ConversationKey("web", "default", "v1")
    accepted = Ingress(sessions, cast(Publisher, Queued())).accept(Inbound(key, "m1", PARAPHRASE))
    with sessions() as session:
        inbound = session.get(InboundRecord, accepted.inbound_id)  # the row the worker reads
    port = SimpleNamespace(availability=lambda account: HandOff.NOBODY, from_worker=False)
    rt: Any = SimpleNamespace(settings=settings, sessions=sessions, kv=make_kv(settings),
                              channel=lambda name: SimpleNamespace(cache_context=False, streams=False),
                              handoff=lambda name: port, dense_faq=DenseFaqMatcher(TopicEncoder(), settings),
                              outbound=lambda name: SimpleNamespace(client_history=lambda *key: None))
    assert inbound is not None
    reply_id = answering.generate(rt, inbound, key)
    with sessions() as session:
        reply = session.get(ReplyRecord, reply_id)
        trail = {e.kind: e.detail for e in session.scalars(select(AuditEvent).where(AuditEvent.reply_id == reply_id))}
    assert reply is not None and reply.text == "下单后24小时内发货。" and reply.source == ReplySource.FAQ
    assert trail[audit.REPLY_STORED]["rule"] == WHY_FUSED
    assert trail[audit.KB_USED]["faq_entry"] == "settings:0" and trail[audit.KB_USED]["dense_used"] is True
