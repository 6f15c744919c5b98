"""A hotline's keypad menu: a prompt spoken after the greeting, and what each key does. Pure (no I/O).

Configured per hotline in ``KEFU_HOTLINES`` (``"menu"``)::

    {"number": "4008001234", "greeting": "您好，这里是优选商城。", "transfer_to": "8001",
     "menu": {"prompt": "查询订单请按1，营业时间请按2，人工服务请按0。",
              "keys": {"1": {"action": "ask", "text": "我要查询订单"},
                       "2": {"action": "say", "text": "我们每天早上九点到晚上九点营业。"}}}}

A key's action is one of:

* ``say``: speak a fixed text;
* ``ask``: take a fixed text as if the caller had said it (hand-off rules, FAQ answer or the model, like
  any recognized question);
* ``transfer``: hand the caller to the hotline's agent number (as 转人工 does).

Key 0 transfers unless the menu maps it to something else (key 0 transferred before menus existed).
Any other key the menu does not map repeats the prompt, where there is one, and is ignored otherwise.
``keys_only`` says the hotline takes no speech at all: what a caller says is not recognized, so such a hotline
needs no recognizer for its language (the start-up check, :mod:`channels.telephony.asr_language`, lets it be).

Raises pydantic's ``ValidationError`` (a ConfigError at start-up) for a key that is not a DTMF key, or a ``say``
or ``ask`` without text.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DTMF_KEYS = frozenset("0123456789*#")


class MenuChoice(BaseModel):
    """What one key does."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    action: Literal["say", "ask", "transfer"]
    text: str = ""  # said (say), or taken as the caller's words (ask); unused by transfer

    @model_validator(mode="after")
    def _text_when_needed(self) -> MenuChoice:
        if self.action != "transfer" and not self.text.strip():
            raise ValueError(f"a menu key with action {self.action!r} needs a text")
        return self


TRANSFER = MenuChoice(action="transfer")


class KeypadMenu(BaseModel):
    """The keypad menu of a hotline; ``KeypadMenu()`` is no menu at all (only key 0, the transfer)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str = ""  # spoken after the greeting, e.g. 查询订单请按1，人工服务请按0。
    keys: dict[str, MenuChoice] = Field(default_factory=dict)
    keys_only: bool = False  # the caller's speech is not recognized on this hotline: keys only

    @field_validator("keys")
    @classmethod
    def _dtmf_keys(cls, keys: dict[str, MenuChoice]) -> dict[str, MenuChoice]:
        wrong = sorted(k for k in keys if k not in DTMF_KEYS)
        if wrong:
            raise ValueError(f"menu keys must be one of 0-9, * and # (got {', '.join(map(repr, wrong))})")
        return keys

    @model_validator(mode="after")
    def _keys_only_needs_keys(self) -> KeypadMenu:
        if self.keys_only and not self.keys:
            raise ValueError("a keys_only menu needs keys: its callers cannot say anything")
        return self

    def on_digit(self, digit: str) -> MenuChoice | None:
        """The key's choice; key 0 transfers when unmapped; another unmapped key repeats the prompt (None when
        there is none: the key is ignored)."""
        choice = self.keys.get(digit)
        if choice is not None:
            return choice
        if digit == "0":
            return TRANSFER
        if self.prompt.strip():
            return MenuChoice(action="say", text=self.prompt)
        return None


NO_MENU = KeypadMenu()
