"""Grounded answers: passage retrieval, the worker's in-memory knowledge base and its refresh, the prompt block.

The passages are hand-written for these tests (a fictional shop), not evaluation data.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from models.envelope import Turn
from models.infra.db import make_session_factory, transaction
from models.knowledge import readers, store
from models.knowledge.passage_index import PassageIndex, terms
from workers.context import compose
from workers.grounding import Grounding, Knowledge
from workers.llm.prompts import fit_turns, knowledge_block, knowledge_chars, render_chatml

PASSAGES = ["签收后7天内，商品完好可以无理由退货。", "下单后24小时内发货，默认中通快递，可改顺丰（补差价）。",
            "会员积分：每消费1元积1分，100分抵1元。"]


def test_terms_are_cjk_characters_and_bigrams_and_folded_words() -> None:
    assert terms("退货ＡＢＣ 7天") == ["退", "货", "退货", "abc", "7", "天"]


def test_english_function_words_do_not_match() -> None:
    assert terms("How do I ship it to Hong Kong?") == ["ship", "hong", "kong"]
    index = PassageIndex(["How do I reset my password? You can do it on the login page.", "We ship to Hong Kong."])
    assert [at for at, _ in index.search("Do you ship to Hong Kong, and how long does it take?", 3)] == [1]


@pytest.mark.parametrize(("question", "best"), [
    ("请问你们支持七天无理由退货吗？", 0), ("可以改成顺丰快递吗？", 1), ("我昨天下的订单什么时候能发货？", 1),
    ("积分怎么抵扣？", 2),
])
def test_the_passage_that_answers_comes_first(question: str, best: int) -> None:
    assert PassageIndex(PASSAGES).search(question, 3)[0][0] == best


@pytest.mark.parametrize("question", ["你好", "今天天气怎么样", "How do I reset my password?", ""])
def test_a_question_the_passages_do_not_cover_gets_none(question: str) -> None:
    assert PassageIndex(PASSAGES).search(question, 3) == []


def test_an_empty_index_finds_nothing() -> None:
    assert PassageIndex([]).search("退货", 3) == []


def _import(engine: Engine, path: Path) -> None:
    with transaction(make_session_factory(engine)) as session:
        store.import_document(session, readers.read(path))


def _once_loaded(knowledge: Knowledge, question: str, revision: int) -> Grounding:
    """Ask until the background refresh has loaded ``revision``."""
    deadline = time.monotonic() + 30
    while (grounding := knowledge.lookup(question)) is None or grounding.revision < revision:
        assert time.monotonic() < deadline, "the knowledge base was never reloaded"
        time.sleep(0.01)
    return grounding


def test_knowledge_follows_the_store_revision(db: Engine, clean_env: Path) -> None:
    knowledge = Knowledge(make_session_factory(db), refresh_s=0)
    assert knowledge.lookup("可以退货吗") is None  # no knowledge base: the prompt stays as it was
    policy = clean_env / "policy.md"
    policy.write_text("# 售后政策\n\n## 退货\n\n签收后7天内可以无理由退货。\n\n## 发货\n\n下单后24小时内发货。\n")
    _import(db, policy)
    grounding = _once_loaded(knowledge, "可以退货吗", 1)
    assert grounding is not None and grounding.revision == 1
    assert [(s.kind, s.title, s.heading, s.text) for s in grounding.sources] == [
        ("passage", "售后政策", "退货", "签收后7天内可以无理由退货。")]
    assert knowledge.lookup("你们几点下班") == type(grounding)(1, ())  # a knowledge base that does not cover it
    (clean_env / "faq.csv").write_text("问题,相似问,答案\n能开发票吗,怎么开票,在订单详情页申请电子发票。\n")
    _import(db, clean_env / "faq.csv")
    grounding = _once_loaded(knowledge, "怎么开票？", 2)
    assert grounding is not None and grounding.revision == 2
    assert [(s.kind, s.text) for s in grounding.sources] == [("faq", "问：能开发票吗\n答：在订单详情页申请电子发票。")]
    assert grounding.audit_detail() == {"kb_revision": 2, "passages": [], "faq": [grounding.sources[0].id],
                                        "dense": False}


def test_a_follow_up_is_looked_up_with_the_message_before_it(db: Engine, clean_env: Path) -> None:
    (clean_env / "p.md").write_text("# 售后\n\n## 退货运费\n\n质量问题的退货运费由本店承担。\n")
    _import(db, clean_env / "p.md")
    knowledge = Knowledge(make_session_factory(db))
    assert knowledge.lookup("那谁出钱？") == Grounding(1, ())
    grounding = knowledge.lookup("那谁出钱？", previous="退货的运费怎么算")
    assert grounding is not None and [s.heading for s in grounding.sources] == ["退货运费"]


def test_warm_loads_in_the_background(db: Engine, clean_env: Path) -> None:
    (clean_env / "p.md").write_text("# 退货\n\n七天无理由退货。\n")
    _import(db, clean_env / "p.md")
    knowledge = Knowledge(make_session_factory(db), refresh_s=3600)
    knowledge.warm()
    assert _once_loaded(knowledge, "退货", 1).sources[0].text == "七天无理由退货。"


def test_knowledge_checks_the_revision_only_every_refresh_s(db: Engine, clean_env: Path) -> None:
    knowledge = Knowledge(make_session_factory(db), refresh_s=3600)
    assert knowledge.lookup("退货") is None
    (clean_env / "p.md").write_text("# 退货\n\n七天无理由退货。\n")
    _import(db, clean_env / "p.md")
    assert knowledge.lookup("退货") is None  # not looked again yet


def test_a_database_error_keeps_the_loaded_knowledge(db: Engine, clean_env: Path) -> None:
    (clean_env / "p.md").write_text("# 退货\n\n七天无理由退货。\n")
    _import(db, clean_env / "p.md")
    knowledge = Knowledge(make_session_factory(db), refresh_s=0)
    assert knowledge.lookup("退货") is not None
    with db.begin() as conn:
        conn.execute(text("DROP TABLE kb_state"))
    knowledge.refresh()  # logged, and what is loaded stays
    grounding = knowledge.lookup("退货")
    assert grounding is not None and grounding.sources[0].text == "七天无理由退货。"


def test_the_block_offers_a_person_only_where_one_can_take_over() -> None:
    sources = [("退货政策", "运费", "质量问题由本店承担运费。")]
    with_person = knowledge_block(sources, offer_person=True)
    assert "[1] 《退货政策》 运费\n质量问题由本店承担运费。" in with_person and "转人工" in with_person
    assert "只根据以上资料和对话回答，不要编造" in with_person and "（依据：《退货政策》）" in with_person
    assert "转人工" not in knowledge_block(sources, offer_person=False)
    uncovered = knowledge_block([], offer_person=True)
    assert "知识库里没有这个问题的资料" in uncovered and "转人工" in uncovered
    assert "转人工" not in knowledge_block([], offer_person=False)


def test_the_block_is_bounded() -> None:
    block = knowledge_block([("甲", "", "字" * 1500), ("乙", "", "字" * 1500), ("丙", "", "字" * 1500)],
                            offer_person=False)
    assert block.count("字") == 2000 and "《丙》" not in block
    assert knowledge_block([("甲", "", "字" * 1500)], offer_person=False, max_chars=100).count("字") == 100
    assert (knowledge_chars(4096), knowledge_chars(1024), knowledge_chars(32768)) == (682, 170, 2000)


def test_the_knowledge_block_leads_the_prompt_and_survives_trimming() -> None:
    history = [Turn("user", "早上好"), Turn("assistant", "您好！")]
    turns = compose("你是客服。", history, "可以退货吗？", 5, hint="可以转人工。", knowledge="资料：七天无理由退货。")
    assert turns == [Turn("system", "你是客服。"), Turn("system", "可以转人工。"), Turn("system", "资料：七天无理由退货。"),
                     *history, Turn("user", "可以退货吗？")]
    assert render_chatml(turns, architecture="qwen3", enable_thinking=False) == (
        "<|im_start|>system\n你是客服。<|im_end|>\n<|im_start|>system\n可以转人工。<|im_end|>\n"
        "<|im_start|>system\n资料：七天无理由退货。<|im_end|>\n<|im_start|>user\n早上好<|im_end|>\n"
        "<|im_start|>assistant\n您好！<|im_end|>\n<|im_start|>user\n可以退货吗？<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    trimmed = fit_turns(turns, lambda ts: sum(len(t.text) for t in ts), budget=30)
    assert trimmed == [*turns[:3], turns[-1]]
