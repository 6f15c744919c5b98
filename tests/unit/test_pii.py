"""models.pii: detection (checksums, boundaries, false positives), masks, nested values, streaming;
models.privacy: what is stored and what reaches the logs."""

from __future__ import annotations

import logging

import pytest

from models import pii, privacy
from models.pii import Kind
from models.settings import Settings

GB_SAMPLE_ID = "11010519491231002X"  # the example number of GB 11643-1999 itself
# card networks' and payment providers' published test numbers (they pass Luhn; no real account)
VISA, MASTERCARD, AMEX, UNIONPAY, UNIONPAY_19 = ("4111111111111111", "5555555555554444", "378282246310005",
                                                 "6200000000000005", "6205500000000000004")


def kinds(text: str) -> list[str]:
    return [span.kind.value for span in pii.find(text)]


# ---- ID numbers -----------------------------------------------------------------------------------

def test_id_check_character_is_iso_7064_mod_11_2() -> None:
    assert pii.id_check_char(GB_SAMPLE_ID[:17]) == "X"
    assert pii.valid_id_number(GB_SAMPLE_ID) and pii.valid_id_number(GB_SAMPLE_ID.lower())


@pytest.mark.parametrize("number", [
    "110105194912310021",  # wrong check character
    "110105194902300028",  # 30 February
    "990105194912310026",  # no such province (99)
    "11010519491231002",  # 17 characters
])
def test_invalid_id_numbers(number: str) -> None:
    assert not pii.valid_id_number(number)
    assert Kind.ID_CARD.value not in kinds(f"号码{number}。")


def test_id_number_in_text_is_masked_keeping_region_and_tail() -> None:
    assert pii.mask(f"我的身份证号是{GB_SAMPLE_ID}，请核实") == "我的身份证号是110105********002X，请核实"
    assert pii.mask("身份证 110105 19491231 002X") == "身份证 110105 ******** 002X"


def test_legacy_15_digit_id() -> None:
    assert kinds("旧身份证号110105491231002") == ["id_card"]
    assert pii.mask("旧身份证号110105491231002") == "旧身份证号110105*****1002"
    assert kinds("编号110105491331002") == []  # month 13


def test_an_id_number_is_never_taken_for_a_card_or_a_mobile() -> None:
    # 18 digits that also pass Luhn are still an ID number when the check character fits
    assert kinds(f"证件{GB_SAMPLE_ID[:17]}X") == ["id_card"]


# ---- bank cards ----------------------------------------------------------------------------------

@pytest.mark.parametrize("number", [VISA, MASTERCARD, AMEX, UNIONPAY, UNIONPAY_19])
def test_published_test_cards_are_found(number: str) -> None:
    assert kinds(f"卡号{number}") == ["bank_card"]


def test_card_mask_keeps_first_and_last_four_and_the_grouping() -> None:
    assert pii.mask("卡号 4111 1111 1111 1111 谢谢") == "卡号 4111 **** **** 1111 谢谢"
    assert pii.mask(f"card {UNIONPAY_19}") == "card 6205***********0004"
    assert pii.mask("4111-1111-1111-1111") == "4111-****-****-1111"


@pytest.mark.parametrize("text", [
    "卡号4111111111111112",  # fails Luhn
    "订单号 4111111111111111 已发货",  # passes Luhn, but it is an order number
    "运单号：5555555555554444",
    "order #4111111111111111",
    "20231201123456789",  # a timestamp-like id (starts with 2023, no card network)
    "1234567890123456",  # no card network starts with 1
    "4111 1111-1111 1111",  # mixed separators: a list, not a card
    "40111111111111111111",  # 20 digits: longer than any card
])
def test_not_cards(text: str) -> None:
    assert Kind.BANK_CARD.value not in kinds(text)


# ---- mobiles -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "masked"), [
    ("电话13812345678", "电话138****5678"),
    ("请拨 138 1234 5678。", "请拨 138****5678。"),
    ("+86 138-1234-5678", "+86 138****5678"),
    ("8613812345678", "86138****5678"),
    ("(+86)19912345678", "(+86)199****5678"),
])
def test_mobiles(text: str, masked: str) -> None:
    assert kinds(text) == ["mobile"]
    assert pii.mask(text) == masked


@pytest.mark.parametrize("text", [
    "订单号213812345678",  # inside a longer run of digits
    "13812345678901",
    "12812345678",  # 12x is not a mobile prefix
    "时间戳1701504000000",  # a millisecond timestamp
    "SF13812345678",  # a parcel number (letters right before)
    "价格¥1380.00元，共12345678件",
    "010-12345678",  # a Beijing landline
    "2024-01-15 13:45:12",
])
def test_not_mobiles(text: str) -> None:
    assert kinds(text) == []


# ---- e-mail and addresses ------------------------------------------------------------------------

def test_email() -> None:
    assert pii.mask("邮箱 zhang.san@example.com。") == "邮箱 z***@example.com。"
    assert kinds("版本v1.2@3 和 a@b") == []


def test_address() -> None:
    text = "寄到北京市朝阳区建国路88号院3号楼2单元301室，谢谢"
    assert kinds(text) == ["address"]
    assert pii.mask(text) == "寄到北京市朝阳区****，谢谢"
    assert pii.mask("广东省深圳市南山区科技园路1号") == "广东省深圳市南山区****"
    assert kinds("请看第3号说明") == [] and kinds("我们在南京路上") == []


def test_several_kinds_in_one_message() -> None:
    text = f"身份证{GB_SAMPLE_ID}，手机13812345678，卡号{VISA}，邮箱li@qq.com"
    assert kinds(text) == ["id_card", "mobile", "bank_card", "email"]
    masked = pii.mask(text)
    for secret in (GB_SAMPLE_ID, "13812345678", VISA, "li@qq.com"):
        assert secret not in masked


def test_kinds_can_be_chosen() -> None:
    text = f"身份证{GB_SAMPLE_ID}，手机13812345678"
    assert pii.mask(text, privacy.SENSITIVE) == "身份证110105********002X，手机13812345678"


def test_mask_value_masks_every_nested_string() -> None:
    value = {"reason": f"card {VISA} declined", "n": 3, "list": ["13812345678", {"k": GB_SAMPLE_ID}], "none": None}
    assert pii.mask_value(value) == {"reason": "card 4111********1111 declined", "n": 3,
                                     "list": ["138****5678", {"k": "110105********002X"}], "none": None}


def test_masking_is_idempotent_and_leaves_plain_text_alone() -> None:
    text = f"身份证{GB_SAMPLE_ID}，卡号{VISA}"
    assert pii.mask(pii.mask(text)) == pii.mask(text)
    plain = "您好，您的订单预计3-5个工作日送达，运费12元。"
    assert pii.mask(plain) == plain


# ---- streaming -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cut", [1, 2, 3, 5, 7])
def test_stream_never_emits_a_full_number(cut: int) -> None:
    text = f"好的，您的身份证{GB_SAMPLE_ID}和卡号 4111 1111 1111 1111 已收到，手机13812345678，邮箱zhang@qq.com。"
    pieces = [text[i:i + cut] for i in range(0, len(text), cut)]
    masker = pii.StreamMasker()
    out = [masker.feed(piece) for piece in pieces] + [masker.flush()]
    streamed = "".join(out)
    assert streamed == pii.mask(text)
    for secret in (GB_SAMPLE_ID, "4111 1111 1111 1111", "13812345678", "zhang@qq.com"):
        assert secret not in streamed


def test_stream_releases_text_without_numbers_at_once() -> None:
    masker = pii.StreamMasker()
    assert masker.feed("您好，") == "您好，"
    assert masker.feed("卡号62") == "卡号"
    assert masker.feed("00000000000005，") == "6200********0005，"


# ---- policy --------------------------------------------------------------------------------------

def test_stored_text_follows_the_setting(clean_env: object) -> None:
    text = f"身份证{GB_SAMPLE_ID}，手机13812345678"
    assert privacy.stored_text(Settings(pii_mask_stored="none"), text) == (text, ())
    assert privacy.stored_text(Settings(), text)[0] == "身份证110105********002X，手机13812345678"  # default
    assert privacy.stored_text(Settings(pii_mask_stored="all"), text)[0] == "身份证110105********002X，手机138****5678"


@pytest.mark.parametrize(("value", "expected"), [("true", "all"), ("false", "none"), ("Sensitive", "sensitive")])
def test_stored_setting_accepts_booleans(clean_env: object, monkeypatch: pytest.MonkeyPatch, value: str,
                                         expected: str) -> None:
    monkeypatch.setenv("KEFU_PII_MASK_STORED", value)
    assert Settings().pii_mask_stored == expected


def test_log_records_are_masked(caplog: pytest.LogCaptureFixture) -> None:
    privacy.install_log_masking()
    privacy.install_log_masking()  # idempotent
    log = logging.getLogger("kefu.test_pii")
    with caplog.at_level(logging.INFO):
        log.info("customer said %s", f"卡号{VISA} 身份证{GB_SAMPLE_ID}")
        try:
            raise ValueError(f"bad number 13812345678 for {GB_SAMPLE_ID}")
        except ValueError:
            log.exception("failed for %s", "13812345678")
    text = caplog.text
    assert "4111********1111" in text and "110105********002X" in text and "138****5678" in text
    for secret in (VISA, GB_SAMPLE_ID, "13812345678"):
        assert secret not in text


def test_a_log_record_without_personal_data_is_left_as_it_was() -> None:
    privacy.install_log_masking()
    record = logging.getLogRecordFactory()("uvicorn.access", logging.INFO, __file__, 1, '%s "%s %s"',
                                          ("127.0.0.1:5000", "GET", "/healthz"), None)
    assert record.args == ("127.0.0.1:5000", "GET", "/healthz")  # uvicorn's access formatter unpacks them
    record = logging.getLogRecordFactory()("kefu", logging.INFO, __file__, 1, "to %s", ("13812345678",), None)
    assert (record.msg, record.args) == ("to 138****5678", None)


def test_the_published_benchmark_figures_hold() -> None:
    """docs/BENCHMARKS.md's PII table, recomputed from bench/data/pii (public data, labelled without Kefu)."""
    from bench import pii_eval

    total = pii_eval.reviews()
    total.add(pii_eval.numbers())
    assert {kind: (total.tp[kind], total.fp[kind], total.fn[kind]) for kind in pii_eval.KINDS} == {
        "id_card": (10, 6, 0), "bank_card": (18, 0, 0), "mobile": (7, 0, 0), "email": (5, 0, 0), "address": (2, 0, 0)}
