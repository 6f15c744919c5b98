"""The keypad menu (channels/telephony/keypad.py) and its place in KEFU_HOTLINES."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from channels.telephony.config import Hotline, PhoneSettings
from channels.telephony.keypad import NO_MENU, TRANSFER, KeypadMenu, MenuChoice
from models.settings import ConfigError, Settings

PROMPT = "查询订单请按1，营业时间请按2，人工服务请按0。"
MENU = {"prompt": PROMPT,
        "keys": {"1": {"action": "ask", "text": "我要查询订单"},
                 "2": {"action": "say", "text": "我们每天早上九点到晚上九点营业。"}}}


def test_each_mapped_key_gives_its_choice() -> None:
    menu = KeypadMenu.model_validate(MENU)
    assert menu.on_digit("1") == MenuChoice(action="ask", text="我要查询订单")
    assert menu.on_digit("2") == MenuChoice(action="say", text="我们每天早上九点到晚上九点营业。")


def test_key_0_transfers_unless_the_menu_maps_it() -> None:
    assert KeypadMenu.model_validate(MENU).on_digit("0") == TRANSFER
    assert NO_MENU.on_digit("0") == TRANSFER  # the behaviour before menus existed
    remapped = KeypadMenu(keys={"0": MenuChoice(action="say", text="总机请按9。"), "9": TRANSFER})
    assert remapped.on_digit("0") == MenuChoice(action="say", text="总机请按9。")
    assert remapped.on_digit("9") == TRANSFER


def test_an_unmapped_key_repeats_the_prompt_or_is_ignored_without_one() -> None:
    menu = KeypadMenu.model_validate(MENU)
    assert menu.on_digit("7") == MenuChoice(action="say", text=PROMPT)
    assert menu.on_digit("#") == MenuChoice(action="say", text=PROMPT)
    assert NO_MENU.on_digit("1") is None
    assert KeypadMenu(keys={"1": TRANSFER}).on_digit("5") is None


@pytest.mark.parametrize(("menu", "says"), [
    ({"keys": {"10": {"action": "transfer"}}}, "menu keys must be one of 0-9"),
    ({"keys": {"a": {"action": "transfer"}}}, "menu keys must be one of 0-9"),
    ({"keys": {"1": {"action": "say"}}}, "needs a text"),
    ({"keys": {"1": {"action": "ask", "text": "  "}}}, "needs a text"),
    ({"keys": {"1": {"action": "dance", "text": "x"}}}, "action"),
    ({"keys": {"1": {"action": "say", "text": "x", "voice": "y"}}}, "voice"),
    ({"prompt": "请按键", "keys_only": True}, "keys_only menu needs keys"),
])
def test_a_wrong_menu_is_refused(menu: dict[str, object], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        KeypadMenu.model_validate(menu)


def test_a_hotline_without_a_menu_has_the_empty_one() -> None:
    assert Hotline(number="1").keypad() == NO_MENU and NO_MENU.prompt == ""
    assert Hotline.model_validate({"number": "1", "menu": MENU}).keypad().on_digit("1") is not None


def test_the_menu_is_read_from_kefu_hotlines(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hotline = {"number": "4008001234", "greeting": "您好。", "transfer_to": "8001", "menu": MENU}
    monkeypatch.setenv("KEFU_HOTLINES", json.dumps([hotline], ensure_ascii=False))
    phone = Settings().section(PhoneSettings)
    assert phone.hotline("4008001234").keypad().prompt == PROMPT
    assert phone.hotline("4008001234").keypad().on_digit("1") == MenuChoice(action="ask", text="我要查询订单")
    assert phone.hotline("other").keypad() == NO_MENU


def test_a_bad_menu_in_kefu_hotlines_stops_the_start_naming_the_variable(clean_env: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEFU_HOTLINES", json.dumps([{"number": "1", "menu": {"keys": {"1": {"action": "say"}}}}]))
    with pytest.raises(ConfigError, match="KEFU_HOTLINES"):
        Settings().section(PhoneSettings)
