"""Personal data in free text: find it and mask it (pure functions, no I/O).

Kinds (:class:`Kind`) and how each is recognized:

- ``id_card``: a resident identity number (GB 11643-1999): 18 characters whose last is the ISO 7064
  MOD 11-2 check character, with a known province code and a real birth date; or a legacy 15-digit
  number (province code and a real 19YY birth date; it has no check digit).
- ``bank_card``: 13-19 digits (single spaces or dashes between them allowed) that pass the Luhn check and
  have a card network's first digits and length (Visa 4 and 13/16/19 digits, UnionPay 62 and 16-19, …);
  not one right after words such as 订单号/运单号/order (an order number that happens to pass Luhn), and
  never an ID number.
- ``mobile``: a mainland mobile number 1[3-9]X XXXX XXXX, optionally +86/0086/86 and spaces or dashes,
  not part of a longer run of digits.
- ``email``: an address ``local@domain.tld``.
- ``address``: a Chinese street address: an optional province/city/district prefix, then a road or
  street (路/街/大道/巷/弄/胡同) and a house number (…号), with building, unit and room after it; without a
  region, the road's name must have at least two Chinese characters (赤峰路63号, not 3路5号).

Masks keep a little for a person to recognize the value: ``110105********002X``, ``138****5678``,
``6222 **** **** 1234``, ``z***@example.com``, ``北京市朝阳区****``.

:func:`find` returns non-overlapping :class:`Span` objects; :func:`mask` masks a string;
:func:`mask_value` masks every string inside nested dicts/lists (audit details); :class:`StreamMasker`
masks text that arrives in pieces without ever emitting a full number. Nothing here raises for any
input string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    ID_CARD = "id_card"
    BANK_CARD = "bank_card"
    MOBILE = "mobile"
    EMAIL = "email"
    ADDRESS = "address"


ALL_KINDS: frozenset[Kind] = frozenset(Kind)
_PRIORITY = {kind: i for i, kind in enumerate(Kind)}  # an overlap keeps the earlier kind


@dataclass(frozen=True, slots=True)
class Span:
    kind: Kind
    start: int
    end: int
    text: str


# ---- checks ---------------------------------------------------------------------------------------

_PROVINCES = frozenset({11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46,
                        50, 51, 52, 53, 54, 61, 62, 63, 64, 65, 71, 81, 82, 83})
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def id_check_char(first17: str) -> str:
    """The ISO 7064 MOD 11-2 check character of the first 17 digits of an ID number."""
    return _ID_CHECK[sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS, strict=True)) % 11]


def _real_date(year: int, month: int, day: int) -> bool:
    try:
        date(year, month, day)
    except ValueError:
        return False
    return 1900 <= year <= 2100


def valid_id_number(value: str) -> bool:
    """True for an 18-character ID number with a valid check character, or a plausible 15-digit legacy one."""
    value = value.upper()
    if len(value) == 18 and value[:17].isdigit() and (value[17].isdigit() or value[17] == "X"):
        return (int(value[:2]) in _PROVINCES and _real_date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
                and id_check_char(value[:17]) == value[17])
    if len(value) == 15 and value.isdigit():
        return int(value[:2]) in _PROVINCES and _real_date(1900 + int(value[6:8]), int(value[8:10]), int(value[10:12]))
    return False


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# (first digits from, to, allowed lengths): the card networks' published IIN ranges and number lengths. A number
# of another length with the same first digits is something else (a 15-digit IMEI starting 35 or 49, say).
_NETWORKS: tuple[tuple[int, int, frozenset[int]], ...] = (
    (4, 4, frozenset({13, 16, 19})),  # Visa
    (51, 55, frozenset({16})), (2221, 2720, frozenset({16})),  # Mastercard
    (34, 34, frozenset({15})), (37, 37, frozenset({15})),  # American Express
    (62, 62, frozenset({16, 17, 18, 19})), (81, 81, frozenset({16, 17, 18, 19})),  # UnionPay
    (3528, 3589, frozenset({16, 17, 18, 19})),  # JCB
    (6011, 6011, frozenset({16, 17, 18, 19})), (644, 649, frozenset({16, 17, 18, 19})),  # Discover
    (65, 65, frozenset({16, 17, 18, 19})),
    (36, 36, frozenset({14, 15, 16, 17, 18, 19})), (300, 305, frozenset({16, 17, 18, 19})),  # Diners Club
    (38, 39, frozenset({16, 17, 18, 19})),
    (50, 50, frozenset(range(12, 20))), (56, 69, frozenset(range(12, 20))),  # Maestro and other debit
)


def _card_network(digits: str) -> bool:
    for low, high, lengths in _NETWORKS:
        width = len(str(low))
        if low <= int(digits[:width]) <= high and len(digits) in lengths:
            return True
    return False


def valid_card_number(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and digits.isdigit() and _card_network(digits) and luhn_ok(digits)


# ---- finders --------------------------------------------------------------------------------------

_SEP = r"[ \-]"
# an ID number, contiguous or grouped 6-8-4 (spaces or dashes); not inside a longer run of digits or letters
_ID_RE = re.compile(r"(?<![0-9A-Za-z])(?:\d{6}(?P<s>[ \-]?)\d{8}(?P=s)\d{3}[0-9Xx]|\d{15})(?![0-9A-Za-z])")
_CARD_RE = re.compile(rf"(?<![0-9A-Za-z])(?<!\d{_SEP})\d(?:{_SEP}?\d){{12,18}}(?![0-9A-Za-z])(?!{_SEP}\d)")
_MOBILE_RE = re.compile(
    rf"(?<![0-9A-Za-z+])(?<!\d{_SEP})(?P<prefix>(?:\+|00)?86{_SEP}?|\(\+?86\){_SEP}?)?"
    rf"(?P<num>1[3-9]\d{_SEP}?\d{{4}}{_SEP}?\d{{4}})(?![0-9A-Za-z])(?!{_SEP}\d)"
)
_EMAIL_RE = re.compile(r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9][A-Za-z0-9._%+\-]*@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?![A-Za-z0-9])")
_HAN = "\u4e00-\u9fff"
_NUM = r"[0-9０-９一二三四五六七八九十百千零〇两]+"
_ADDRESS_RE = re.compile(
    rf"(?P<region>(?:[{_HAN}]{{2,9}}?(?:省|自治区|特别行政区))?(?:[{_HAN}]{{2,9}}?(?:市|自治州|州|盟))?"
    rf"(?:[{_HAN}]{{1,9}}?(?:区|县|旗))?(?:[{_HAN}]{{1,9}}?(?:镇|乡|街道))?)"
    rf"(?P<street>(?P<road>[{_HAN}0-9A-Za-z]{{1,12}}?)(?:大道|大街|路|街|巷|弄|胡同|里)(?:{_NUM}(?:段|巷|弄))?"
    rf"{_NUM}(?:[\-之]{_NUM})?号(?:院|楼)?"
    rf"(?:[0-9A-Za-z{_HAN}\-]{{0,8}}?(?:号楼|栋|幢|座|单元|层|楼|室|号房|房))*)"
)
# numbers that merely follow these words are identifiers of an order or a parcel, not a card
_ORDER_CONTEXT = re.compile(r"(?:订单|单号|运单|快递|物流|工单|流水|交易号|编号|order|tracking|invoice|ref)"
                            r"[^\d\n]{0,6}$", re.IGNORECASE)


def _ids(text: str) -> Iterable[Span]:
    for m in _ID_RE.finditer(text):
        compact = re.sub(_SEP, "", m.group())
        if valid_id_number(compact):
            yield Span(Kind.ID_CARD, m.start(), m.end(), m.group())


def _cards(text: str) -> Iterable[Span]:
    for m in _CARD_RE.finditer(text):
        raw = m.group()
        if raw.count(" ") and raw.count("-"):
            continue  # mixed separators: a list of numbers, not one card
        digits = re.sub(_SEP, "", raw)
        if not valid_card_number(digits) or valid_id_number(digits):
            continue
        if _ORDER_CONTEXT.search(text[max(0, m.start() - 24):m.start()]):
            continue
        yield Span(Kind.BANK_CARD, m.start(), m.end(), raw)


def _mobiles(text: str) -> Iterable[Span]:
    for m in _MOBILE_RE.finditer(text):
        yield Span(Kind.MOBILE, m.start(), m.end(), m.group())


def _emails(text: str) -> Iterable[Span]:
    for m in _EMAIL_RE.finditer(text):
        yield Span(Kind.EMAIL, m.start(), m.end(), m.group())


def _addresses(text: str) -> Iterable[Span]:
    for m in _ADDRESS_RE.finditer(text):
        if (m.group("region") or re.search(rf"[{_HAN}]{{2}}$", m.group("road"))
                or re.search(r"号(?:楼|院)|栋|幢|单元|室", m.group("street"))):
            yield Span(Kind.ADDRESS, m.start(), m.end(), m.group())


_FINDERS = {Kind.ID_CARD: _ids, Kind.BANK_CARD: _cards, Kind.MOBILE: _mobiles, Kind.EMAIL: _emails,
            Kind.ADDRESS: _addresses}


def find(text: str, kinds: Iterable[Kind] = ALL_KINDS) -> list[Span]:
    """The personal data in ``text``, sorted and non-overlapping (an ID number wins over a card, etc.)."""
    found = [span for kind in kinds for span in _FINDERS[Kind(kind)](text)]
    found.sort(key=lambda s: (s.start, _PRIORITY[s.kind], -s.end))
    kept: list[Span] = []
    for span in found:
        if kept and span.start < kept[-1].end:
            if _PRIORITY[span.kind] < _PRIORITY[kept[-1].kind]:
                kept[-1] = span
            continue
        kept.append(span)
    return kept


# ---- masks ----------------------------------------------------------------------------------------

def _mask_digits(raw: str, keep_head: int, keep_tail: int) -> str:
    """Star every digit except the first ``keep_head`` and last ``keep_tail``; separators stay."""
    positions = [i for i, ch in enumerate(raw) if ch.isdigit() or ch in "Xx"]
    hidden = set(positions[keep_head:len(positions) - keep_tail])
    return "".join("*" if i in hidden else ch for i, ch in enumerate(raw))


def _mask_mobile(raw: str) -> str:
    m = _MOBILE_RE.fullmatch(raw)
    prefix = (m.group("prefix") or "") if m else ""
    digits = re.sub(r"\D", "", raw[len(prefix):])
    return f"{prefix}{digits[:3]}****{digits[-4:]}"


def _mask_email(raw: str) -> str:
    local, _, domain = raw.partition("@")
    return f"{local[0]}***@{domain}"


_REGION_END = re.compile(r"(?:省|自治区|特别行政区|市|自治州|州|盟|区|县|旗)")


def _mask_address(raw: str) -> str:
    m = _ADDRESS_RE.fullmatch(raw)
    region = m.group("region") if m else ""
    if not region:
        return raw[:2] + "****"
    ends = [e.end() for e in _REGION_END.finditer(region)]
    return region[:ends[-1] if ends else 2] + "****"


def mask_span(span: Span) -> str:
    if span.kind is Kind.ID_CARD:
        return _mask_digits(span.text, 6, 4)
    if span.kind is Kind.BANK_CARD:
        return _mask_digits(span.text, 4, 4)
    if span.kind is Kind.MOBILE:
        return _mask_mobile(span.text)
    if span.kind is Kind.EMAIL:
        return _mask_email(span.text)
    return _mask_address(span.text)


def mask(text: str, kinds: Iterable[Kind] = ALL_KINDS) -> str:
    """``text`` with every piece of personal data of ``kinds`` masked."""
    if not text:
        return text
    out: list[str] = []
    at = 0
    for span in find(text, kinds):
        out.append(text[at:span.start])
        out.append(mask_span(span))
        at = span.end
    out.append(text[at:])
    return "".join(out)


def mask_value(value: Any, kinds: Iterable[Kind] = ALL_KINDS) -> Any:
    """``value`` with every string inside it (dict values and keys, list and tuple items) masked."""
    if isinstance(value, str):
        return mask(value, kinds)
    if isinstance(value, dict):
        return {mask_value(k, kinds): mask_value(v, kinds) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(mask_value(v, kinds) for v in value)
    return value


# A trailing run that could still grow into personal data: digits (with separators, +86), or the
# ASCII word being written (an e-mail address in the making). Held back until it has ended.
_OPEN_TAIL = re.compile(r"(?:\(?[+\d][\d \-()]*|[A-Za-z0-9._%+\-]+(?:@[A-Za-z0-9.\-]*)?)$")


class StreamMasker:
    """Masks text produced piece by piece (a model's streamed tokens): :meth:`feed` returns what can be
    sent now, holding back a trailing run of digits or an unfinished e-mail address until the next
    character shows it has ended; :meth:`flush` returns the rest at the end. No full ID, card or mobile
    number is ever returned. Addresses are masked in the stored reply only (they span words)."""

    def __init__(self, kinds: Iterable[Kind] = ALL_KINDS) -> None:
        self._kinds = frozenset(kinds)
        self._held = ""

    def feed(self, piece: str) -> str:
        text = self._held + piece
        open_tail = _OPEN_TAIL.search(text)
        cut = open_tail.start() if open_tail else len(text)
        self._held = text[cut:]
        return mask(text[:cut], self._kinds - {Kind.ADDRESS})

    def flush(self) -> str:
        text, self._held = self._held, ""
        return mask(text, self._kinds - {Kind.ADDRESS})
