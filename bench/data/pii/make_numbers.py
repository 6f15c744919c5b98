"""Rebuild numbers.tsv from python-stdnum's test files (see README.md); run once, by hand:

    pip download --no-deps --no-binary :all: python-stdnum==2.2 && tar xzf python_stdnum-2.2.tar.gz
    python bench/data/pii/make_numbers.py python_stdnum-2.2 > bench/data/pii/numbers.tsv

Every quoted string of digits (with spaces or dashes) in the listed doctests, and every line of their
``numbers = '''...'''`` blocks ("found online"), becomes one row. Labels come from python-stdnum itself,
never from Kefu: a number of tests/test_cn_ric.doctest that ``stdnum.cn.ric.is_valid`` accepts is an
``id_card``, every other row ``none``. Then the card networks' published test numbers (CARDS) are added.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

FILES = ["cn_ric", "cn_uscc", "imei", "meid", "isbn", "ean", "isin", "ismn", "luhn", "iban"]
# more published ID numbers, labelled by stdnum.cn.ric like the rest: GB 11643-1999's own example, and the test
# numbers of github.com/issue9/is gb11643_test.go (MIT; "found online, not matching real people")
IDS = """11010519491231002X GB 11643-1999 example
350303199002033073 issue9/is gb11643_test.go
350303900203307 issue9/is gb11643_test.go
331122197905116239 issue9/is gb11643_test.go
513330199111066159 issue9/is gb11643_test.go
33050219880702447X issue9/is gb11643_test.go
330502880702447 issue9/is gb11643_test.go
111111111111111111 issue9/is gb11643_test.go
330502198807024471 issue9/is gb11643_test.go"""
# Stripe's published test card numbers (docs.stripe.com/testing, as mirrored in gist DominicWatts/e5a83ae2...)
CARDS = """4242424242424242 Visa
4000056655665556 Visa (debit)
5555555555554444 Mastercard
2223003122003222 Mastercard (2-series)
5200828282828210 Mastercard (debit)
5105105105105100 Mastercard (prepaid)
378282246310005 American Express
371449635398431 American Express
6011111111111117 Discover
6011000990139424 Discover
6011981111111113 Discover (debit)
3056930009020004 Diners Club
36227206271667 Diners Club (14-digit card)
6555900000604105 BCcard and DinaCard
3566002020360505 JCB
6200000000000005 UnionPay
6200000000000047 UnionPay (debit)
6205500000000000004 UnionPay (19-digit card)"""
# numbers published as INVALID beside them: Stripe's "incorrect number" card and the Luhn-failing twins that
# card-type test suites use
NOT_CARDS = """4242424242424241 Stripe: incorrect_number (fails Luhn)
6200000000000009 UnionPay twin failing Luhn
3566002020360506 JCB twin failing Luhn
36227206271663 Diners twin failing Luhn"""


def main(root: Path) -> None:
    sys.path.insert(0, str(root))
    from stdnum.cn import ric  # the reference implementation, not Kefu's

    seen: set[str] = set()
    print("text\tlabel\tnote\tsource")
    for name in FILES:
        doctest = (root / "tests" / f"test_{name}.doctest").read_text(encoding="utf-8")
        found = re.findall(r"'([0-9Xx][0-9Xx \-]{8,40})'", doctest)
        for block in re.findall(r"numbers = '''\n(.*?)'''", doctest, re.S):
            found += [line.strip() for line in block.splitlines() if line.strip()]
        for text in found:
            digits = re.sub(r"[ \-]", "", text)
            if not 10 <= len(digits) <= 24 or not digits[:-1].isdigit() or text in seen:
                continue
            seen.add(text)
            label = "id_card" if name == "cn_ric" and ric.is_valid(text) else "none"
            print(f"{text}\t{label}\t{name}\tpython-stdnum 2.2 tests/test_{name}.doctest")
    for line in IDS.splitlines():
        number, source = line.split(" ", 1)
        print(f"{number}\t{'id_card' if ric.is_valid(number) else 'none'}\tcn_ric\t{source}")
    for line in CARDS.splitlines():
        number, note = line.split(" ", 1)
        print(f"{number}\tbank_card\t{note}\tStripe test cards (docs.stripe.com/testing)")
    for line in NOT_CARDS.splitlines():
        number, note = line.split(" ", 1)
        print(f"{number}\tnone\t{note}\tStripe docs / card-type test suites")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
