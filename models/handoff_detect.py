"""Does the customer ask for a person? A lexical, pure detector with a three-way verdict.

:func:`detect` reads one customer message and returns a :class:`Detection`:

- ``REQUEST``: the customer asks for a person now, in their own words ("我想找客服", "有没有真人",
  "帮我接个人工", "叫你们经理来", "能不能让真人回答", "人工").
- ``NOT``: no request — a decline ("人工客服就不用了", "我没说要转人工", "别给我转人工"), a mere or past
  mention ("我也打过人工客服", "刚才人工说…", "打10010转人工都没人接"), a question about agents that can
  be answered ("人工客服几点上班？", "客服电话多少"), or 人工 meaning "manual" ("人工审核", "人工提额").
- ``UNCLEAR``: it may be a request ("你是机器人吗", "客服", "如果还没到账我找客服吗"); the caller asks back.

It reads the message clause by clause (split at punctuation and spaces): one clause that asks for a person is
enough, so "不用了，还是转人工吧" is a request while "别给我转人工，机器人回答就行" is not.

:func:`is_yes` says whether a reply to the ask-back ("您是需要转接人工客服吗？") agrees; :func:`negative_word`
finds clearly negative wording ("垃圾", "气死", "投诉"…). Nothing here does I/O or raises; a message costs
tens of microseconds (``bench/handoff_eval.py`` measures it), so it may run inside WeChat's 5 s callback.
A long message (over :data:`LONG` characters) that tells a story asks for a person only in so many words
("我就要人工服务", or 人工 leading it): Weibo-style complaints about hotlines mention 人工 without asking.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    REQUEST = "request"
    NOT = "not"
    UNCLEAR = "unclear"


@dataclass(frozen=True, slots=True)
class Detection:
    verdict: Verdict
    why: str  # which reading decided, for logs and the evaluation: "asks", "declined", "mention"…


NONE = Detection(Verdict.NOT, "no_person_term")


def _either(*parts: str) -> str:
    """One regex alternation from several short pieces (keeps each line short)."""
    return "|".join(parts)


# A person the customer could be asking for. 人工 followed by a process word means "manual" (人工审核), not a person,
# and so does 人工 right before a verb that changes an account or an order (人工关, 人工开, 人工退, 人工解绑): an adverb,
# unless a verb of asking comes right before it ("我要人工开发票", "找人工退款": a person, who will do it).
_CHANGE_VERB = "关|开|改|退|扣|调|删|撤|解|绑|冻|激活|注销|取消|恢复|延期|分期|减免|放款|提现|转账|充值"
_MANUAL = _either("还(?:的|了|款)|提额|审核|审批|申请|审请|还款|扣款|开通|关闭|换卡|邀请|智能|修改|核实",
                  "验证|费|成本|湖|降雨|繁殖|操作|录入|处理")
_NOT_A_PERSON = f"{_MANUAL}|{_CHANGE_VERB}"
_PERSON = re.compile(_either(
    rf"(?:人工(?!(?:{_NOT_A_PERSON}))|(?<=[要找转接换叫请])人工(?!(?:{_MANUAL})))(?:客服|服务|坐席|座席|台|客户)?|真人|活人|真的人|(?:在线|专属)?客服(?:人员|小姐姐|mm)?",
    r"(?<!产品)经理|主管(?!部门)|负责人|领导|小二|工作人员|专员|接线员|话务员|找个?真?人(?![工代替帮还带付借修做办报签拿取寄送])"))
# Words that ask for a person even alone ("人工", "真人"); 客服, 经理, 工作人员… are also how customers name the bot or
# the staff in a story, so alone they ask nothing, and they ask for a person only after a verb of asking.
_STRONG = re.compile(rf"人工(?!(?:{_MANUAL}))|真人|活人|真的人|小二|找个?真?人")
# A call for attention: "有人吗", "人呢", "有没有人在" (not "有人说…", "没有人打电话").
_ANYONE = re.compile(r"^(?:你好|您好|请问|亲|喂|在吗)*"
                     r"(?:有人(?:在)?(?:吗|嘛|么|不|没|没有|在|呢|啊)?|有没有人(?:在)?(?:啊|呀)?|人呢|人(?:都)?去哪了?)$")
# In a long message a call for attention asks only as a question ("…申请价保 人呢"), not as "有人" inside a sentence.
_QUESTION_END = re.compile(r"(?:吗|么|嘛|呢|没|不)$")
# Asking to be put through: these need no person word ("转接一下花呗", "帮我转接借呗逾期还款专线"); 转接头, 转接线… are
# adapters.
_TRANSFER = re.compile(r"转接(?![头线器口])|转人|转一下人|换个人|换人")
# The customer addresses the bot with a request for a person.
_ASK = re.compile(_either(
    "转|接|找|要|换|叫|请|联系|需要|想|让|给我|帮我|麻烦|有没有|有木有|有无|有吗",
    "在吗|在不在|在不|在么|在嘛|在哪|在爱么|呢|来|喊|呼叫|召唤|对接|沟通|聊|说话",
    "回答|处理|接待|有没|^(?:到底|究竟|请问|你们)?有"))
# What someone else did or said, or a phone-call story: a mention, not a request to this chat.
_MENTION = re.compile(_either(
    r"打过|打了|拨打|打电话|打客服|打个客服|打人工|打\d|电话里|电话打|按了|按\d|联系过|联系了",
    "找过|找了|转过|转了|接了|问过|问了|说过|让我|叫我|告诉我|(?<!来)跟我说|和我说|给我回",
    "回复我|回电|打来|来电|致电|说的|说了|刚才|刚刚|之前|上次|以前|昨天|已经|也打",
    "客服说|人工说|客服告诉|客服让|客服回复|客服态度|态度|不接|没人接|打不通|打不进|占线",
    "排队|全忙|都忙|在忙|没有人工(?=跟|和|给|联系|打|回)|给(?:人工|客服).{0,3}打|已反馈|已联系",
    "已找|打通|没打|打不了|反馈给|问完|打完|联系完|咨询完|回答了|回复了|答复了|自称|冒充|多亏|感谢|谢谢|投诉.{0,8}(?:经理|客服|工作人员|专员|人工)"))
# Information about agents, answerable without one: hours, phone numbers, how to call.
_INFO = re.compile(_either(
    "(?:应该|该)去?(?:找|联系|问)哪|联系方式|联系发|联系我|跟我联系|给我打|通过客服|多久|电话|号码|热线|几点|时间|什么时候",
    "多少|上班|下班|营业|工号是|微信号|邮箱|地址|在哪里|怎么打|工作日|周末|节假日"))
_DECLINE_BEFORE = re.compile(_either(
    "不用|不要|不需要|无需|不必|没必要|(?<![特区分个级告类])别|不想|没说|没有说|没让|没要|不是要|谁要",
    "用不着|犯不着|甭|不找|不转"))
_DECLINE_AFTER = re.compile(r"^(?:的话)?(?:就|先|暂时|还是)?(?:不用|不要|不需要|算了|免了|不必|没必要|用不着)"
                            r"|^(?:都|也)(?:不|没)")
_NOT_BOT = re.compile(r"(?:不要|不想|不用|别|不需要)(?:跟|和|让|用)?(?:你|机器人|机器|ai|智能客服|自动回复)")
_IDENTITY = re.compile(r"^(?:你|您)(?:是|就是).{0,6}(?:客服|小二)(?:吗|么|嘛|不|吧)?$"
                       r"|^是.{0,6}客服(?:是)?(?:吗|么|嘛|不)$")
_ARE_YOU = re.compile(rf"(?<!还)(?<!就)(?:是不是|是)(?:真人|人工(?!{_NOT_A_PERSON})|机器人|机器|真的人|ai|自动回复)"
                      r"|机器人(?:吗|么|嘛)")
# The same yes/no question with words between 是 and the person word ("这是花呗人工服务吗", "现在是到人工了吗"), none of
# them a verb of asking ("是要转人工吗" asks for one).
_ARE_YOU_APART = re.compile(rf"^(?:这|这里|这边|你|您|现在)?(?:是|就是)[^转接找要换叫请联让给帮打问说不]{{1,6}}?"
                            rf"(?:真人|人工(?!{_NOT_A_PERSON})|机器人)(?:客服|服务|坐席|座席)?了?(?:吗|么|嘛)$")
# A question of its own after the person word that leads the clause ("人工客服支付宝可以贷款吗"): the word names whom
# the customer writes to, as "客服，我的花呗…" does.
_OWN_QUESTION = re.compile(r"^.{3,}(?:吗|么|嘛)$")  # a yes/no question with a topic of its own
# A verb of asking right before the person word ("我想找客服", "麻烦帮我转花呗客服", "叫你们经理来").
_ASKED_JUST_BEFORE = re.compile(r"(?:转|接|找|要|换|叫|请|联系|需要|让|喊|呼叫|有没有|有木有|有没|(?:^|到底|究竟|请问)有)"
                                r"(?:你们|我们|个|一下|一个)?.{0,6}$")
_PRESENT = re.compile(r"^(?:在不在|在吗|在不|在么|在嘛|在爱么|有在|在线吗|在哪|呢|呐|人呢|去哪了?)$")
_CALL = re.compile(r"联系|联络|找|转|接|在吗|在不在|有人|人呢")
# A condition in the clause before ("要是明天还不行，我再联系客服吧"): the request is for later, if at all.
_CONDITION_BEFORE = re.compile(r"如果|要是|万一|假如|假设")
_CONDITIONAL = re.compile(r"如果|要是|万一|是否|要不要|该不该|用不用|能不能找|可以找.*吗|需要找.*吗")
_SPLIT = re.compile(r"[，,。.!！?？;；、~～\s…:：()（）\[\]【】\"“”'‘’]+")
_BREAK_WORDS = re.compile(r"(还是|但是|可是|只是|不过|而是|然后)")
_TRIM = "吧啊呀哦哈嘛呢了的么"
_HANDLE = re.compile(r"@[^\s@,，。!！?？:：]+")
LONG = 40  # characters: a longer message is a story or a complaint unless it asks directly

YES = frozenset({
    "是", "是的", "是滴", "是啊", "是呀", "对", "对的", "对啊", "对呀", "嗯", "嗯嗯", "恩", "恩恩",
    "好", "好的", "好啊", "好滴", "要", "要的", "需要", "需要的", "可以", "行", "ok", "okay", "yes", "y",
    "转", "转吧", "转人工", "麻烦了", "麻烦你了", "是需要", "对需要", "嗯需要", "是的需要", "好的麻烦了",
    "快转", "赶紧转", "转接", "转接吧", "人工",
})
NEGATIVE_WORDS: tuple[str, ...] = (
    "垃圾", "气死", "投诉", "骗子", "骗人", "太差", "差评", "坑人", "坑钱", "忽悠", "废物", "智障", "弱智",
    "傻逼", "去死", "太恶心", "无语", "什么破", "破玩意", "受不了", "太烂", "烂透", "举报", "12315", "消协",
)
# Everyday words that contain a negative one: a customer asking about 垃圾袋 is not angry.
NOT_NEGATIVE = re.compile(r"垃圾(?:袋|桶|箱|篓|分类|清运|处理器|短信|邮件)|投诉(?:电话|渠道|方式)?(?:是多少|怎么)")


def normalized(text: str) -> str:
    """Full-width to half-width, case folded, outer blanks stripped: the form every rule reads."""
    return unicodedata.normalize("NFKC", text).casefold().strip()


def clauses(text: str) -> list[str]:
    """The message cut at punctuation, blanks and contrast words ("不用了还是转人工" -> "不用了", "还是转人工")."""
    cut = _BREAK_WORDS.sub(r"|\1", normalized(text))
    return [part for piece in _SPLIT.split(cut) for part in piece.split("|") if part]


def detect(text: str, extra_phrases: Sequence[str] = ()) -> Detection:
    """The verdict on one message. ``extra_phrases``: the operator's own words for a person ("找小二"), each
    read like a built-in person word (declines and mentions still count)."""
    text = _HANDLE.sub(" ", text)  # "@中国联通客服" names whom a post is for; it asks for nobody
    parts = clauses(text)
    if not parts:
        return NONE
    extra = tuple(normalized(p) for p in extra_phrases if p.strip())
    long = len(normalized(text)) > LONG
    if long and any(_MENTION.search(part) for part in parts):  # a story: only "我要人工…" or a leading "人工" asks
        found = [_story_clause(part, extra, first=at == 0) for at, part in enumerate(parts)]
    else:
        found = [_clause(part, extra, long, first=at == 0) for at, part in enumerate(parts)]
    found = _conditional(parts, found)
    if len(parts) > 1 and not any(d.verdict is Verdict.REQUEST for d in found):
        found = _addressed(parts, found)
    return _strongest(found)


def _conditional(parts: list[str], found: list[Detection]) -> list[Detection]:
    """A request after a condition in the clause before ("要是明天还不行，我再找人工") is unclear: for later, if at all."""
    return [Detection(Verdict.UNCLEAR, "conditional")
            if d.verdict is Verdict.REQUEST and at > 0 and _CONDITION_BEFORE.search(parts[at - 1]) else d
            for at, d in enumerate(found)]


def _strongest(found: list[Detection]) -> Detection:
    """A request anywhere wins, then an unclear clause, then the first clause that said why it is no request."""
    for verdict in (Verdict.REQUEST, Verdict.UNCLEAR):
        for detection in found:
            if detection.verdict is verdict:
                return detection
    return next((d for d in found if d.why != NONE.why), NONE)


def _addressed(parts: list[str], found: list[Detection]) -> list[Detection]:
    """"客服，我的花呗还清了…": a weak word alone in its clause names whom the customer writes to, when another clause
    carries the question and asks for no contact ("什么时候可以联络上 客服" stays unclear)."""
    calls = any(_CALL.search(part) for part, d in zip(parts, found, strict=True) if d.why not in ("bare", "leads"))
    if calls:
        return found
    return [Detection(Verdict.NOT, "addressed") if d.why in ("bare", "leads") and d.verdict is Verdict.UNCLEAR else d
            for d in found]


@dataclass(frozen=True, slots=True)
class _Term:
    """A clause with a person word in it: what comes before and after the word."""

    clause: str
    before: str
    word: str
    after: str
    strong: bool  # 人工, 真人, 经理… (not 客服, which customers also call the bot)

    @classmethod
    def find(cls, clause: str, extra: tuple[str, ...]) -> _Term | None:
        span = _term(clause, extra)
        if span is None:
            return None
        word = clause[span[0]:span[1]]
        return cls(clause, clause[:span[0]], word, clause[span[1]:], bool(_STRONG.match(word)) or word in extra)


def _clause(clause: str, extra: tuple[str, ...], long: bool, *, first: bool = False) -> Detection:
    """The verdict on one clause; ``long``: the message is long (a person only when asked for directly, or named
    first); ``first``: the message's first clause."""
    clause = _NOT_BOT.sub("", clause) or clause  # "不要机器人" rejects the bot, not the person
    if (not long or _QUESTION_END.search(clause)) and (
            _ANYONE.match(clause) or _ANYONE.match(clause.rstrip(_TRIM) or clause)):
        return Detection(Verdict.REQUEST, "anyone_there")
    term = _Term.find(clause, extra)
    if term is None:
        return _no_person_word(clause)
    return _ruled_out(term, long, first) or _asked(term)


def _no_person_word(clause: str) -> Detection:
    if _TRANSFER.search(clause) and not _MENTION.search(clause) and not _DECLINE_BEFORE.search(clause):
        return Detection(Verdict.REQUEST, "transfer")
    if _ARE_YOU.search(clause):
        return Detection(Verdict.UNCLEAR, "about_the_bot")
    return NONE


def _ruled_out(term: _Term, long: bool, first: bool) -> Detection | None:
    """A decline, a question about the bot, a mention or a question about agents; None: read on."""
    if _DECLINE_BEFORE.search(term.before[-6:]) or _DECLINE_AFTER.match(term.after):
        return Detection(Verdict.NOT, "declined")
    if _ARE_YOU.search(term.clause) or _ARE_YOU_APART.search(term.clause):
        return Detection(Verdict.UNCLEAR, "about_the_bot")
    if _IDENTITY.search(term.clause):
        return Detection(Verdict.NOT, "who_is_answering")
    asked_plainly = (_direct(term.before) or (first and not term.before)) and term.strong
    if _MENTION.search(term.clause) or (long and not asked_plainly):
        return Detection(Verdict.NOT, "mention")
    if _INFO.search(term.clause):
        return Detection(Verdict.NOT, "question_about_agents")
    return None


def _story_clause(clause: str, extra: tuple[str, ...], *, first: bool) -> Detection:
    term = _Term.find(clause, extra)
    if term is None:
        return NONE
    if _MENTION.search(clause) or not term.strong:
        return Detection(Verdict.NOT, "story")
    if (first and not term.before) or re.search(r"我(?:就|只|只是)?(?:要|想|需要)(?:找|转|接)?$", term.before):
        return Detection(Verdict.REQUEST, "asks_in_story")
    return Detection(Verdict.NOT, "story")


def _asked(term: _Term) -> Detection:
    """A clause with a person word that is no decline, mention or question about agents: how it asks."""
    before, after = term.before.strip(_TRIM), term.after.strip(_TRIM)
    if _CONDITIONAL.search(term.clause):
        return Detection(Verdict.UNCLEAR, "conditional")
    if not before and _PRESENT.match(after or term.after):  # "客服在不在", "人工呢"
        return Detection(Verdict.REQUEST, "present")
    if not before and not after:
        plain = term.strong or term.word in ("在线客服", "客服人员")
        return Detection(Verdict.REQUEST if plain else Verdict.UNCLEAR, "bare")
    if _ASK.search(term.before) or _ASK.search(term.after[:6]):
        sure = term.strong or (_ASKED_JUST_BEFORE.search(term.before) and len(after) <= 6)
        return Detection(Verdict.REQUEST if sure else Verdict.UNCLEAR, "asks")
    return _named(term)


def _named(term: _Term) -> Detection:
    """The person word without a verb of asking: it still asks when it leads a short message, unless a question of its
    own follows it."""
    if not term.before and _OWN_QUESTION.match(term.after):
        return Detection(Verdict.NOT, "addressed")
    if term.strong and len(term.clause) <= 12:  # "花呗分期 人工", "人工服务身份证验证失败"
        return Detection(Verdict.REQUEST, "short")
    if not term.before and (term.strong or len(term.after) <= 2):
        return Detection(Verdict.REQUEST if term.strong else Verdict.UNCLEAR, "leads")
    if len(term.clause) <= 8 and not term.after.strip(_TRIM):  # "花呗分期客服": the product's agent, or its name
        return Detection(Verdict.UNCLEAR, "product_agent")
    return Detection(Verdict.NOT, "addressed")


def _direct(before: str) -> bool:
    return bool(re.search(r"帮我|给我|请|麻烦|我(?:就|只)?要|我想|我需要|快|赶紧|立刻|马上", before))


def _term(clause: str, extra: Iterable[str]) -> tuple[int, int] | None:
    """Where the first person word of a clause is (an operator phrase first)."""
    for phrase in extra:
        at = clause.find(phrase)
        if at >= 0:
            return at, at + len(phrase)
    match = _PERSON.search(clause)
    return match.span() if match else None


def is_yes(text: str) -> bool:
    """True for a short agreement ("是的", "对", "嗯", "需要", "好的，麻烦了") to the ask-back."""
    folded = "".join(_SPLIT.split(normalized(text))).rstrip(_TRIM) or normalized(text)
    if folded in YES or folded.rstrip("吧啊呀") in YES:
        return True
    return len(folded) <= 6 and folded.startswith(("是的", "需要", "对的", "好的"))


def negative_word(text: str, words: Sequence[str] = NEGATIVE_WORDS) -> str | None:
    """The first clearly negative word in the message ("垃圾", "气死", "投诉"…), or None."""
    folded = NOT_NEGATIVE.sub(" ", normalized(text))
    return next((word for word in words if word and normalized(word) in folded), None)
