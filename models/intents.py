"""What the customer wants: one intent label per message, rules first. Pure except for reading the operator's file.

:func:`classify` returns an :class:`IntentResult` ``(label, confidence, source)`` for a message:

1. ``ask_for_person`` when :func:`models.handoff_detect.detect` says REQUEST (the hand-off detector's own verdict,
   with ``KEFU_HANDOFF_KEYWORDS``; never a second reading of the same words), confidence 1, source ``"rule"``;
2. the operator's intents' ``keywords`` (``KEFU_INTENTS_FILE``: a keyword occurs in the text), then the built-in
   Chinese patterns of :data:`BUILT_IN`, in order — complaints first — each skipped where a negation stands just
   before it ("不想退货了", "没有投诉"); confidence 1, source ``"rule"``. A pasted order card ("订单编号:…, 订单金额:…")
   is left out first (it names an order, not a wish): a message that is only a card is ``order_status``;
3. the nearest examples: every intent's examples (built-in and the operator's) in one FAQ index
   (:class:`models.knowledge.faq_index.FaqIndex`: BM25 over jieba words and Han characters, IDF-weighted overlap
   less the best other intent's), the best intent at or above ``KEFU_INTENT_THRESHOLD``; source ``"examples"``;
4. else ``out_of_scope`` with confidence 0 and source ``"none"``: nothing here knows what it is. A worker may
   then ask the model (:mod:`workers.intent_model`, ``KEFU_INTENT_MODEL``), whose answers have source ``"model"``.

``kefu eval`` and ``bench/intent_eval.py`` call :func:`classify` with the same signature. It raises nothing for
any text, and costs tens of microseconds for a rule and well under a millisecond for the examples step (the index
is built once per process and intents file: about a second, jieba's dictionary, on the first call), so the
gateway runs it inside WeChat's 5 s callback. The operator's file is read by :mod:`models.intent_file` (checked at
start-up); a file edited into something unusable while running leaves the built-in intents in force.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from models.handoff_detect import Verdict, detect, normalized
from models.intent_file import (
    ACCOUNT,
    ASK_FOR_PERSON,
    COMPLAINT,
    EXCHANGE,
    GREETING,
    INVOICE,
    ORDER_STATUS,
    OUT_OF_SCOPE,
    PAYMENT,
    RETURN_REFUND,
    SHIPPING,
    Intent,
    IntentFileError,
    read_intents_file,
)
from models.knowledge.faq import FaqEntry
from models.knowledge.faq_index import FaqIndex
from models.settings import Settings

Source = Literal["rule", "examples", "model", "none"]
MAX_EXAMPLE_CHARS = 300

@dataclass(frozen=True, slots=True)
class IntentResult:
    label: str
    confidence: float  # 0..1
    source: Source

    @property
    def sure(self) -> bool:
        """A rule or the examples said it (a worker asks the model only about the others)."""
        return self.source != "none"


NOTHING = IntentResult(OUT_OF_SCOPE, 0.0, "none")
# Not wanting it, right before a rule's word ("不想退货了", "不用开发票", "不是要投诉"): that word says nothing.
# A plain 没/未 is no such negation: "还没发货", "退款没到账" still say what the customer wants.
_NEGATED = re.compile(r"(?:不想|不要|不用|不需要|无需|不必|没必要|不打算|没说要|不是要|没有要|别给我|别)(?:再|去)?"
                      r"(?:开|要|申请|办)?$")
_NOT_DONE = re.compile(r"(?:没有|没|并没|不是)$")  # "没有投诉的意思": for a complaint, not having done it is no complaint

BUILT_IN: tuple[Intent, ...] = (
    Intent(COMPLAINT, "投诉、表达强烈不满或愤怒（服务差、被坑、要曝光或举报）",
           ("我要投诉你们", "你们的服务太差了", "什么垃圾服务", "太坑人了", "我要去消协告你们", "气死我了，没人管吗"),
           patterns=r"投诉(?!电话|渠道|方式|入口)|垃圾|坑爹|坑人|坑钱|坑老用户|骗子|骗人|忽悠|太差|差评|差劲|恶心|"
                    r"气死|火大|受不了|受够|无语|无耻|黑心|流氓|欺负|鄙视|令人发指|不负责|推诿|什么玩意|破玩意|"
                    r"什么服务|服务态度|态度(?:太|真|很|极)?差|给个说法|给我个说法|说法|曝光|举报|消协|12315|"
                    r"工信部|黄金眼|维权|索赔|抢劫|乱收费|乱扣|瞎扣|扣我|逼着?我|没人管|没有人管|没人理|"
                    r"尼玛|他妈|草泥马|mlgb|sb|傻逼|老子|劳资|侮辱|凭什么|说好的|难道|这么贵|太贵|死我了|没!?人!?管|还有人管|"
                    r"责任(?:该|由)?谁|!{2,}"),
    Intent(RETURN_REFUND, "退货、退款、退钱、退款进度或去向",
           ("我要退货", "怎么申请退款", "退款什么时候到账", "退款退到哪里了", "这个可以退吗", "不想要了能退吗"),
           patterns=r"退款|退货|退钱|退回|(?<!闪)退了|退掉|退不了|退到|退给|保证金.{0,3}退|能退|可以退|"
                    r"七天无理由|7天无理由|价保|保价|差价|降价|降了价"),
    Intent(EXCHANGE, "换货、换尺码、换颜色、换新",
           ("我想换货", "尺码不合适能换吗", "可以换个颜色吗", "收到的坏了给我换一个"),
           patterns=r"换货|换尺码|换码|换个?颜色|换大一?号|换小一?号|换一个新的|换新|调换"),
    Intent(INVOICE, "开发票、报销凭证、收据、证明文件",
           ("怎么开发票", "发票什么时候寄", "能开专票吗", "我需要报销凭证", "发票抬头写错了"),
           patterns=r"发票|开票|专票|普票|抬头|税号|收据|报销|行程单|凭证|证明"),
    Intent(SHIPPING, "物流、快递、发货、配送、地址与收货",
           ("什么时候发货", "快递到哪了", "物流一直不更新", "能不能发顺丰", "收货地址写错了", "包裹丢了"),
           patterns=r"发货|出库|物流|快递|运单|(?<!订)单号|包裹|配送|送货|送到|派送|派件|签收|收货|寄出|寄到|寄给|"
                    r"寄过来|邮寄|到货|顺丰|中通|圆通|韵达|申通|邮政快递|ems|运费|邮费|包邮|丢件|取件|及时达|收件人|"
                    r"联系电话|(?:收货|收件|这个|新|送货|配送)地址|地址(?:写|填|错|改|变|不对)|"
                    r"(?:改|换|修改|更改|变更)一?下?地址|(?:能|可以|会|才|多久|几天|哪天|什么时候|啥时候|何时)送?到(?![账帐期底])|"
                    r"(?:没|未)有?收到(?!.{0,4}(?:验证码|短信|钱|款|红包|通知|电话|信息|消息|回复|邮件))|只收到|"
                    r"(?:就|才)收到了?[一二两三四五六七八九十几\d]|少发|漏发|缺件|少件|电话.{0,3}(?:填|写|留)错"),
    Intent(ORDER_STATUS, "订单状态、查询订单、取消或修改订单",
           ("我的订单怎么样了", "帮我查一下订单", "订单怎么取消", "下单后能修改吗", "订单显示已关闭"),
           patterns=r"订单|下单|取消订单|查单|拍下|拍了"),
    Intent(ACCOUNT, "账号、登录、密码、实名认证、绑定手机或银行卡、开通关闭、额度与资格",
           ("登录不上", "密码忘了怎么办", "怎么修改绑定的手机号", "账号被冻结了", "怎么注销账号",
            "怎么开通", "额度怎么提升", "为什么我没有资格"),
           patterns=r"账号|帐号|账户|帐户|登录|登陆|登不上|密码|实名|认证|身份|绑定|解绑|手机号|验证码|冻结|"
                    r"封了|注销|销户|开通|关闭|关了|开户|额度|提额|降额|资格|邀请|申请(?!售后|退|换|价保)|会员|积分|套餐|条件|找不到|"
                    r"无法正常使用|没法使用|不能用了|不能使用"),
    Intent(PAYMENT, "付款、支付、还款、扣款、充值、分期、利息、优惠",
           ("怎么付款", "支付失败了", "扣了两次钱", "怎么还款", "可以分期吗", "充值没到账", "能用优惠券吗"),
           patterns=r"付款|支付|付不了|付了|代付|还款|还钱|还清|还了|怎么还(?![不没是])|提前还|逾期|分期|扣款|扣费|扣钱|"
                    r"扣了|被扣|自动扣|代扣|扣除|充值|缴费|交费|话费|欠费|到账|到帐|利息|利率|手续费|费用|"
                    r"收费|账单|帐单|优惠|券|(?:满|够).{0,8}减|红包|集分宝|余额|透支|取现|价格|多少钱|滞纳金|还多少|借款|贷款|花呗"),
    Intent(GREETING, "问候、感谢、告别、闲聊",
           ("你好", "在吗", "谢谢", "好的谢谢", "再见", "辛苦了", "早上好", "哈哈"),
           patterns=r"^(?:你好|您好|hi|hello|哈喽|嗨|在吗|在不在|在么|在嘛|亲|谢谢|多谢|感谢|谢了|辛苦了|再见|拜拜|"
                    r"早上好|晚上好|下午好|中午好|好的|好|嗯|嗯嗯|ok|哈哈+|点赞)+$|感谢|谢谢|点赞"),
    # decided by the hand-off detector alone (step 1): no words, examples or model answer of its own
    Intent(ASK_FOR_PERSON, "要求人工客服、真人接待"),
    Intent(OUT_OF_SCOPE, "与以上都无关的问题（产品使用、技术故障等）", ()),
)
LABELS: tuple[str, ...] = tuple(intent.name for intent in BUILT_IN)
_STRIP = re.compile(r"@[^\s@,，。!！?？:：]+|#[^#]{1,30}#|[\s​]+")  # Weibo handles and topics, blanks
# The order card a shop's chat window pastes ("订单编号:2081234567, 订单金额:59.00, 下单时间:2018-05-02 10:11:12"; an
# anonymised corpus has "[订单x]" for a value): it says which order, not what the customer wants about it.
_CARD_VALUE = r"(?:\[[^\[\]]*\]|[^\s,\[\]]+)(?: (?:\[[^\[\]]*\]|\d{1,2}:\d{2}(?::\d{2})?))?"
_ORDER_CARD = re.compile(rf"(?:咨询|查询)?(?:订单编号|订单号|订单金额|下单时间|商品id|商品编号) ?: ?{_CARD_VALUE}")
_NO_WORDS = re.compile(r"[\W_]+")


def classify(settings: Settings, text: str) -> IntentResult:
    """The intent of one message without the model: hand-off detector, rules, examples, else ``out_of_scope``
    with source ``"none"``."""
    if not text or not text.strip():
        return NOTHING
    if detect(text, settings.handoff_keywords).verdict is Verdict.REQUEST:
        return IntentResult(ASK_FOR_PERSON, 1.0, "rule")
    known = intents(settings)
    folded = _STRIP.sub(" ", normalized(text)).strip()
    if _ORDER_CARD.search(folded):
        folded = _ORDER_CARD.sub(" ", folded).strip()
        if not _NO_WORDS.sub("", folded):  # the card alone: a question about that order
            return IntentResult(ORDER_STATUS, 1.0, "rule")
    declined = set()  # intents whose words came only after a negation ("不用开发票")
    for intent in known.ordered:
        said = _rule_matches(intent, folded)
        if said:
            return IntentResult(intent.name, 1.0, "rule")
        if said is None:
            declined.add(intent.name)
    best = known.index.lookup(folded[:MAX_EXAMPLE_CHARS], settings.intent_threshold)
    if best is None or best.entry.id in declined:  # its examples would only repeat the declined words
        return NOTHING
    return IntentResult(best.entry.id, best.confidence, "examples")


def label(settings: Settings, text: str) -> str:
    """:func:`classify`'s label alone (what the gateway stores with a message)."""
    return classify(settings, text).label


def _rule_matches(intent: Intent, folded: str) -> bool | None:
    """True: one of the intent's words occurs; None: only after a negation; False: none occurs."""
    found = [at for word in intent.keywords for at in _occurrences(folded, word)]
    if intent.patterns:
        found += [m.start() for m in re.finditer(intent.patterns, folded)]
    if not found:
        return False
    return True if any(not _negated(intent, folded[max(0, at - 6):at]) for at in found) else None


def _occurrences(text: str, word: str) -> list[int]:
    found, at = [], text.find(word)
    while at >= 0:
        found.append(at)
        at = text.find(word, at + 1)
    return found


def _negated(intent: Intent, before: str) -> bool:
    return bool(_NEGATED.search(before) or (intent.name == COMPLAINT and _NOT_DONE.search(before)))


# ---- the operator's intents ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Intents:
    """Every intent the classifier knows: the operator's first (their keywords win), then the built-in ones."""

    ordered: tuple[Intent, ...]
    index: FaqIndex  # every intent's examples; an entry's id is the intent's name

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(i.name for i in self.ordered))


def build(custom: Sequence[Intent]) -> Intents:
    """The classifier for the operator's intents plus :data:`BUILT_IN`. An operator intent named like a built-in
    one adds its examples and keywords to it (and its keywords are tried first)."""
    ordered = (*custom, *BUILT_IN)
    examples: dict[str, list[str]] = {}
    for intent in ordered:
        examples.setdefault(intent.name, []).extend(normalized(e) for e in intent.examples)
    entries = [FaqEntry(name, said[0], "", tuple(said[1:])) for name, said in examples.items() if said]
    return Intents(ordered, FaqIndex(entries))


_lock = threading.Lock()
_built: dict[tuple[str, int, int], Intents] = {}


def intents(settings: Settings) -> Intents:
    """The process's classifier for ``settings.intents_file`` (built once per file version, then only read)."""
    path = settings.intents_file
    key = ("", 0, 0)
    if path is not None:
        try:
            stat = path.stat()
            key = (str(path), stat.st_mtime_ns, stat.st_size)
        except OSError:
            key = (str(path), -1, -1)  # gone since start-up: keep the built-in intents rather than fail a message
    found = _built.get(key)
    if found is not None:
        return found
    with _lock:
        found = _built.get(key)
        if found is None:
            custom: tuple[Intent, ...] = ()
            if path is not None and key[1] >= 0:
                try:
                    custom = read_intents_file(path)
                except IntentFileError:
                    custom = ()  # edited into something invalid while running: `kefu config` says why
            found = build(custom)
            _built.clear()
            _built[key] = found
    return found


# ---- for the model (workers/intent_model.py) ----------------------------------------------------------------


def model_labels(known: Intents) -> tuple[str, ...]:
    """What the model may answer: every label but ``ask_for_person``, which only the hand-off detector gives."""
    return tuple(label for label in known.labels if label != ASK_FOR_PERSON)


def label_grammar(labels: Sequence[str]) -> str:
    """A GBNF grammar whose only sentences are the labels (llama.cpp's grammar sampler)."""
    return "root ::= " + " | ".join(f'"{label}"' for label in labels) + "\n"


def model_instruction(known: Intents) -> str:
    """The system prompt asking the model for one label, each with its description."""
    described = {i.name: i.description for i in reversed(known.ordered)}
    lines = "\n".join(f"{name}: {described.get(name) or name}" for name in model_labels(known))
    return ("你是客服系统的意图分类器。阅读客户的消息，只输出下列标签之一（只输出标签本身）：\n" + lines)
