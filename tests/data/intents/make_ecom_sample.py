"""How tests/data/intents/ecom_dev.tsv and ecom_heldout.tsv were drawn (labels were then added by hand).

    python tests/data/intents/make_ecom_sample.py chat_0.1per.txt > unlabelled.tsv

Source: ``data/chat_0.1per.txt`` of github.com/EndlessLethe/jddc2019-3th-retrieve-model @
2d443d1679cc3d00022d0ff1697eb0e4cbeedb01 (blob 116c666fe0b2cd062a98d7e2b15b44f6f9f6802b): a 0.1 % sample of
``chat.txt`` of the JDDC 2019 dialogue challenge (real JD.com customer-service sessions, 994 sessions). Each line:
``session<TAB>customer<TAB>from_agent<TAB>…<TAB>sku<TAB>text``; ``from_agent`` is ``0`` for the customer.

Per session, the first customer turn that says something more than a greeting or a pasted order card (what
:data:`EMPTY` and :data:`BRACKETS` remove leaves some text): the message the bot has to understand. Deterministic
(``random.Random(12)``): 200 sessions drawn, the first 100 drawn go to ``dev``, the other 100 to ``heldout``.
Output lines: ``split<TAB>source<TAB>id<TAB>?<TAB>text`` (tabs and newlines in a text become spaces; the text is
otherwise the source's, JDDC's own placeholders such as ``[订单x]`` included; it is not word-segmented).
"""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

SAMPLE = 200
# JDDC's anonymising placeholders ([订单x], [链接x] …), the order card the chat window pastes, greetings, punctuation
EMPTY = re.compile(r"\[[^\[\]]{1,12}\]|顾客通过点击web咚咚|信息发送|请选择咨询订单|咨询订单号|查询订单号|订单编号|订单号|"
                   r"订单金额|下单时间|商品ID|商品号|你好|您好|在吗|在么|在不|在嘛|亲|hi|hello|(?:[^\w\[]|[\d_])+",
                   re.IGNORECASE)
BRACKETS = re.compile(r"[\[\]]|USERID")  # what is left of nested placeholders ([订单编号:[订单x]], [USERID_[数字x]])


def flat(text: str) -> str:
    return " ".join(text.replace("\t", " ").split())


def first_questions(path: Path) -> list[tuple[str, str]]:
    """(session, text) of each session's first customer turn with content, in the file's order."""
    found: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        session, _customer, from_agent, *_, text = line.split("\t")
        if from_agent == "0" and session not in found and BRACKETS.sub("", EMPTY.sub("", text)):
            found[session] = flat(text)
    return list(found.items())


def main(source: str) -> None:
    rng = random.Random(12)
    drawn = rng.sample(first_questions(Path(source)), SAMPLE)
    for n, (session, text) in enumerate(drawn):
        print(f"{'dev' if n < SAMPLE // 2 else 'heldout'}\tjddc\tsession {session}\t?\t{text}")


if __name__ == "__main__":
    main(sys.argv[1])
