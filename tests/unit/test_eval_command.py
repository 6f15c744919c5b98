"""``kefu eval``: the figures it prints are the right ones on sets whose answers are known, bad sets are named by
file, line and field, the shipped evaluation sets run as they are, and the configured FAQ (KEFU_FAQ plus the
knowledge base) is the default. The shop FAQ and messages below are hand-written fixtures, not evaluation data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from models.evaluation.datasets import read_faq, read_handoff_tsv
from models.evaluation.metrics import FaqOutcome, confusions, faq_at, handoff_score, intent_scores, pct, top1
from models.handoff_detect import detect
from models.knowledge.faq_index import DEFAULT_THRESHOLD, FaqIndex
from workers.cli import main

DATA = Path(__file__).resolve().parents[1] / "data"
SHOP = {"entries": [  # hand-written
    {"id": "ship", "question": "几点发货", "similar": ["什么时候发货"], "answer": "付款后 24 小时内发货。"},
    {"id": "invoice", "question": "怎么开发票", "similar": ["能开发票吗"], "answer": "在订单详情页申请电子发票。"},
    {"id": "return", "question": "怎么申请退货", "similar": ["我要退货"], "answer": "在订单详情页点申请售后。"},
], "queries": []}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def run_eval(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["eval", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---- the arithmetic ------------------------------------------------------------------------------------------------

def test_faq_figures_count_right_wrong_and_abstained_over_the_right_denominators() -> None:
    outcomes = [FaqOutcome("a", 0.9, "a"), FaqOutcome("b", 0.5, "a"), FaqOutcome("a", 0.1, "a"),
                FaqOutcome("c", 0.6, None), FaqOutcome(None, 0.0, None)]
    at = faq_at(outcomes, 0.3)
    assert (at.right, at.wrong, at.wrong_negative, at.abstained, at.positives, at.queries) == (1, 2, 1, 2, 3, 5)
    assert (at.right_rate, at.wrong_rate, at.abstained_rate) == (1 / 3, 2 / 5, 2 / 5)
    assert top1(outcomes) == 2 / 3  # the best entry, whatever its confidence
    assert faq_at(outcomes, 0.95).abstained == 5 and faq_at([], 0.3).right_rate is None


def test_handoff_figures_count_an_ask_back_as_reached_and_an_unclear_hand_off_against_precision() -> None:
    score = handoff_score([("request", "request"), ("request", "unclear"), ("request", "not"),
                           ("not", "unclear"), ("not", "request"), ("unclear", "request"), ("not", "not")])
    assert (score.requests, score.reached, score.at_once) == (3, 2, 1)
    assert (score.handed_off, score.handed_off_right, score.needless_ask_backs) == (3, 1, 1)
    assert (score.recall, score.strict_recall, score.precision) == (2 / 3, 1 / 3, 1 / 3)
    assert handoff_score([("not", "not")]).recall is None


def test_the_percentile_is_nearest_rank_in_milliseconds() -> None:
    assert pct([0.001 * n for n in range(1, 101)], 50) == pytest.approx(51.0)
    assert pct([0.004, 0.001, 0.003, 0.002], 99) == pytest.approx(4.0)


# ---- the command on sets whose answers are known -------------------------------------------------------------------

def test_faq_and_handoff_figures_on_a_known_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    faq = tmp_path / "shop.json"
    faq.write_text(json.dumps(SHOP, ensure_ascii=False), encoding="utf-8")
    data = write_jsonl(tmp_path / "known.jsonl", [
        {"text": "几点发货", "expected_faq": "ship"},  # the question itself: right
        {"text": "能开发票吗", "expected_faq": "怎么开发票"},  # named by its question: right
        {"text": "我要退货", "expected_faq": "ship"},  # another entry's phrasing: wrong
        {"text": "今天天气怎么样", "expected_faq": None},  # nothing to do with the shop: abstains
        {"text": "帮我接个人工", "handoff": "request"},  # REQUEST
        {"text": "人工", "handoff": "request"},  # REQUEST
        {"text": "人工客服就不用了", "handoff": "request"},  # a decline (NOT): labelled request, so a miss
        {"text": "我也打过人工客服", "handoff": "not"},  # a mention: NOT
        {"text": "你是机器人吗", "handoff": "not"},  # UNCLEAR: a needless ask-back
    ])
    assert [detect(t).verdict for t in ("帮我接个人工", "人工", "人工客服就不用了", "我也打过人工客服", "你是机器人吗")] \
        == ["request", "request", "not", "not", "unclear"]  # what the figures below rest on
    code, out, err = run_eval(capsys, str(data), "--faq", str(faq))
    assert (code, err) == (0, "")
    assert f"FAQ (4 labelled; matched against {faq}: 3 entries)" in out
    assert (f"at KEFU_FAQ_THRESHOLD {DEFAULT_THRESHOLD:.2f}: answered right 66.7% (2/3 expecting an entry), "
            "wrong 25.0% (1/4; 0 to messages that should abstain), abstained 25.0% (1/4)") in out
    assert "top-1 with no threshold: 66.7% of 3" in out
    assert "Hand-off (5 labelled: 3 request, 0 unclear, 2 not)" in out
    assert "recall 66.7% (2/3 requests reach a person" in out and "strict recall 66.7% (2/3 handed off at once)" in out
    assert "precision 100.0% (2/2 hand-offs at once were labelled request)" in out
    assert "needless ask-backs: 1 of 2 labelled not" in out


def test_errors_lists_each_wrong_decision_where_it_is(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    faq = tmp_path / "shop.json"
    faq.write_text(json.dumps(SHOP, ensure_ascii=False), encoding="utf-8")
    data = write_jsonl(tmp_path / "known.jsonl", [
        {"text": "几点发货", "expected_faq": "ship"}, {"text": "我要退货", "expected_faq": "ship"},
        {"text": "人工客服就不用了", "handoff": "request"}, {"text": "帮我接个人工", "handoff": "request"},
        {"text": "我要退货", "intent": "return_refund"}, {"text": "我要退货", "intent": "exchange"}])
    code, out, _ = run_eval(capsys, str(data), "--faq", str(faq), "--errors")
    assert code == 0
    confidence = FaqIndex(read_faq(faq)).search("我要退货")[0].confidence
    assert out.split("Wrong decisions (3):\n")[1].splitlines() == [
        f"  faq      {data}:2: expected ship, got return ({confidence:.2f}): 我要退货",
        f"  intent   {data}:6: expected exchange, got return_refund: 我要退货",
        f"  handoff  {data}:3: expected request, got not: 人工客服就不用了"]
    assert "Wrong decisions" not in run_eval(capsys, str(data), "--faq", str(faq))[1]


def test_the_json_output_carries_the_same_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    faq = tmp_path / "shop.json"
    faq.write_text(json.dumps(SHOP, ensure_ascii=False), encoding="utf-8")
    data = write_jsonl(tmp_path / "known.jsonl", [
        {"text": "几点发货", "expected_faq": "ship"}, {"text": "今天天气怎么样", "expected_faq": None},
        {"text": "帮我接个人工", "handoff": "request"}, {"text": "你是机器人吗", "handoff": "not"}])
    code, out, _ = run_eval(capsys, str(data), "--faq", str(faq), "--json")
    report = json.loads(out)
    assert code == 0 and report["messages"] == 4
    at = report["faq"]["at_threshold"]
    assert (at["right"], at["wrong"], at["abstained"], at["right_rate"]) == (1, 0, 1, 1.0)
    assert [p["threshold"] for p in report["faq"]["curve"]] == sorted({0.1, 0.2, 0.3, 0.4, 0.5, 0.6,
                                                                       DEFAULT_THRESHOLD})
    assert (report["handoff"]["recall"], report["handoff"]["precision"], report["handoff"]["needless_ask_backs"]) \
        == (1.0, 1.0, 1)
    assert set(report["latency_ms"]) == {"faq", "handoff"}
    assert report["latency_ms"]["faq"]["decisions"] == 2 and report["latency_ms"]["faq"]["p99"] >= 0


def test_intents_are_scored_by_models_intents(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"text": "我的快递到哪了", "intent": "shipping"}, {"text": "你好", "intent": "greeting"}]
    code, out, _ = run_eval(capsys, str(write_jsonl(tmp_path / "intents.jsonl", rows)))
    assert code == 0
    from models import intents
    from models.settings import Settings

    settings = Settings()
    right = sum(intents.classify(settings, row["text"]).label == row["intent"] for row in rows)
    assert f"Intents (2 labelled): accuracy {right / 2:.1%} ({right}/2)" in out


def test_intent_scores_per_label_and_confusions_are_counted_right() -> None:
    pairs = [("shipping", "shipping"), ("shipping", "payment"), ("payment", "payment"), ("refund", "payment"),
             ("refund", "payment"), ("greeting", "greeting")]
    scores = {s.label: s for s in intent_scores(pairs)}
    assert sorted(scores) == ["greeting", "payment", "refund", "shipping"]
    assert (scores["payment"].precision, scores["payment"].recall) == (1 / 4, 1.0)
    assert (scores["shipping"].precision, scores["shipping"].recall) == (1.0, 0.5)
    assert (scores["refund"].precision, scores["refund"].recall) == (None, 0.0)  # never given: no precision
    assert confusions(pairs) == [("refund", "payment", 2), ("shipping", "payment", 1)]


def test_the_intent_report_lists_each_label_and_the_confusions(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from models import intents
    from models.settings import Settings

    rows = [{"text": "我的快递到哪了", "intent": "shipping"}, {"text": "怎么开发票", "intent": "invoice"},
            {"text": "你好", "intent": "complaint"}]  # the last one mislabelled on purpose: a confusion to report
    given = [intents.classify(Settings(), row["text"]).label for row in rows]
    code, out, _ = run_eval(capsys, str(write_jsonl(tmp_path / "intents.jsonl", rows)))
    assert code == 0
    for row, label in zip(rows, given, strict=True):
        right = sum(r["intent"] == g == row["intent"] for r, g in zip(rows, given, strict=True))
        expected = sum(r["intent"] == row["intent"] for r in rows)
        assert f"recall {right / expected:>6.1%} ({right}/{expected})" in out.split(f"  {row['intent']:<15}")[1]
        assert label in out
    assert f"most frequent confusions (expected->given): complaint->{given[2]} 1" in out


# ---- bad input -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("line", "message"), [
    ('{"text": "你好", "handoff": "maybe"}', "known.jsonl:2: handoff: 'maybe' is not one of request, unclear, not"),
    ('{"text": "", "handoff": "not"}', "known.jsonl:2: text: must be a non-empty string"),
    ('{"handoff": "not"}', "known.jsonl:2: text: missing"),
    ('{"text": "你好"}', "known.jsonl:2: no label: give expected_faq, intent or handoff"),
    ('{"text": "你好", "expect_faq": "ship"}', "known.jsonl:2: expect_faq: unknown field"),
    ('{"text": "你好", "intent": 3}', "known.jsonl:2: intent: must be a non-empty string"),
    ('{"text": "你好", "handoff": "not"', "known.jsonl:2: not JSON"),
    ('["你好"]', "known.jsonl:2: expected a JSON object, got list"),
])
def test_a_bad_line_is_named_by_file_line_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str,
                                                    message: str) -> None:
    data = tmp_path / "known.jsonl"
    data.write_text('{"text": "人工", "handoff": "request"}\n' + line + "\n", encoding="utf-8")
    code, out, err = run_eval(capsys, str(data))
    assert (code, out) == (1, "")
    assert err.startswith(f"kefu: {tmp_path / message.split(':')[0]}:") and message.split(":", 1)[1] in err
    assert "Traceback" not in err


def test_an_expected_entry_the_faq_does_not_have_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    faq = tmp_path / "shop.json"
    faq.write_text(json.dumps(SHOP, ensure_ascii=False), encoding="utf-8")
    data = write_jsonl(tmp_path / "known.jsonl", [{"text": "几点发货", "expected_faq": "ship"},
                                                   {"text": "包邮吗", "expected_faq": "包邮吗？"}])
    code, _, err = run_eval(capsys, str(data), "--faq", str(faq))
    assert code == 1
    assert err.strip() == (f"kefu: {data}:2: expected_faq: '包邮吗？' is neither an entry id nor a question of the FAQ "
                           f"({faq}, 3 entries)")


def test_bad_files_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tsv = tmp_path / "labels.tsv"
    tsv.write_text("# comment\nweb\t1\trequest\t人工\nweb\t2\trequest\n", encoding="utf-8")
    assert run_eval(capsys, str(tsv))[2].strip() == (f"kefu: {tsv}:3: expected source<TAB>id<TAB>label<TAB>text, "
                                                     "got 3 fields")
    assert run_eval(capsys, str(tmp_path / "gone.jsonl"))[2].strip() == f"kefu: {tmp_path / 'gone.jsonl'}: no such file"
    assert "unknown dataset format '.txt'" in run_eval(capsys, str(tmp_path / "x.txt"))[2]
    faq_set = tmp_path / "set.json"
    faq_set.write_text(json.dumps({"entries": [{"id": "a", "question": "几点发货"}],
                                   "queries": [{"text": "发货", "expect": "b"}]}), encoding="utf-8")
    assert run_eval(capsys, str(faq_set))[2].strip() == f"kefu: {faq_set}: queries[0].expect: 'b' is no entry id of the set"
    settings_list = tmp_path / "faq.json"
    settings_list.write_text(json.dumps([{"question": "几点发货"}]), encoding="utf-8")
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "几点发货", "expected_faq": "几点发货"}])
    assert run_eval(capsys, str(data), "--faq", str(settings_list))[2].strip() == (
        f"kefu: {settings_list}: [0].answer: Field required")


# ---- the shipped sets and the configured FAQ -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["real.tsv", "heldout.tsv", "heldout2.tsv", "edge_cases.tsv"])
def test_the_shipped_handoff_sets_run_and_agree_with_the_detector(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    lines = read_handoff_tsv(DATA / "handoff" / name)
    code, out, _ = run_eval(capsys, str(DATA / "handoff" / name), "--json")
    assert code == 0
    report = json.loads(out)["handoff"]
    expected = handoff_score((line.label, str(detect(line.text).verdict)) for line in lines)
    assert (report["reached"], report["at_once"], report["handed_off"], report["handed_off_right"]) == (
        expected.reached, expected.at_once, expected.handed_off, expected.handed_off_right)
    assert report["labelled"] == len(lines)


@pytest.mark.parametrize("name", ["atec_faq_tune.json", "atec_faq_check.json", "bq_faq_check.json"])
def test_the_shipped_faq_sets_run_and_agree_with_the_index_lookup(name: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads((DATA / "faq" / name).read_text(encoding="utf-8"))
    code, out, _ = run_eval(capsys, str(DATA / "faq" / name), "--json")
    assert code == 0
    at = json.loads(out)["faq"]["at_threshold"]
    from models.evaluation.datasets import read_faq_set

    index = FaqIndex(read_faq_set(DATA / "faq" / name)[0])
    answers = [(index.lookup(q["text"], DEFAULT_THRESHOLD), q["expect"]) for q in data["queries"]]
    right = sum(a is not None and a.entry.id == expect for a, expect in answers)
    abstained = sum(a is None for a, _ in answers)
    assert (at["right"], at["abstained"], at["wrong"]) == (right, abstained, len(answers) - right - abstained)


def test_the_configured_faq_is_kefu_faq_plus_the_knowledge_base(db: Engine, clean_env: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KEFU_FAQ", json.dumps([{"question": "几点发货", "answer": "24 小时内。"}], ensure_ascii=False))
    (clean_env / "faq.csv").write_text("问题,相似问,答案\n怎么开发票,能开发票吗,详情页申请。\n", encoding="utf-8")
    assert main(["kb", "import", str(clean_env / "faq.csv")]) == 0
    data = write_jsonl(clean_env / "d.jsonl", [{"text": "几点发货", "expected_faq": "几点发货"},
                                               {"text": "能开发票吗", "expected_faq": "怎么开发票"}])
    capsys.readouterr()
    code, out, err = run_eval(capsys, str(data))
    assert (code, err) == (0, "")
    assert "matched against KEFU_FAQ and the knowledge base: 2 entries" in out
    assert "answered right 100.0% (2/2 expecting an entry)" in out


def test_a_knowledge_base_that_cannot_be_read_exits_2(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_jsonl(clean_env / "d.jsonl", [{"text": "几点发货", "expected_faq": None}])
    code, out, err = run_eval(capsys, str(data))  # the embedded database was never migrated
    assert (code, out) == (2, "")
    assert err.startswith("kefu: the knowledge base's FAQ cannot be read (OperationalError") and "kefu migrate" in err


@pytest.mark.parametrize("name", ["real_dev.tsv", "real_heldout.tsv", "ecom_dev.tsv", "ecom_heldout.tsv"])
def test_the_shipped_intent_sets_run_and_agree_with_classify(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = DATA / "intents" / name
    from models import intents
    from models.settings import Settings

    code, out, _ = run_eval(capsys, str(path), "--json")
    report = json.loads(out)["intent"]
    settings = Settings()
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    right = sum(intents.classify(settings, line.split("\t", 3)[3]).label == line.split("\t", 3)[2] for line in lines)
    assert (code, report["labelled"], report["right"]) == (0, len(lines), right)


def test_kb_matches_a_faq_set_against_the_configured_faq(clean_env: Path, db: Engine, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KEFU_FAQ", json.dumps([{"question": "几点发货", "answer": "24 小时内。"}], ensure_ascii=False))
    faq_set = clean_env / "set.json"
    faq_set.write_text(json.dumps({"entries": SHOP["entries"], "queries": [{"text": "几点发货", "expect": "ship"}]},
                                  ensure_ascii=False), encoding="utf-8")
    assert "matched against the set's own FAQ: 3 entries" in run_eval(capsys, str(faq_set))[1]
    code, _, err = run_eval(capsys, str(faq_set), "--kb")  # KEFU_FAQ's entry is settings:0, not the set's "ship"
    assert code == 1 and "queries[0]: expected_faq: 'ship' is neither an entry id nor a question of the FAQ " \
        "(KEFU_FAQ and the knowledge base, 1 entry)" in err
